"""The ASGI application: the API and pages over one ``Service``, with request-size limits and error shapes."""

from __future__ import annotations

import contextlib
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .config import ServiceConfig
from .models import InvalidField
from .service import ApiError, Service


class BodyLimit:
    """413 for a request body over the limit, declared or streamed (uploads get the larger limit)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        limit = self.upload_limit + 2**20 if path == "/v1/files" or "/uploads/" in path else self.limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(scope, receive, send, limit)
        seen, over, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge()
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if over:  # the framework answers a body cut short with its own error (400): ours goes instead
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        if over and not answered:
            await _too_large(scope, receive, send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    body = ApiError(413, "Request too large", f"The request body is over the {limit / 2**20:.0f} MB limit; "
                                              "upload big files with POST /v1/files.").body()
    await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def create_app(config: ServiceConfig, service: Service | None = None) -> FastAPI:
    service = service or Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="LoRA Studio", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status,
                            headers={"WWW-Authenticate": "Bearer"} if error.status == 401 else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        """The framework's own errors (no such route, wrong method, a body it cannot parse) in the API's shape."""
        title = HTTPStatus(error.status_code).phrase if error.status_code in HTTPStatus._value2member_map_ else "Error"
        return JSONResponse(ApiError(error.status_code, title, str(error.detail)).body(), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, error: RequestValidationError) -> JSONResponse:
        fields = [InvalidField("body", "json_invalid", f"the request body is not valid JSON "
                                                       f"({e.get('ctx', {}).get('error', 'decode error')} at "
                                                       f"character {e['loc'][-1]})")
                  if e["type"] == "json_invalid" else
                  InvalidField(".".join(str(p) for p in e["loc"][1:]) or "body", e["type"], e["msg"])
                  for e in error.errors()]
        detail = "".join(f"- {f.field}: {f.description}\n" for f in fields)
        return JSONResponse(ApiError(422, "Invalid request", detail, fields).body(), status_code=422)

    from .api import router
    from .web import router as pages, static_files

    app.include_router(router)
    app.include_router(pages)
    app.mount("/static", static_files(), name="static")
    app.add_middleware(BodyLimit, limit=config.max_request_bytes, upload_limit=config.max_upload_bytes)
    logging.getLogger("lora_studio").setLevel(logging.INFO)
    return app
