"""A worker the service did not start (a GPU container in production): a Cog server at a configured URL,
started the way docs/deploy.md says (``lora_core.service.workers.cog_serve`` with the worker's name, the service's
URL and the worker token in its environment)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service_harness import ROOT, Api, ServiceProcess, free_port

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

TOKEN = "remote-worker-token"


def start_cog_server(port: int, service_port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PORT": str(port),
        "COG_PREDICT_TYPE_STUB": "predict_generate.py:Predictor",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "WEBHOOK_AUTH_TOKEN": TOKEN,
        "LORA_STUDIO_SERVICE_URL": f"http://127.0.0.1:{service_port}",
        "LORA_STUDIO_WORKER_NAME": "lora-remote-1",
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": f"127.0.0.1:{service_port}",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lora_core.service.workers.cog_serve", "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health-check", timeout=1).json()["status"] == "READY":
                return proc
        except requests.RequestException:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_remote_cog_server_runs_predictions_and_one_that_goes_away_loses_none(tmp_path):
    service_port, cog_port = free_port(), free_port()
    cog = start_cog_server(cog_port, service_port, tmp_path / "cog.log")
    service = ServiceProcess(
        tmp_path / "svc",
        port=service_port,
        env={
            "LORA_STUDIO_WORKERS": f"lora-studio/lora=http://127.0.0.1:{cog_port};lora-studio/lora-training=0",
            "LORA_STUDIO_WORKER_TOKEN": TOKEN,
        },
    ).start()
    try:
        api = Api(service.url, service.token("alice"))
        assert [w["name"] for w in service.workers()] == ["lora-remote-1"]
        body = api.predict("lora-studio/lora", {"prompt": "a red circle", "seed": 1, "num_outputs": 2})
        assert body["status"] == "succeeded", body
        assert all(requests.get(u, timeout=10).content[:4] == b"\x89PNG" for u in body["output"])

        stop(cog)  # the container goes away: queued work waits for it instead of failing
        deadline = time.monotonic() + 30
        while service.workers()[0]["ready"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        waiting = api.predict("lora-studio/lora", {"prompt": "a blue square", "seed": 2}, wait=3, follow=False)
        assert waiting["status"] == "starting"
        cog = start_cog_server(cog_port, service_port, tmp_path / "cog.log")
        assert api.wait(waiting["id"])["status"] == "succeeded"
    finally:
        stop(cog)
        service.stop()
