"""The official clients' ``run()`` on predictions that outlast the blocking wait: they keep polling and return the
outputs. Replicate's blocking answer says ``starting`` when the wait runs out, and the clients take any other status
as final; these are their most common calls, with a short ``wait`` so that every prediction outlasts it.

Also: ``lora-studio generate --lora-urls --lora-scales`` draws the same pixels as the API for the same inputs.
"""

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import replicate
import requests
from PIL import Image

from conftest import zip_images
from lora_core.tiny import tiny_world
from service_harness import ROOT, Api

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

GENERATE, TRAIN = "lora-studio/lora", "lora-studio/lora-training"
JS_DIR = ROOT / "tests" / "js"


def _pixels(url: str) -> np.ndarray:
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def _safetensors_metadata(url: str) -> dict:
    data = requests.get(url, timeout=30).content
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]


def _hold_the_worker(api: Api) -> str:
    """A long generation that keeps the one generation worker busy: it is running when this returns."""
    blocker = api.predict(
        GENERATE,
        {"prompt": "a blue square", "num_inference_steps": 150, "num_outputs": 4, "width": 256, "height": 256},
        wait=None,
    )
    api.wait(blocker["id"], statuses=("processing",))
    return blocker["id"]


def _release_when_queued(api: Api, blocker: str, count: int) -> threading.Thread:
    """Cancel ``blocker`` once ``count`` more of this owner's generations are queued behind it (by the event, not a
    fixed time: the clients may take a while to start on a slow machine)."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            page = api("GET", f"/v1/predictions?model={GENERATE}").json()["results"]
            if sum(p["status"] == "starting" and p["id"] != blocker for p in page) >= count:
                break
            time.sleep(0.2)
        api("POST", f"/v1/predictions/{blocker}/cancel")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_the_blocking_answer_says_starting_when_the_wait_runs_out(service):
    api = Api(service.url, service.token("fay"))
    started = time.monotonic()
    r = api(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        headers={"Prefer": "wait=1"},
        json={"input": {"prompt": "a red circle", "num_inference_steps": 150, "width": 256, "height": 256}},
    )
    answered = time.monotonic() - started
    body = r.json()
    assert r.status_code == 201 and body["status"] == "starting" and body["output"] is None, body
    assert answered < 1.5, answered  # the Python client stops reading 0.5 s after the wait it asked for
    assert api.wait(body["id"], statuses=("processing",))["status"] == "processing"  # GET: the true status
    api("POST", f"/v1/predictions/{body['id']}/cancel")
    assert api.wait(body["id"])["status"] == "canceled"
    # a prediction that ends within the wait is answered final, with its output
    done = api.predict(GENERATE, {"prompt": "a red circle", "num_inference_steps": 2, "seed": 0}, follow=False)
    assert done["status"] == "succeeded" and len(done["output"]) == 1


def test_run_returns_the_images_of_generations_queued_behind_another(service, js_client_dir):
    token = service.token("erin")
    api = Api(service.url, token)
    client = replicate.Client(api_token=token, base_url=service.url)
    inputs = {"prompt": "a photo of a green star", "seed": 5, "num_outputs": 2}
    blocker = _hold_the_worker(api)
    watcher = _release_when_queued(api, blocker, count=3)

    async def three_clients():
        js = await asyncio.create_subprocess_exec(
            shutil.which("node"),
            str(js_client_dir / "run.mjs"),
            service.url,
            token,
            GENERATE,
            json.dumps(inputs),
            "1",
            cwd=js_client_dir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return await asyncio.gather(
            asyncio.to_thread(client.run, GENERATE, input=inputs, wait=1),
            client.async_run(GENERATE, input=inputs, wait=1),
            js.communicate(),
        )

    sync_out, async_out, (js_stdout, js_stderr) = asyncio.run(three_clients())
    watcher.join(timeout=10)
    assert api("GET", f"/v1/predictions/{blocker}").json()["status"] == "canceled"  # they really were queued
    js_out = json.loads(js_stdout.decode().strip().splitlines()[-1]) if js_stdout.strip() else js_stderr.decode()
    for name, out in (("run", sync_out), ("async_run", async_out), ("javascript run", js_out)):
        assert isinstance(out, list) and len(out) == 2, (name, out)
    images = [[_pixels(str(url)) for url in out] for out in (sync_out, async_out, js_out)]
    assert all(im.shape == (64, 64, 3) for row in images for im in row)
    # the same input, the same pixels, whichever client asked
    assert all(np.array_equal(images[0][i], row[i]) for row in images[1:] for i in range(2))


def test_run_returns_a_trainings_files_and_the_cli_draws_the_apis_pixels(service, tmp_path):
    token = service.token("gil")
    client = replicate.Client(api_token=token, base_url=service.url)
    zip_path = zip_images(tmp_path / "stars.zip", tiny_world.concept_images("star", "purple", 5, first_seed=0))
    inputs = {"task": "object", "seed": 0, "max_train_steps": 10, "checkpoints": 1, "grid_steps": 2}

    async def two_trainings():  # the second waits in the queue behind the first: both outlast the 1 s wait
        with zip_path.open("rb") as a, zip_path.open("rb") as b:
            return await asyncio.gather(
                asyncio.to_thread(client.run, TRAIN, input={"instance_data": a, **inputs}, wait=1),
                client.async_run(TRAIN, input={"instance_data": b, **inputs}, wait=1),
            )

    outputs = asyncio.run(two_trainings())
    for out in outputs:
        assert isinstance(out, dict) and set(out) >= {"lora", "lora_a1111", "scales_grid"}, out
        assert _safetensors_metadata(str(out["lora"]))["lora_studio.task"] == "object"

    # the command line, given the same inputs (the LoRA by its URL, or downloaded to a path), draws the same pixels
    lora_url = str(outputs[0]["lora"])
    settings = {"prompt": "a photo of <1> on a white background", "lora_scales": "0.8", "seed": 3, "num_outputs": 2}
    api_images = [_pixels(str(u)) for u in client.run(GENERATE, input={**settings, "lora_urls": lora_url})]
    local = tmp_path / "mine.safetensors"
    local.write_bytes(requests.get(lora_url, timeout=30).content)
    env = {
        **os.environ,
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": "127.0.0.1",
        "LORA_STUDIO_CACHE_DIR": str(tmp_path / "c"),
        "OMP_NUM_THREADS": "1",  # as the service's workers (conftest): the same arithmetic, pixel for pixel
    }
    for source in (lora_url, str(local)):
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "lora-studio"),
                "generate",
                "--prompt",
                settings["prompt"],
                "--lora-urls",
                source,
                "--lora-scales",
                "0.8",
                "--seed",
                "3",
                "--num-outputs",
                "2",
                "--out",
                str(tmp_path / "cli"),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert "<1> = LoRA 1" in out.stderr
        paths = json.loads(out.stdout)["outputs"]
        cli_images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        assert all(np.array_equal(a, b) for a, b in zip(api_images, cli_images, strict=True)), source
