"""The ASGI application: the API and pages over one ``Service``, with request-body limits and error shapes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lora_core import __version__
from lora_core.service.config import ServiceConfig
from lora_core.service.core import ApiError, Service
from lora_core.service.models import InvalidField


class BodyGuard:
    """A request body that is too large or stops arriving is answered at once, in the API's shape: 413 past the
    limit, declared (at once, unread) or streamed (uploads and workers' webhooks get the larger limit); 408 when
    no byte of it arrives for ``timeout_s`` (a stalled upload would otherwise hold its task forever)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int, output_limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s
        self.upload_limit, self.output_limit = upload_limit, output_limit

    def limit_of(self, path: str) -> int:
        """Users' files and workers' output files get their own limits; a worker's webhook gets a user file's
        (a Cog server given no upload URL puts its files in it as data: URIs); every other body the JSON one."""
        if path.startswith("/internal/workers/"):
            return self.output_limit if "/uploads/" in path else self.upload_limit + 2**20
        return self.upload_limit + 2**20 if path == "/v1/files" else self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_of(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(scope, receive, send, _too_large(limit))
        seen, refusal, answered, body_done = 0, None, False, False

        async def guarded_receive() -> Message:
            nonlocal seen, refusal, body_done
            if body_done:  # after the body, receive() waits for a disconnect while a response streams: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                refusal = ApiError(
                    408, "Request timeout", f"No part of the request body arrived for {self.timeout_s:.0f} s."
                )
                raise _Refused() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refusal = _too_large(limit)
                    raise _Refused()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if refusal is not None:  # the framework answers the cut-short body with its own error: ours goes instead
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _Refused:
            pass
        if refusal is not None and not answered:
            await _refuse(scope, receive, send, refusal)


class _Refused(Exception):
    pass


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "Request too large",
        f"The request body is over the {limit / 2**20:.0f} MB limit; upload big files with POST /v1/files.",
    )


async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    await JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})(scope, receive, send)


def create_app(config: ServiceConfig, service: Service | None = None) -> FastAPI:
    service = service or Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    # No /docs: FastAPI's Swagger page loads its scripts from a CDN, on the origin that holds the sign-in cookie.
    # The schema is at /openapi.json; the README documents the API.
    app = FastAPI(title="LoRA Studio", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        headers = {**(error.headers or {}), **({"WWW-Authenticate": "Bearer"} if error.status == 401 else {})}
        return JSONResponse(error.body(), status_code=error.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        """The framework's own errors (no such route, wrong method, a body it cannot parse) in the API's shape."""
        title = HTTPStatus(error.status_code).phrase if error.status_code in HTTPStatus._value2member_map_ else "Error"
        return JSONResponse(
            ApiError(error.status_code, title, str(error.detail)).body(),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, error: RequestValidationError) -> JSONResponse:
        fields = [
            InvalidField(
                "body",
                "json_invalid",
                f"the request body is not valid JSON "
                f"({e.get('ctx', {}).get('error', 'decode error')} at "
                f"character {e['loc'][-1]})",
            )
            if e["type"] == "json_invalid"
            else InvalidField(".".join(str(p) for p in e["loc"][1:]) or "body", e["type"], e["msg"])
            for e in error.errors()
        ]
        detail = "".join(f"- {f.field}: {f.description}\n" for f in fields)
        return JSONResponse(ApiError(422, "Invalid request", detail, fields).body(), status_code=422)

    from lora_core.service.api.routes import router
    from lora_core.service.web.routes import router as pages, static_files

    app.include_router(router)
    app.include_router(pages)
    app.mount("/static", static_files(), name="static")
    app.add_middleware(
        BodyGuard,
        limit=config.max_request_bytes,
        upload_limit=config.max_upload_bytes,
        output_limit=config.max_output_bytes,
        timeout_s=config.body_timeout_s,
    )
    logging.getLogger("lora_studio").setLevel(logging.INFO)
    return app
