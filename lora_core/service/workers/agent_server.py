"""``lora-studio worker``: one agent on its own, beside a Cog container (``--cog-url``) or starting its Cog server.

It needs nothing from a ``lora-studio serve`` process: it shares only the database, the file store and the secret
(``DATABASE_URL``, ``STORAGE_URL``, ``LORA_STUDIO_SECRET``). It listens on its own port for its Cog server's
webhooks and uploads (the service's routes, by the same handlers), writes every change there itself, sends users'
webhooks, and beats its own heartbeat: if it dies, any live process fails what it was running within six beats
(its lease). Adding one while predictions wait needs no restart of anything: it starts taking work.

SIGTERM drains it: it takes nothing new, lets the current prediction finish (up to ``--drain-s``), then exits, so a
rolling deploy loses nothing. A second SIGTERM, or the grace running out, stops it at once; what it was running is
then failed by the lease, with a sentence saying so.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lora_core.service import views
from lora_core.service.auth.signing import Signer
from lora_core.service.config import ServiceConfig
from lora_core.service.models import load_models
from lora_core.service.queue import predictions
from lora_core.service.queue.wakeups import Listener, Wakeups
from lora_core.service.queue.webhooks import Webhooks
from lora_core.service.storage import db, file_store, files
from lora_core.service.urls import Urls
from lora_core.service.workers import intake
from lora_core.service.workers.agent import Agent, Parts, Worker, local_worker
from lora_core.service.workers.pool import supervise

log = logging.getLogger("lora_studio.agent")


def run(model: str, *, cog_url: str | None, port: int, host: str, name: str | None, drain_s: float) -> int:
    config = ServiceConfig.from_env(port=port)
    models = load_models()
    if model not in models:
        raise SystemExit(f"error: unknown model {model!r}; the models are: {', '.join(models)}")
    engine = db.connect(config.database_url)
    store = file_store.from_url(config.storage_url, config.s3_endpoint_url, config.storage_quota_bytes)
    signer = Signer(config.secret, config.worker_token)
    urls = Urls(config, signer)
    webhooks = Webhooks(
        engine,
        signer,
        config.allowed_private_hosts,
        instance=config.instance,
        retries=config.webhook_retries,
        backoff_s=config.webhook_backoff_s,
    )

    def on_event(row: dict, event: str) -> None:
        if row.get("webhook"):
            shown = files.of_prediction(engine, row["id"]) if row["output"] is not None else []
            webhooks.send(row, event, views.prediction(row, urls, shown))

    wakeups = Wakeups()
    listener = Listener(engine, wakeups)
    parts = Parts(config, engine, store, wakeups, signer, urls, on_event=on_event)
    listen_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    worker_name = name or f"{models[model].name}-{socket.gethostname()}"
    worker = Worker(worker_name, models[model], cog_url.rstrip("/")) if cog_url else None
    agent = Agent(parts, worker or local_worker(parts, models[model], worker_name, listen_url), listen_url)

    predictions.heartbeat(engine, config.instance)
    for pid in predictions.fail_interrupted(engine, config.instance, 6 * config.heartbeat_s, at_start=True):
        log.warning("prediction %s was running when this agent stopped: failed (interrupted)", pid)
        on_event(predictions.existing(engine, pid), "completed")
    listener.start()
    webhooks.start()
    agent.start()
    threading.Thread(target=supervise, args=(parts, [agent]), name="supervisor", daemon=True).start()
    print(f"agent {worker_name} ({model}) on {listen_url}, Cog server {cog_url or 'started here'}", flush=True)

    server = _Server(app(agent, signer, config.max_upload_bytes), host, port)

    def drain_then_exit() -> None:
        finished = agent.drain(drain_s)
        if not finished:
            log.warning(
                "agent %s: the drain ran out after %.0fs; stopping with a prediction running", worker_name, drain_s
            )
        server.should_exit = True

    def on_signal(signum: int, _frame) -> None:
        if agent.draining.is_set():  # a second signal: now
            server.should_exit = True
            return
        log.warning("agent %s: %s, draining (up to %.0fs)", worker_name, signal.Signals(signum).name, drain_s)
        threading.Thread(target=drain_then_exit, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.run()
    finally:
        parts.stopping.set()
        listener.stop()
        agent.stop()
        webhooks.close()
    return 0


def app(agent: Agent, signer: Signer, max_upload_bytes: int) -> Starlette:
    name = agent.worker.name

    async def webhook(request: Request):
        mine = agent if request.path_params["worker"] == name else None
        return await intake.webhook(request, signer, mine)

    async def upload(request: Request):
        p = request.path_params
        mine = agent if p["worker"] == name else None
        return await intake.upload(request, signer, p["worker"], p["key"], p["filename"], mine, max_upload_bytes)

    async def health(_: Request):
        return JSONResponse({"status": "draining" if agent.draining.is_set() else "ok", "worker": agent.status()})

    return Starlette(
        routes=[
            Route("/internal/workers/{worker}/webhook", webhook, methods=["POST"]),
            Route("/internal/workers/{worker}/uploads/{key}/{filename}", upload, methods=["PUT"]),
            Route("/health", health),
        ]
    )


class _Server:
    """uvicorn, minus its own signal handling: a SIGTERM must drain the agent while this keeps listening (the
    current prediction's final webhook and outputs still have to arrive)."""

    def __init__(self, asgi: Starlette, host: str, port: int) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self._server = Quiet(uvicorn.Config(asgi, host=host, port=port, log_level="warning", lifespan="off"))

    @property
    def should_exit(self) -> bool:
        return self._server.should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._server.should_exit = value

    def run(self) -> None:
        self._server.run()
