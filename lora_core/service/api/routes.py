"""The HTTP API, in Replicate's shapes and status codes: models, predictions, trainings, files, webhooks.

Errors are ``{"title", "detail", "status"}`` (422s add ``invalid_fields``), which the official
client turns into ``ReplicateError``. Another owner's prediction or file is a 404, not a 403:
ids are not confirmed to exist.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lora_core.service import views
from lora_core.service.api.bodies import json_body
from lora_core.service.auth.tokens import PAGE_HEADER, TOKEN_COOKIE
from lora_core.service.core import MAX_URL_CHARS, ApiError, Service
from lora_core.service.metrics import CONTENT_TYPE, allowed as metrics_allowed
from lora_core.service.models import InvalidField, Model
from lora_core.service.queue import predictions
from lora_core.service.storage import content_types, files
from lora_core.service.workers import intake

router = APIRouter()
EventName = Literal["start", "output", "logs", "completed"]


class ModelPredictionRequest(BaseModel):
    input: dict[str, Any] = {}
    webhook: str | None = Field(None, max_length=MAX_URL_CHARS)
    webhook_events_filter: list[EventName] | None = Field(None, max_length=4)
    stream: bool | None = None  # accepted for compatibility; outputs are files, not streams


class PredictionRequest(ModelPredictionRequest):
    version: str | None = Field(None, max_length=200, description="a version id, 'owner/name' or 'owner/name:version'")


class TrainingRequest(ModelPredictionRequest):
    destination: str | None = Field(None, max_length=200)  # "owner/name": the LoRA is published as its next version
    model: str | None = Field(None, max_length=200)


class ForkRequest(ModelPredictionRequest):
    """Changes to the parent's input; everything not named is the parent's value."""


def service(request: Request) -> Service:
    return request.app.state.service


async def owner(request: Request, svc: Service = Depends(service)) -> str:
    """The caller's owner name, from ``Authorization: Bearer <token>``, or from the pages' HttpOnly cookie when the
    request also carries the pages' header (so a link or form on another site can never act with the cookie)."""
    header = request.headers.get("authorization", "")
    if not header and request.headers.get(PAGE_HEADER) and request.cookies.get(TOKEN_COOKIE):
        header = f"Bearer {request.cookies[TOKEN_COOKIE]}"
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        raise ApiError(
            401,
            "Unauthenticated",
            "You did not pass an authentication token: "
            "send 'Authorization: Bearer <token>' (create one with `lora-studio token create --owner NAME`).",
        )
    found = await run_in_threadpool(svc.owner_of, token.strip())
    if found is None:
        raise ApiError(401, "Unauthenticated", "You did not pass a valid authentication token.")
    return found


def body_of(model: type[BaseModel]):
    """The request body as ``model``: read only once the caller is known (declare after ``owner``)."""
    return Depends(json_body(model))


def prefer_wait(request: Request) -> float:
    """Seconds to hold the response for ``Prefer: wait`` / ``wait=N`` (Replicate: at most 60). Parsed strictly, before
    anything is created: a value that is not 1-12 ASCII digits is a 400."""
    preferences = [p.strip() for p in request.headers.get("prefer", "").replace(";", ",").split(",")]
    waits = [p for p in preferences if p == "wait" or p.startswith("wait=")]
    if not waits:
        return 0.0
    value = waits[0].partition("=")[2].strip()
    if not value:
        return 60.0
    if not re.fullmatch(r"[0-9]{1,12}", value):
        raise ApiError(
            400,
            "Invalid header",
            f"Prefer: wait={value[:20]!r} is not a number of seconds; "
            "send 'Prefer: wait' or 'Prefer: wait=N' with N from 1 to 60.",
        )
    return float(min(60, max(1, int(value))))


# ---- models -------------------------------------------------------------------------------------------------------


@router.get("/v1/models")
async def list_models(svc: Service = Depends(service), _: str = Depends(owner)):
    return {
        "next": None,
        "previous": None,
        "results": [views.model(m, svc.config.public_url) for m in svc.models.values()],
    }


@router.get("/v1/models/{model_owner}/{name}")
async def get_model(model_owner: str, name: str, svc: Service = Depends(service), _: str = Depends(owner)):
    return views.model(svc.model(f"{model_owner}/{name}"), svc.config.public_url)


@router.get("/v1/models/{model_owner}/{name}/versions")
async def list_versions(model_owner: str, name: str, svc: Service = Depends(service), _: str = Depends(owner)):
    return {"next": None, "previous": None, "results": [views.version(svc.model(f"{model_owner}/{name}"))]}


@router.get("/v1/models/{model_owner}/{name}/versions/{version_id}")
async def get_version(
    model_owner: str, name: str, version_id: str, svc: Service = Depends(service), _: str = Depends(owner)
):
    model = svc.model(f"{model_owner}/{name}")
    if version_id != model.version:
        raise ApiError(
            404, "Not found", f"{model.full_name} has no version {version_id!r}; the current one is {model.version}."
        )
    return views.version(model)


# ---- predictions --------------------------------------------------------------------------------------------------


async def _create(
    request: Request,
    svc: Service,
    who: str,
    model: Model,
    body: ModelPredictionRequest,
    forked_from: str | None = None,
    source: str = "api",
) -> JSONResponse:
    arrived = time.monotonic()
    wait = prefer_wait(request)
    destination = body.destination if isinstance(body, TrainingRequest) else None
    row = await run_in_threadpool(
        svc.create_prediction,
        who,
        model,
        body.input,
        body.webhook,
        body.webhook_events_filter,
        forked_from,
        source,
        destination,
    )
    if wait:
        row = await _wait(svc, row["id"], arrived + wait)
    payload = await run_in_threadpool(svc.render, row)
    if wait and row["status"] not in predictions.TERMINAL:
        # Replicate's blocking answer when the wait runs out: "starting", whatever the true status. The official
        # clients' run() keeps polling only on "starting" and takes any other status as final (an unfinished
        # "processing" would hand their users output None). GET /v1/predictions/{id} reports the true status.
        payload["status"] = "starting"
    return JSONResponse(payload, status_code=201, headers={"Location": payload["urls"]["get"]})


async def _wait(svc: Service, prediction_id: str, deadline: float) -> dict:
    """The row once it is final, or as it is at ``deadline`` (counted from the request's arrival: the official
    Python client gives up reading half a second after the wait it asked for)."""
    with svc.wakeups.watching(prediction_id) as changed:
        while True:
            changed.clear()
            row = await run_in_threadpool(predictions.existing, svc.engine, prediction_id)
            left = deadline - time.monotonic()
            if row["status"] in predictions.TERMINAL or left <= 0:
                return row
            try:  # another service process may finish it: look again at least every second
                await asyncio.wait_for(changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass


@router.post("/v1/predictions", status_code=201)
async def create_prediction(
    request: Request,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: PredictionRequest = body_of(PredictionRequest),
):
    if not body.version:
        raise ApiError(
            422,
            "Invalid request",
            "version is required: a version id, or 'owner/name'",
            invalid_fields=[InvalidField("version", "required", "version is required")],
        )
    model = svc.model_for_version(body.version)
    return await _create(request, svc, who, model, body)


@router.post("/v1/models/{model_owner}/{name}/predictions", status_code=201)
async def create_model_prediction(
    model_owner: str,
    name: str,
    request: Request,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: ModelPredictionRequest = body_of(ModelPredictionRequest),
):
    return await _create(request, svc, who, svc.model(f"{model_owner}/{name}"), body)


@router.get("/v1/predictions")
async def list_predictions(
    request: Request,
    cursor: str | None = None,
    model: str | None = None,
    svc: Service = Depends(service),
    who: str = Depends(owner),
):
    return await run_in_threadpool(svc.page, who, str(request.url.path), cursor, model, None)


@router.get("/v1/predictions/{prediction_id}")
async def get_prediction(prediction_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    return await run_in_threadpool(svc.render, svc.prediction(prediction_id, who))


@router.post("/v1/predictions/{prediction_id}/cancel")
async def cancel_prediction(prediction_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    row = await run_in_threadpool(svc.cancel, prediction_id, who)
    return await run_in_threadpool(svc.render, row)


@router.delete("/v1/predictions/{prediction_id}", status_code=204)
async def delete_prediction(prediction_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    """Not Replicate's (it removes API predictions' data after an hour): the owner removes an ended prediction's
    input, output files and logs now; the row stays with ``data_removed: true``."""
    await run_in_threadpool(svc.remove_data, prediction_id, who)
    return Response(status_code=204)


@router.post("/v1/predictions/{prediction_id}/fork", status_code=201)
async def fork_prediction(
    prediction_id: str,
    request: Request,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: ForkRequest = body_of(ForkRequest),
):
    parent = await run_in_threadpool(svc.prediction, prediction_id, who)
    merged = await run_in_threadpool(svc.fork_input, parent, body.input)
    fork = ModelPredictionRequest(input=merged, webhook=body.webhook, webhook_events_filter=body.webhook_events_filter)
    return await _create(request, svc, who, svc.model(parent["model"]), fork, forked_from=parent["id"])


# ---- trainings (predictions of the training model, under Replicate's training paths) ----------------------------


@router.post("/v1/models/{model_owner}/{name}/versions/{version_id}/trainings", status_code=201)
async def create_model_training(
    model_owner: str,
    name: str,
    version_id: str,
    request: Request,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: TrainingRequest = body_of(TrainingRequest),
):
    model = svc.model_for_version(f"{model_owner}/{name}:{version_id}")
    return await _create(request, svc, who, svc.training_model(model), body)


@router.post("/v1/trainings", status_code=201)
async def create_training(
    request: Request,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: TrainingRequest = body_of(TrainingRequest),
):
    model = svc.model_for_version(body.model) if body.model else svc.default_training_model()
    return await _create(request, svc, who, svc.training_model(model), body)


@router.get("/v1/trainings")
async def list_trainings(
    request: Request, cursor: str | None = None, svc: Service = Depends(service), who: str = Depends(owner)
):
    return await run_in_threadpool(svc.page, who, str(request.url.path), cursor, None, "training")


@router.get("/v1/trainings/{training_id}")
async def get_training(training_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    return await run_in_threadpool(svc.render, svc.prediction(training_id, who, kind="training"))


@router.post("/v1/trainings/{training_id}/cancel")
async def cancel_training(training_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    svc.prediction(training_id, who, kind="training")
    row = await run_in_threadpool(svc.cancel, training_id, who)
    return await run_in_threadpool(svc.render, row)


@router.delete("/v1/trainings/{training_id}", status_code=204)
async def delete_training(training_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    await run_in_threadpool(svc.remove_data, training_id, who, "training")
    return Response(status_code=204)


# ---- named LoRAs (not Replicate's: its trainings push model versions; ours publish LoRA files) --------------------


class VisibilityRequest(BaseModel):
    visibility: Literal["private", "public"]


@router.get("/v1/loras")
async def list_loras(svc: Service = Depends(service), who: str = Depends(owner)):
    """The caller's named LoRAs, each with its versions, the most recently published first."""
    return {"next": None, "previous": None, "results": await run_in_threadpool(svc.loras_of, who)}


@router.get("/v1/loras/{lora_owner}/{name}")
async def get_lora(lora_owner: str, name: str, svc: Service = Depends(service), who: str = Depends(owner)):
    return await run_in_threadpool(svc.lora, lora_owner, name, who)


@router.patch("/v1/loras/{lora_owner}/{name}")
async def update_lora(
    lora_owner: str,
    name: str,
    svc: Service = Depends(service),
    who: str = Depends(owner),
    body: VisibilityRequest = body_of(VisibilityRequest),
):
    """``{"visibility": "public"}`` lets every owner use it by name; ``"private"`` (the default) only its owner."""
    return await run_in_threadpool(svc.set_lora_visibility, lora_owner, name, who, body.visibility)


@router.delete("/v1/loras/{lora_owner}/{name}/versions/{version}", status_code=204)
async def delete_lora_version(
    lora_owner: str,
    name: str,
    version: int = Path(ge=1, le=999_999_999),  # a version as a name writes it (storage/loras.py)
    svc: Service = Depends(service),
    who: str = Depends(owner),
):
    """As Replicate's ``DELETE /v1/models/{owner}/{name}/versions/{id}``: the version and its file go; the name's
    newest is then the version before. The training keeps its other outputs (its checkpoints)."""
    await run_in_threadpool(svc.remove_lora_version, lora_owner, name, version, who)
    return Response(status_code=204)


# ---- the caller's API tokens (not Replicate's API: its tokens are managed on its website) ---------------------------


@router.get("/v1/tokens")
async def list_tokens(svc: Service = Depends(service), who: str = Depends(owner)):
    """The caller's tokens: id, first characters and creation time, never a token itself."""
    return {"next": None, "previous": None, "results": await run_in_threadpool(svc.tokens_of, who)}


@router.post("/v1/tokens", status_code=201)
async def create_token(svc: Service = Depends(service), who: str = Depends(owner)):
    """A new token for the caller, in the answer this once (e.g. one per machine, each revocable on its own)."""
    return await run_in_threadpool(svc.new_token, who)


@router.delete("/v1/tokens/{token_id}", status_code=204)
async def revoke_token(token_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    """Revoked at once on every process of the service; the caller's own current token too, if named."""
    await run_in_threadpool(svc.revoke_token, who, token_id)
    return Response(status_code=204)


# ---- files --------------------------------------------------------------------------------------------------------


@router.post("/v1/files", status_code=201)
async def upload_file(request: Request, svc: Service = Depends(service), who: str = Depends(owner)):
    """Multipart with the file in ``content`` (as the official clients send it), read only once the owner is known
    and has room for it."""
    room = await run_in_threadpool(svc.upload_room, who)
    declared = request.headers.get("content-length", "")
    if room is not None and declared.isascii() and declared.isdigit() and int(declared) > room + 2**16:
        raise ApiError(
            507,
            "Insufficient storage",
            f"This upload is larger than the {room / 2**20:.0f} MB left of "
            "your upload quota: delete files with DELETE /v1/files/{id}.",
        )
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as e:  # noqa: BLE001 - any unparsable multipart body is the same client error
        raise ApiError(
            400, "Invalid upload", f"The body is not a multipart form with a file in 'content' ({e})."
        ) from None
    try:
        content = form.get("content")
        if not isinstance(content, UploadFile):
            raise ApiError(
                422,
                "Invalid upload",
                "Send the file as multipart form data in the field 'content'.",
                invalid_fields=[InvalidField("content", "required", "a file is required")],
            )
        raw_name, raw_type = form.get("filename"), form.get("content_type")
        name = raw_name if isinstance(raw_name, str) else None
        given_type = raw_type if isinstance(raw_type, str) else None
        row = await run_in_threadpool(
            svc.save_upload,
            who,
            name or content.filename or "upload",
            content.file,
            given_type or content.content_type,
            room,
        )
    finally:
        await form.close()
    return JSONResponse(views.file(row, svc.urls), status_code=201)


@router.get("/v1/files")
async def list_files(svc: Service = Depends(service), who: str = Depends(owner)):
    rows = await run_in_threadpool(files.list_uploads, svc.engine, who)
    return {"next": None, "previous": None, "results": [views.file(r, svc.urls) for r in rows]}


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    return views.file(svc.file(file_id, who), svc.urls)


@router.delete("/v1/files/{file_id}", status_code=204)
async def delete_file(file_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    row = svc.file(file_id, who)
    await run_in_threadpool(files.delete, svc.engine, svc.store, row)
    return Response(status_code=204)


@router.get("/files/{file_id}/{name}")
async def download(
    file_id: str,
    name: str,
    request: Request,
    expires: str | None = None,
    sig: str | None = None,
    svc: Service = Depends(service),
):
    """A file's bytes: with a valid signature, or with its owner's token. Inline only for a raster image whose bytes
    match its type, always sandboxed (``content_types.headers``)."""
    if not re.fullmatch(r"[0-9a-f]{32}", file_id):
        raise ApiError(404, "Not found", "No such file.")
    row = await run_in_threadpool(files.get, svc.engine, file_id)
    allowed = row is not None and svc.signer.file_ok(file_id, expires, sig)
    if row is not None and not allowed and request.headers.get("authorization"):
        allowed = (await owner(request, svc)) == row["owner"]
    if row is None or not allowed or row["name"] != name:
        raise ApiError(404, "Not found", "No such file, or its link has expired: get a fresh one from the API.")
    etag = f'"{row["sha256"]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("if-none-match") == etag:  # before opening the store: a 304 carries no body to type
        return Response(status_code=304, headers={**headers, "X-Content-Type-Options": "nosniff"})
    try:
        chunks = await run_in_threadpool(svc.store.open, row["storage_key"])
        first = await run_in_threadpool(next, chunks, b"")
    except FileNotFoundError:
        raise ApiError(404, "Not found", "The file's bytes are gone from the store.") from None
    headers.update(content_types.headers(row["content_type"], first, row["name"]))
    headers["Content-Length"] = str(row["size"])

    def body():
        yield first
        yield from chunks

    return StreamingResponse(body(), media_type=row["content_type"], headers=headers)


# ---- webhooks -----------------------------------------------------------------------------------------------------


@router.get("/v1/webhooks/default/secret")
async def webhook_secret(svc: Service = Depends(service), _: str = Depends(owner)):
    return {"key": svc.signer.webhook_secret()}


@router.get("/v1/predictions/{prediction_id}/webhook-deliveries")
async def webhook_deliveries(prediction_id: str, svc: Service = Depends(service), who: str = Depends(owner)):
    svc.prediction(prediction_id, who)
    rows = await run_in_threadpool(svc.webhooks.deliveries, prediction_id)
    return {
        "results": [
            {**r, **{k: views.timestamp(r[k]) for k in ("created_at", "next_attempt_at", "completed_at")}} for r in rows
        ]
    }


# ---- health -------------------------------------------------------------------------------------------------------


@router.get("/health")
async def health():
    """Up or down, nothing more: what load balancers poll, unauthenticated, no database."""
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request, svc: Service = Depends(service)):
    """Prometheus metrics: the queue per model, predictions by final state, durations, workers, pending webhooks.
    Aggregates only (no owner, no id); behind ``LORA_STUDIO_METRICS_TOKEN`` as a bearer token when that is set."""
    if not metrics_allowed(svc.config.metrics_token, request.headers.get("authorization", "")):
        raise ApiError(401, "Unauthenticated", "send LORA_STUDIO_METRICS_TOKEN as a bearer token")
    body = await run_in_threadpool(svc.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/internal/health")
async def worker_health(request: Request, svc: Service = Depends(service)):
    """The workers and what each runs, for operators (the worker token, as workers send it)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not svc.signer.worker_ok(token):
        raise ApiError(401, "Unauthenticated", "send the worker token (LORA_STUDIO_WORKER_TOKEN) as a bearer token")
    return {"status": "ok", "instance": svc.config.instance, "workers": svc.pool.status()}


@router.post("/internal/workers/{worker}/webhook")
async def worker_webhook(worker: str, request: Request, svc: Service = Depends(service)):
    return await intake.webhook(request, svc.signer, svc.pool.agents.get(worker))


@router.put("/internal/workers/{worker}/uploads/{key}/{filename}")
async def worker_upload(worker: str, key: str, filename: str, request: Request, svc: Service = Depends(service)):
    """An output file from a worker's Cog server, which sends no credentials but its URL's per-worker key."""
    agent = svc.pool.agents.get(worker)
    return await intake.upload(request, svc.signer, worker, key, filename, agent, svc.config.max_output_bytes)
