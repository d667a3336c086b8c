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
import os
import signal
import socket
import threading
from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lora_core.service.config import ServiceConfig
from lora_core.service.metrics import CONTENT_TYPE, allowed
from lora_core.service.runtime import Runtime
from lora_core.service.workers import intake
from lora_core.service.workers.agent import Agent, Worker, local_worker
from lora_core.service.workers.pool import supervise

log = logging.getLogger("lora_studio.agent")


def run(model: str, *, cog_url: str | None, port: int, host: str, name: str | None, drain_s: float) -> int:
    if not os.environ.get("LORA_STUDIO_PUBLIC_URL"):
        raise SystemExit(
            "error: set LORA_STUDIO_PUBLIC_URL to the API's (and LORA_STUDIO_INTERNAL_URL where its Cog server reaches "
            "the API another way): an agent signs and recognises the service's file URLs by them"
        )
    runtime = Runtime(ServiceConfig.from_env(port=port))
    if model not in runtime.models:
        raise SystemExit(f"error: unknown model {model!r}; the models are: {', '.join(runtime.models)}")
    listen_url = agent_url(host, port)
    worker_name = name or f"{runtime.models[model].name}-{socket.gethostname()}"
    spec = runtime.models[model]
    if cog_url:
        worker = Worker(worker_name, spec, cog_url.rstrip("/"))
    else:  # alone in its process: all the cores unless LORA_STUDIO_WORKER_THREADS says otherwise
        worker = local_worker(runtime, spec, worker_name, listen_url, runtime.config.threads_per_worker(1))
    agent = Agent(runtime, worker, listen_url)
    runtime.workers = lambda: [agent.status()]

    runtime.start()
    agent.start()
    threading.Thread(target=supervise, args=(runtime, [agent]), name="supervisor", daemon=True).start()
    print(f"agent {worker_name} ({model}) on {listen_url}, Cog server {cog_url or 'started here'}", flush=True)

    server = _Server(app(agent, runtime), host, port)

    def drain_then_exit() -> None:
        if not agent.drain(drain_s):
            log.warning("agent %s: the drain ran out after %.0fs; stopping a prediction mid-way", worker_name, drain_s)
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
        runtime.stopping.set()
        agent.stop()
        runtime.stop()
    return 0


def agent_url(host: str, port: int) -> str:
    """Where the agent's Cog server reaches it: its own address (the same pod, or the same machine)."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def app(agent: Agent, runtime: Runtime) -> Starlette:
    name, signer, limit = agent.worker.name, runtime.signer, runtime.config.max_output_bytes

    async def webhook(request: Request):
        mine = agent if request.path_params["worker"] == name else None
        return await intake.webhook(request, signer, mine)

    async def upload(request: Request):
        p = request.path_params
        mine = agent if p["worker"] == name else None
        return await intake.upload(request, signer, p["worker"], p["key"], p["filename"], mine, limit)

    async def health(_: Request):
        return JSONResponse({"status": "draining" if agent.draining.is_set() else "ok", "worker": agent.status()})

    async def metrics(request: Request):
        """This agent's durations and state (and the queue, as every process reports it): what Prometheus scrapes
        from a worker pod."""
        if not allowed(runtime.config.metrics_token, request.headers.get("authorization", "")):
            return JSONResponse({"title": "Unauthenticated", "detail": "send LORA_STUDIO_METRICS_TOKEN"}, 401)
        return Response(await run_in_threadpool(runtime.metrics.render), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/internal/workers/{worker}/webhook", webhook, methods=["POST"]),
            Route("/internal/workers/{worker}/uploads/{key}/{filename}", upload, methods=["PUT"]),
            Route("/health", health),
            Route("/metrics", metrics),
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
