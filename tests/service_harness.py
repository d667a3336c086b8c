"""A real ``lora-studio serve`` process (its own Cog workers, database and files) for the service tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import requests

from lora_core.service.workers.cog_process import free_port as free_port  # the service's own

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("succeeded", "failed", "canceled")
WORKER_TOKEN = "test-worker-token"  # the operators' credential: /internal/health shows the workers with it


class ServiceProcess:
    def __init__(
        self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.data_dir, self.port, self.args = data_dir, port or free_port(), args
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "LORA_STUDIO_DATA_DIR": str(data_dir),
            "LORA_STUDIO_HEARTBEAT_S": "1",
            "LORA_STUDIO_WEBHOOK_BACKOFF_S": "0.2",
            "LORA_STUDIO_WORKER_TOKEN": WORKER_TOKEN,
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / "service.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_workers: bool = True, timeout: float = 180, log_level: str = "warning") -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lora_core.cli", "serve", "--port", str(self.port), "--log-level", log_level]
                + list(self.args),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"service exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"service not ready in {timeout}s:\n{self.log()}"
            try:
                up = requests.get(f"{self.url}/health", timeout=2).ok
                if up and (not wait_workers or all(w["ready"] for w in self.workers(timeout=2))):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, drain: bool = False) -> None:
        """Stop the service; a SIGTERM is sent twice unless ``drain`` (the first only drains its workers)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
            if sig == signal.SIGTERM and not drain:
                time.sleep(0.2)  # two signals at once may arrive as one
                os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def token(self, owner: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "lora_core.cli", "token", "create", "--owner", owner],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def workers(self, timeout: float = 5) -> list[dict]:
        token = self.env["LORA_STUDIO_WORKER_TOKEN"]
        return requests.get(
            f"{self.url}/internal/health", headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        ).json()["workers"]


class AgentProcess:
    """A ``lora-studio worker`` of one model beside a service, sharing its database, files and secret (its data
    dir and environment); it starts its own Cog server."""

    def __init__(self, service: ServiceProcess, model: str, name: str, args: tuple[str, ...] = ()) -> None:
        """``args``: more of ``lora-studio worker``'s flags (``--cog-url``: a Cog server it does not start)."""
        self.service, self.model, self.name, self.port, self.args = service, model, name, free_port(), args
        self.process: subprocess.Popen | None = None
        self.log_path = service.data_dir / f"agent-{name}.log"

    def start(self, timeout: float = 180) -> AgentProcess:
        return self.launch().ready(timeout)

    def launch(self) -> AgentProcess:
        """Start the process without waiting (several agents load their Cog servers at once)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lora_core.cli", "worker", "--model", self.model, "--name", self.name]
                + ["--port", str(self.port), *self.args],
                cwd=ROOT,
                env={**self.service.env, "LORA_STUDIO_PUBLIC_URL": self.service.url},  # the API's, as in deploy/
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def ready(self, timeout: float = 180) -> AgentProcess:
        """Once its Cog server is ready."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self.health().get("worker", {}).get("ready"):
            assert self.process.poll() is None, f"agent exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"agent not ready in {timeout}s:\n{self.log()}"
            time.sleep(0.2)
        return self

    def health(self) -> dict:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).json()
        except requests.RequestException:
            return {}

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig) if sig == signal.SIGKILL else self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def progress_steps(logs: str) -> list[tuple[int, int, int]]:
    """(percent, step, total) of every progress line (tqdm's shape) in ``logs``."""
    from lora_core import progress

    return [(int(m["percent"]), int(m["step"]), int(m["total"])) for m in progress.matches(logs)]


class Api:
    """The HTTP API as one owner sees it."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.session = base, requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return self.session.request(method, path if path.startswith("http") else self.base + path, **kwargs)

    def predict(self, model: str, input: dict, wait: int | None = 60, follow: bool = True, **body) -> dict:
        """Create a prediction. With ``wait``, held with ``Prefer: wait=N`` and then, as the official clients'
        ``run()`` does, followed to its end (``follow``): on a slow machine it may outlast any fixed wait."""
        headers = {"Prefer": f"wait={wait}"} if wait else {}
        r = self("POST", f"/v1/models/{model}/predictions", json={"input": input, **body}, headers=headers)
        assert r.status_code == 201, r.text
        if wait and follow and r.json()["status"] not in TERMINAL:
            return self.wait(r.json()["id"])
        return r.json()

    def until_progress(self, prediction_id: str, timeout: float = 180) -> dict:
        """The prediction once its worker has logged a progress line (it is running, past loading)."""
        deadline = time.monotonic() + timeout
        while not progress_steps((body := self("GET", f"/v1/predictions/{prediction_id}").json())["logs"]):
            assert body["status"] in ("starting", "processing") and time.monotonic() < deadline, body
            time.sleep(0.2)
        return body

    def wait(self, prediction_id: str, timeout: float = 600, statuses=TERMINAL) -> dict:
        """Polls until the prediction reaches ``statuses``; ``timeout`` only guards a hung test."""
        deadline = time.monotonic() + timeout
        while True:
            body = self("GET", f"/v1/predictions/{prediction_id}").json()
            if body["status"] in statuses:
                return body
            assert time.monotonic() < deadline, json.dumps(body)[:3000]
            time.sleep(0.2)


def race_claimers(engine, count: int, claimers: int) -> tuple[list[str], list[str]]:
    """``count`` queued predictions, then ``claimers`` threads claiming until the queue is empty:
    (ids made, ids claimed, with repeats if any was claimed twice)."""
    import threading

    from lora_core.service.queue import predictions

    made = [
        predictions.create(engine, owner="q", model="m/x", version="v", kind="prediction", input={})["id"]
        for _ in range(count)
    ]
    claimed: list[str] = []

    def claim(name: str) -> None:
        while (row := predictions.claim_next(engine, "m/x", name, "test")) is not None:
            claimed.append(row["id"])

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return made, claimed


def config_from(env: dict[str, str], **flags):
    """``ServiceConfig`` as a process started with exactly ``env`` (and these ``serve`` flags) reads it."""
    from lora_core.service.config import ServiceConfig

    with mock.patch.dict(os.environ, env, clear=True):
        return ServiceConfig.from_env(**flags)
