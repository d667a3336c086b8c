"""One hardened service for the hostile suite, and the hostile servers around it.

The shared ``service`` fixture allows all of 127.0.0.1 (its tests' webhook receivers listen there), which
would also let LoRA URLs reach loopback. This one allows exactly the ports of the test servers that must be
reachable (the hostile file server, a webhook receiver, a receiver that is down); every other local
address, the secret server below included, must be refused. Limits are small so that caps and timeouts
trip in seconds: LoRA downloads 4 MB and 3 s in all, request bodies 4 MB, the file store 8 MB.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from service_harness import Api, ServiceProcess, free_port

from .servers import HostileFiles, Server

GENERATE = "lora-studio/lora"
TRAIN = "lora-studio/lora-training"
MB = 2**20
LIMITS = {
    "LORA_STUDIO_MAX_LORA_BYTES": str(4 * MB),
    "LORA_STUDIO_LORA_READ_TIMEOUT_S": "2",
    "LORA_STUDIO_LORA_TIMEOUT_S": "3",
    "LORA_STUDIO_MAX_REQUEST_BYTES": str(4 * MB),
    "LORA_STUDIO_STORAGE_QUOTA_BYTES": str(8 * MB),
    "LORA_STUDIO_WEBHOOK_RETRIES": "4",
    "LORA_STUDIO_WEBHOOK_BACKOFF_S": "0.2",
}


class Hardened:
    """The running service and what the tests need around it."""

    def __init__(self, process: ServiceProcess, files: Server, secret: Server, hook_port: int, down_port: int):
        self.process, self.files, self.secret = process, files, secret
        self.hook_port, self.down_port = hook_port, down_port
        self.url = process.url
        self.data_dir = process.data_dir
        self.tmp_dir = Path(process.env["TMPDIR"])

    def api(self, owner: str) -> Api:
        return Api(self.url, self.process.token(owner))


@pytest.fixture(scope="package")
def hardened(tmp_path_factory):
    with Server(HostileFiles) as secret, Server(HostileFiles, private_target=f"{secret.url}/good.safetensors") as files:
        data = tmp_path_factory.mktemp("hardened")
        (data / "tmp").mkdir()
        hook_port, down_port = free_port(), free_port()
        allowed = ",".join(f"127.0.0.1:{p}" for p in (files.port, hook_port, down_port))
        process = ServiceProcess(
            data, env={**LIMITS, "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": allowed, "TMPDIR": str(data / "tmp")}
        ).start()
        try:
            yield Hardened(process, files, secret, hook_port, down_port)
        finally:
            process.stop()


@pytest.fixture(scope="package")
def alice(hardened):
    return hardened.api("alice")


@pytest.fixture(scope="package")
def bob(hardened):
    return hardened.api("bob")


def data_uri(content: bytes, content_type: str = "application/zip") -> str:
    return f"data:{content_type};base64," + base64.b64encode(content).decode()


def timed(api: Api, model: str, input: dict, **body) -> tuple[dict, float]:
    """A prediction run to its end (``Prefer: wait``), and the seconds it took from the client's side."""
    started = time.monotonic()
    result = api.predict(model, input, wait=60, **body)
    return result, time.monotonic() - started


def still_serves(api: Api, files: Server) -> dict:
    """The next prediction, with a good LoRA from the same file server, succeeds."""
    result, _ = timed(
        api,
        GENERATE,
        {"prompt": "a photo of <1>", "lora_urls": f"{files.url}/good.safetensors", "num_inference_steps": 2, "seed": 0},
    )
    assert result["status"] == "succeeded", result["error"]
    return result


class Footprint:
    """What the service has on disk (its data folder and its TMPDIR), to show a hostile prediction left nothing.

    Allowed to grow: the file store (the upload the prediction was given, its outputs), the LoRA cache's blobs
    and URL index (a file that downloaded), the logs and database, and in TMPDIR the output folders of the
    latest few predictions (``OutputDirs``).
    """

    KEEP = ("files/", "cache/loras/blobs/", "cache/loras/urls/")

    def __init__(self, hardened: Hardened) -> None:
        self.hardened = hardened
        self.before = self.listing()

    def listing(self) -> set[str]:
        root = self.hardened.data_dir
        return {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}

    def strays(self) -> list[str]:
        new = sorted(self.listing() - self.before)

        def allowed(p: str) -> bool:
            return (
                p.startswith(self.KEEP)
                or p.endswith((".log", ".db", ".db-wal", ".db-shm"))
                or (p.startswith("tmp/") and _latest_output(self.hardened.tmp_dir, p))
            )

        strays = [p for p in new if not allowed(p)]
        partial = [p for p in new if ".partial" in p or "/.upload-" in p]
        return strays + partial


def _latest_output(tmp_dir: Path, relative: str) -> bool:
    """``tmp/generate-…/`` or ``tmp/train-…/`` (a predictor's output root) while it holds the folders of at
    most its last 4 predictions (``OutputDirs.keep``)."""
    parts = Path(relative.rstrip("/")).parts  # ("tmp", "generate-x", "00000001-y", "out-0.png")
    if len(parts) < 2 or not parts[1].startswith(("generate-", "train-")):
        return False
    return len(list((tmp_dir / parts[1]).iterdir())) <= 4
