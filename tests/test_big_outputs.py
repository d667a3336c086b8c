"""Outputs of any size: a training whose LoRA is 300 MB goes from its Cog server to the agent beside it, into the
store and out to the user intact, streamed all the way (never base64 in a webhook, never whole in a process's
memory). The real agent (``lora-studio worker``), Cog's own server started as deploy/ starts it, the real API; the
training is a stand-in (``tests/predictors/big_lora.py``): the tiny base cannot make a file that large."""

import base64
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from service_harness import ROOT, WORKER_TOKEN, AgentProcess, Api, ServiceProcess, free_port

sys.path.insert(0, str(Path(__file__).parent / "predictors"))
import payload

pytestmark = pytest.mark.slow

SIZE, SEED = 300 * 2**20, 7
TRAINING = "lora-studio/lora-training"


def peak_rss_mb(pid: int) -> float:
    """The most memory the process ever held (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def a_zip() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "a photo of <1>")
    return "data:application/zip;base64," + base64.b64encode(buf.getvalue()).decode()


def test_a_300_mb_lora_arrives_intact_and_no_process_holds_it_whole(tmp_path):
    service = ServiceProcess(
        tmp_path / "svc", env={"LORA_STUDIO_WORKERS": f"lora-studio/lora=0;{TRAINING}=0"}, args=("--no-workers",)
    ).start()
    cog_port = free_port()
    agent = AgentProcess(service, TRAINING, "big-1", args=("--cog-url", f"http://127.0.0.1:{cog_port}"))
    cog_log, run_dir = (tmp_path / "cog.log").open("wb"), tmp_path / "cog"
    (run_dir / ".cog").mkdir(parents=True)  # Cog's server validates inputs with the schema in its folder
    shutil.copy(ROOT / ".cog" / "openapi_schema-cog-train.json", run_dir / ".cog" / "openapi_schema.json")
    cog = subprocess.Popen(
        [sys.executable, "-m", "lora_core.service.workers.cog_serve", "--host", "127.0.0.1"],
        cwd=run_dir,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PORT": str(cog_port),
            "COG_PREDICT_TYPE_STUB": f"{ROOT / 'tests' / 'predictors' / 'big_lora.py'}:Predictor",
            "LORA_STUDIO_SERVICE_URL": f"http://127.0.0.1:{agent.port}",  # the agent beside it, as in deploy/
            "LORA_STUDIO_WORKER_NAME": agent.name,
            "WEBHOOK_AUTH_TOKEN": WORKER_TOKEN,
            "BIG_LORA_BYTES": str(SIZE),
            "BIG_LORA_SEED": str(SEED),
        },
        stdout=cog_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        agent.start()
        api = Api(service.url, service.token("alice"))
        body = api.predict(TRAINING, {"instance_data": a_zip(), "task": "object"}, wait=60)
        assert body["status"] == "succeeded", (body.get("error"), body.get("logs"), agent.log())
        assert "uploaded lora (314.6 MB)" in body["logs"]  # the predictor handed it over itself, streamed (300 MiB)

        got = requests.get(body["output"]["lora"], stream=True, timeout=60)
        assert got.status_code == 200 and int(got.headers["content-length"]) > SIZE
        assert payload.sha256(got.iter_content(2**20)) == payload.sha256(payload.safetensors(SIZE, SEED))
        small = requests.get(body["output"]["lora_a1111"], timeout=60).content
        assert small == b"".join(payload.blocks(3 * payload.BLOCK + 5, SEED + 1))
        assert requests.get(body["output"]["scales_grid"], timeout=60).content.startswith(b"\x89PNG")

        # Neither the agent that received it nor the API that served it ever held a third of it.
        assert agent.process is not None
        assert service.process is not None
        for name, pid in (("agent", agent.process.pid), ("API", service.process.pid)):
            assert peak_rss_mb(pid) < SIZE / 2**20 / 3, f"{name} peaked at {peak_rss_mb(pid):.0f} MB"
    finally:
        os.killpg(cog.pid, 9)
        cog.wait()
        cog_log.close()
        agent.stop()
        service.stop()
