"""What a Cog server sends its agent, received over HTTP: state webhooks and output files.

The same handlers serve the agents inside ``lora-studio serve`` (through the service's routes) and a standalone
``lora-studio worker`` (through its own small app). Webhooks carry the worker token as a bearer token; uploads, for
which Cog sends no credentials, carry the per-worker key in their URL (``signing.upload_key``). An upload is
streamed to a spooled temporary file (memory up to 8 MB, then disk), never held whole in memory, then stored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lora_core.service.auth.signing import Signer
from lora_core.service.workers.agent import Agent


def _error(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status)


async def webhook(request: Request, signer: Signer, agent: Agent | None) -> Response:
    _, _, token = request.headers.get("authorization", "").partition(" ")
    if not signer.worker_ok(token):
        return _error(401, "Unauthenticated", "not a worker of this service")
    payload = await request.json()
    accepted = agent is not None and await run_in_threadpool(agent.on_webhook, payload)
    return JSONResponse({"accepted": accepted})


async def upload(
    request: Request, signer: Signer, worker: str, key: str, filename: str, agent: Agent | None, limit: int
) -> Response:
    if not signer.upload_key_ok(worker, key):
        return _error(401, "Unauthenticated", "not a worker of this service")
    if agent is None:
        return _error(409, "Conflict", "this worker is running no prediction")
    store: Callable = agent.on_upload
    with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as body:
        async for chunk in request.stream():
            body.write(chunk)
            if body.tell() > limit:
                return _error(413, "Too large", "output file exceeds the upload limit")
        body.seek(0)
        try:
            row = await run_in_threadpool(store, filename, body, request.headers.get("content-type"))
        except LookupError as e:
            return _error(409, "Conflict", str(e))
        except (OSError, ValueError) as e:
            return _error(507, "Insufficient storage", f"could not store the output: {e}")
    return Response(status_code=201, headers={"Location": f"{agent.output_prefix}{row['id']}"})
