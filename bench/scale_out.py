"""The service split across processes on one PostgreSQL, as it is deployed: API processes with no workers, worker
agents (``lora-studio worker``) beside their Cog servers.

wait_elsewhere_ms: ``Prefer: wait`` on an API process that did not run the prediction (an agent in another process
    finished it; the wake-up crosses by LISTEN/NOTIFY): the answer's arrival minus the prediction's completed_at,
    median. Baseline: the same when the API process ran it with its own worker (an in-process wake-up).
lease_detection_s: an agent killed (-9) mid-prediction to that prediction reading ``failed`` on the API process
    (its heartbeat lapses: six beats at the default 5 s, swept as often).
scale_lost / scale_duplicated: 20 predictions queued through the API process, which is killed (-9) and restarted
    after the first 10; predictions accepted (201) that did not succeed, and output files beyond one per prediction
    (a prediction run twice stores its image twice). ``tests/test_scale_out.py`` asserts both are 0 under more
    faults (a second API, agents drained and killed, trainings).
"""

from __future__ import annotations

import datetime
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import postgres
from bench.results import Metric
from bench.service_api import NOOP, ROOT, WORKER_TOKEN, _env, _free_port, _stop, _wait_until, spawn
from lora_core import progress

SLOW: dict[str, Any] = {
    "prompt": "a blue square",
    "num_inference_steps": 150,
    "num_outputs": 4,
    "width": 256,
    "height": 256,
}


def _serve(env: dict[str, str], port: int, *args: str) -> subprocess.Popen:
    return spawn(env, "serve", "--port", str(port), "--log-level", "warning", *args)


def _agent(env: dict[str, str], port: int, api_url: str) -> subprocess.Popen:
    return spawn(
        {**env, "LORA_STUDIO_PUBLIC_URL": api_url},
        "worker",
        "--model",
        "lora-studio/lora",
        "--port",
        str(port),
        "--name",
        "bench-agent",
    )


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=datetime.UTC).timestamp()


def _waits(session: requests.Session, base: str, rounds: int) -> list[float]:
    """Seconds from each prediction's completion to its ``Prefer: wait`` answer arriving."""
    out = []
    for i in range(rounds + 2):
        body = session.post(
            f"{base}/v1/models/lora-studio/lora/predictions",
            json={"input": {**NOOP, "seed": i}},
            headers={"Prefer": "wait=60"},
            timeout=90,
        ).json()
        arrived = time.time()
        if body["status"] != "succeeded":
            raise RuntimeError(f"bench prediction ended {body['status']}: {body.get('error')}")
        if i >= 2:  # the first two warm the path
            out.append(arrived - _stamp(body["completed_at"]))
    return out


def _through_an_api_kill(
    env: dict[str, str], port: int, api: subprocess.Popen, session: requests.Session, database: str
) -> tuple[subprocess.Popen, int, int]:
    """(the restarted API process, predictions lost, output files duplicated)."""
    import sqlalchemy as sa

    from lora_core.service.storage import db

    base, ids = f"http://127.0.0.1:{port}", []
    for i in range(20):
        if i == 10:
            api.send_signal(signal.SIGKILL)
            api.wait()
            api = _serve(env, port, "--no-workers")
            _wait_until(lambda: requests.get(f"{base}/health", timeout=1).ok, 120, "API process restarted")
        r = session.post(f"{base}/v1/models/lora-studio/lora/predictions", json={"input": {**NOOP, "seed": i}})
        r.raise_for_status()
        ids.append(r.json()["id"])
    ended: dict[str, str] = {}
    deadline = time.monotonic() + 300
    while len(ended) < len(ids) and time.monotonic() < deadline:
        for pid in set(ids) - set(ended):
            status = session.get(f"{base}/v1/predictions/{pid}", timeout=10).json()["status"]
            if status in ("succeeded", "failed", "canceled"):
                ended[pid] = status
        time.sleep(0.2)
    engine = db.connect(database)
    with engine.connect() as c:
        files: dict[str, int] = dict(
            c.execute(
                sa.text("SELECT prediction_id, count(*) FROM files WHERE prediction_id = ANY(:ids) GROUP BY 1"),
                {"ids": ids},
            ).all()
        )
    engine.dispose()
    lost = sum(ended.get(pid) != "succeeded" for pid in ids)
    return api, lost, sum(max(0, files.get(pid, 0) - 1) for pid in ids)


def measure(quick: bool) -> list[Metric]:
    rounds = 10 if quick else 40
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp_name, postgres.cluster() as database:
        tmp = Path(tmp_name)
        env = _env({"DATABASE_URL": database, "LORA_STUDIO_DATA_DIR": str(tmp), "LORA_STUDIO_SECRET": "bench"})
        token = subprocess.run(
            [sys.executable, "-m", "lora_core.cli", "token", "create", "--owner", "bench"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"

        api_port, agent_port = _free_port(), _free_port()
        api, agent = _serve(env, api_port, "--no-workers"), _agent(env, agent_port, f"http://127.0.0.1:{api_port}")
        try:
            base = f"http://127.0.0.1:{api_port}"
            _wait_until(lambda: requests.get(f"{base}/health", timeout=1).ok, 120, "API process")
            _wait_until(
                lambda: requests.get(f"http://127.0.0.1:{agent_port}/health", timeout=1).json()["worker"]["ready"],
                180,
                "worker agent",
            )
            elsewhere = _waits(session, base, rounds)
            api, lost, duplicated = _through_an_api_kill(env, api_port, api, session, database)
            doomed = session.post(f"{base}/v1/models/lora-studio/lora/predictions", json={"input": SLOW})
            doomed.raise_for_status()
            doomed = doomed.json()
            _wait_until(lambda: progress.matches(session.get(doomed["urls"]["get"]).json()["logs"]), 120, "progress")
            agent.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            _wait_until(lambda: session.get(doomed["urls"]["get"]).json()["status"] == "failed", 180, "the lease")
            lease_s = time.monotonic() - killed
        finally:
            _stop(agent)
            _stop(api)

        own_port = _free_port()
        own = _serve({**env, "LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"}, own_port)
        try:
            base = f"http://127.0.0.1:{own_port}"
            _wait_until(
                lambda: all(
                    w["ready"]
                    for w in requests.get(
                        f"{base}/internal/health", headers={"Authorization": f"Bearer {WORKER_TOKEN}"}, timeout=1
                    ).json()["workers"]
                ),
                180,
                "service with its own worker",
            )
            here = _waits(session, base, rounds)
        finally:
            _stop(own)
    elsewhere_ms, here_ms = statistics.median(elsewhere) * 1e3, statistics.median(here) * 1e3
    return [
        Metric(
            "wait_elsewhere_ms",
            elsewhere_ms,
            "ms",
            baseline=here_ms,
            ratio=elsewhere_ms / here_ms if here_ms > 0 else None,
            limit=500.0,
            note=f"Prefer: wait on an API process that did not run the prediction (agent in another process, "
            f"PostgreSQL LISTEN/NOTIFY): completed -> answer {elsewhere_ms:.0f} ms, median of {rounds}; the same "
            f"process running it: {here_ms:.0f} ms",
        ),
        Metric(
            "lease_detection_s",
            lease_s,
            "s",
            limit=60.0,
            note="an agent killed -9 mid-prediction -> that prediction `failed` on an API process (default "
            "heartbeat 5 s: lapsed after six beats, swept as often)",
        ),
        Metric(
            "scale_lost",
            float(lost),
            "predictions",
            limit=0.0,
            note="of 20 queued through an API process killed -9 and restarted after the first 10: accepted, "
            "not succeeded",
        ),
        Metric(
            "scale_duplicated",
            float(duplicated),
            "files",
            limit=0.0,
            note="the same 20: output files beyond one per prediction (one run twice would store two)",
        ),
    ]
