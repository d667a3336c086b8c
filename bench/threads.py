"""Local workers sharing one machine: a training's time per step alone, and beside a stream of generations.

train_beside_generations: ``serve`` with its two local workers (one per model). A training's seconds per step
    (the rate in its last progress line) while a client keeps a generation running on the other worker at all
    times, over the same training with the machine to itself. Each local Cog server gets its share of the cores
    (``ServiceConfig.threads_per_worker``); baseline noted: the same two trainings with every worker using every
    core (``LORA_STUDIO_WORKER_THREADS`` = the core count), what each process did before it had a budget.
"""

from __future__ import annotations

import base64
import io
import os
import re
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import requests

from bench.results import Metric
from bench.service_api import _env, _free_port, _stop, _token, _wait_until, _workers_ready, spawn

RATE = re.compile(r"([\d.]+)(it/s|s/it)")
GENERATION: dict[str, Any] = {"prompt": "a red circle", "num_inference_steps": 20}


def _zip_uri() -> str:
    from lora_core.tiny import tiny_world

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, image in enumerate(tiny_world.concept_images("star", "purple", 6, first_seed=0)):
            png = io.BytesIO()
            image.save(png, "PNG")
            z.writestr(f"star-{i}.png", png.getvalue())
    return "data:application/zip;base64," + base64.b64encode(buf.getvalue()).decode()


def _seconds_per_step(logs: str) -> float:
    """From the last progress line's rate (tqdm's ``7.00it/s`` or ``1.76s/it``)."""
    from lora_core import progress

    last = [m.string for m in progress.matches(logs) if "loss=" in m.string][-1]
    match = RATE.search(last)
    assert match, last
    return 1 / float(match[1]) if match[2] == "it/s" else float(match[1])


def _train(session: requests.Session, base: str, zip_uri: str, steps: int) -> float:
    body = session.post(
        f"{base}/v1/models/lora-studio/lora-training/predictions",
        # what is measured is the training's step rate: one checkpoint, its report and grid sampled in 2 steps
        json={
            "input": {
                "instance_data": zip_uri,
                "task": "object",
                "seed": 0,
                "max_train_steps": steps,
                "checkpoints": 1,
                "grid_steps": 2,
            }
        },
        headers={"Prefer": "wait=60"},
        timeout=90,
    ).json()
    while body["status"] not in ("succeeded", "failed", "canceled"):
        body = session.get(body["urls"]["get"], timeout=10).json()
    if body["status"] != "succeeded":
        raise RuntimeError(f"bench training {body['status']}: {body.get('error')}")
    return _seconds_per_step(body["logs"])


def _alone_and_beside(data_dir: Path, threads: str | None, steps: int) -> tuple[float, float, int]:
    """(s/step alone, s/step beside generations, generations finished meanwhile)."""
    port = _free_port()
    token = _token(data_dir)
    extra = {"LORA_STUDIO_DATA_DIR": str(data_dir), **({"LORA_STUDIO_WORKER_THREADS": threads} if threads else {})}
    env = {k: v for k, v in _env(extra).items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    service = spawn(env, "serve", "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    stop, generated = threading.Event(), list[str]()

    def stream() -> None:
        while not stop.is_set():
            r = session.post(
                f"{base}/v1/models/lora-studio/lora/predictions",
                json={"input": {**GENERATION, "seed": len(generated)}},
                headers={"Prefer": "wait=60"},
                timeout=90,
            )
            generated.append(r.json()["status"])

    try:
        _wait_until(lambda: _workers_ready(base), 180, "service workers")
        zip_uri = _zip_uri()
        _train(session, base, zip_uri, 5)  # warm: the first training loads what the next ones reuse
        alone = _train(session, base, zip_uri, steps)
        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        _wait_until(lambda: bool(generated), 120, "first generation")
        beside = _train(session, base, zip_uri, steps)
        stop.set()
        streamer.join(timeout=120)
        return alone, beside, len(generated)
    finally:
        stop.set()
        _stop(service)


def measure(quick: bool) -> list[Metric]:
    steps, cores = (40 if quick else 150), len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        alone, beside, generated = _alone_and_beside(Path(tmp) / "split", None, steps)
        every_alone, every_beside, _ = _alone_and_beside(Path(tmp) / "every", str(cores), steps)
    return [
        Metric(
            "train_beside_generations",
            beside / alone,
            "x",
            baseline=alone * 1e3,
            ratio=beside / alone,
            limit=2.5,
            note=f"{steps}-step tiny training, s/step beside a stream of 20-step generations ({generated} ran "
            f"meanwhile) {beside * 1e3:.0f} ms vs alone {alone * 1e3:.0f} ms, each local worker on "
            f"{max(1, cores // 2)} of {cores} cores; every worker on every core: {every_beside * 1e3:.0f} ms vs "
            f"{every_alone * 1e3:.0f} ms ({every_beside / every_alone:.1f}x)",
        )
    ]
