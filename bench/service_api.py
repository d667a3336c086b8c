"""The service's cost per prediction, and how fast it is ready after a cold start.

api_overhead_ms: a no-op-sized generation (1 step, 16x16) through the API (``Prefer: wait``: queue,
    Cog protocol to the worker, webhook back, upload of the output, database) minus the same
    prediction posted straight to a Cog server of the same predictor. Rounds alternate between
    the two so both see the same machine.
cold_start_s: ``lora-studio serve`` started to the first tiny prediction returned (Cog worker start,
    predictor setup, base model load included).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.results import Metric

ROOT = Path(__file__).resolve().parent.parent
NOOP: dict[str, Any] = {"prompt": "a red circle", "num_inference_steps": 1, "width": 16, "height": 16, "seed": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER_TOKEN = "bench-worker-token"


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LORA_STUDIO_WORKER_TOKEN": WORKER_TOKEN,
        **extra,
    }


def _workers_ready(base: str) -> bool:
    """Every worker of the service at ``base`` is ready (/internal/health, with the worker token)."""
    health = requests.get(f"{base}/internal/health", headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, timeout=1)
    return all(w["ready"] for w in health.json()["workers"])


def _wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    """``lora-studio ARGS`` in its own process group, quiet."""
    return subprocess.Popen(
        [sys.executable, "-m", "lora_core.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _start_service(data_dir: Path, port: int) -> subprocess.Popen:
    env = _env({"LORA_STUDIO_DATA_DIR": str(data_dir), "LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"})
    return spawn(env, "serve", "--port", str(port), "--log-level", "warning")


def _token(data_dir: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lora_core.cli", "token", "create", "--owner", "bench"],
        cwd=ROOT,
        env=_env({"LORA_STUDIO_DATA_DIR": str(data_dir)}),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def cold_start_seconds(data_dir: Path) -> float:
    """Spawn to the first finished prediction, polling as a client would."""
    port = _free_port()
    token = _token(data_dir)
    started = time.perf_counter()
    proc = _start_service(data_dir, port)
    try:
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        _wait_until(lambda: requests.get(f"{base}/health", timeout=1).ok, 120, "service")
        body = requests.post(
            f"{base}/v1/models/lora-studio/lora/predictions",
            json={"input": NOOP},
            headers={**auth, "Prefer": "wait=60"},
            timeout=90,
        ).json()
        while body["status"] not in ("succeeded", "failed"):
            time.sleep(0.05)
            body = requests.get(body["urls"]["get"], headers=auth, timeout=10).json()
        if body["status"] != "succeeded":
            raise RuntimeError(f"cold-start prediction failed: {body['error']}")
        return time.perf_counter() - started
    finally:
        _stop(proc)


def api_overhead(data_dir: Path, rounds: int) -> tuple[float, float, float]:
    """(median ms through the API, median ms straight to a Cog server, median per-round difference)."""
    port, cog_port = _free_port(), _free_port()
    token = _token(data_dir)
    service = _start_service(data_dir, port)
    cog = subprocess.Popen(
        [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=_env({"PORT": str(cog_port), "COG_PREDICT_TYPE_STUB": "predict_generate.py:Predictor"}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base, direct = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cog_port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        _wait_until(lambda: _workers_ready(base), 180, "service workers")
        _wait_until(
            lambda: session.get(f"{direct}/health-check", timeout=1).json()["status"] == "READY", 180, "Cog server"
        )

        def via_api() -> float:
            start = time.perf_counter()
            body = session.post(
                f"{base}/v1/models/lora-studio/lora/predictions",
                json={"input": NOOP},
                headers={"Prefer": "wait=60"},
                timeout=90,
            ).json()
            assert body["status"] == "succeeded" and body["output"], body
            return time.perf_counter() - start

        def straight() -> float:
            start = time.perf_counter()
            body = requests.post(f"{direct}/predictions", json={"input": NOOP}, timeout=90).json()
            assert body["status"] == "succeeded" and body["output"], body
            return time.perf_counter() - start

        for _ in range(3):  # warm both paths (first sampling, first DB writes)
            via_api(), straight()
        api, cog_times, diffs = [], [], []
        for _ in range(rounds):
            a, c = via_api(), straight()
            api.append(a)
            cog_times.append(c)
            diffs.append(a - c)
        return statistics.median(api) * 1e3, statistics.median(cog_times) * 1e3, statistics.median(diffs) * 1e3
    finally:
        _stop(service)
        _stop(cog)


def measure(quick: bool) -> list[Metric]:
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp_name:
        tmp = Path(tmp_name)
        cold = cold_start_seconds(tmp / "cold")
        api_ms, direct_ms, overhead_ms = api_overhead(tmp / "api", 10 if quick else 40)
    return [
        Metric(
            "api_overhead_ms",
            overhead_ms,
            "ms",
            baseline=direct_ms,
            ratio=api_ms / direct_ms,
            limit=20.0,
            note=f"1-step 16px generation: API (Prefer: wait) {api_ms:.1f} ms vs straight to a Cog server "
            f"{direct_ms:.1f} ms; median of per-round differences",
        ),
        Metric(
            "cold_start_s",
            cold,
            "s",
            goal="record; lower each time",
            note="`lora-studio serve` spawned -> first tiny prediction returned (Cog worker start, predictor "
            "setup and base load included)",
        ),
    ]
