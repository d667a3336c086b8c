"""Load: many tiny generations from concurrent clients plus a few trainings, on one service (one Cog worker
per model), all on 127.0.0.1. Every prediction must reach a final state, none lost, none duplicated; the API
must stay responsive while the workers are busy.

load_generation_p50_s / _p95_s: a generation's latency as its client sees it (POST with ``Prefer: wait`` to
    the final state, polling after the wait), queueing behind the others included.
load_throughput_per_s: generations finished per second of the run (one worker draws them one at a time).
load_training_s: the slower training's latency (they share the machine with the generations).
load_health_p95_ms: ``GET /health`` every 50 ms while the workers are busy (goal: p95 < 100 ms).
load_lost: predictions made but not listed, listed twice, or not final at the end (goal: 0).

The same driver runs in CI (tests/load/test_load.py) with the same counts.
"""

from __future__ import annotations

import base64
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.results import Metric

GENERATE, TRAIN = "lora-studio/lora", "lora-studio/lora-training"
FINAL = ("succeeded", "failed", "canceled")
PROMPTS = [
    "a red circle",
    "a blue square on a white background",
    "a photo of a green star",
    "a yellow triangle on a black background",
    "a purple circle",
]


@dataclass
class Outcome:
    id: str
    kind: str
    status: str
    seconds: float
    outputs: list = field(default_factory=list)
    error: str | None = None
    finished: float = 0.0  # seconds from the start of the run to this prediction seen final


@dataclass
class LoadReport:
    generations: list[Outcome]
    trainings: list[Outcome]
    health_ms: list[float]  # while busy
    health_failures: int
    wall_s: float  # first request to the last prediction (generation or training) final
    created: list[str]  # ids returned by the API, in order
    listed: list[str]  # ids in the owner's history, page by page

    @property
    def outcomes(self) -> list[Outcome]:
        return self.generations + self.trainings

    @property
    def lost(self) -> int:
        """Made but not listed + listed more than once + listed but never made + not final at the end."""
        made, listed = set(self.created), self.listed
        return (
            len(made - set(listed))
            + (len(listed) - len(set(listed)))
            + len(set(listed) - made)
            + sum(o.status not in FINAL for o in self.outcomes)
            + (len(self.created) - len(made))
        )

    def latency(self, q: float) -> float:
        return _quantile([o.seconds for o in self.generations], q)

    @property
    def generations_s(self) -> float:
        """First request to the last generation final (the trainings may run on after it)."""
        return max(o.finished for o in self.generations)

    @property
    def throughput(self) -> float:
        return len(self.generations) / self.generations_s

    @property
    def health_p95_ms(self) -> float:
        return _quantile(self.health_ms, 0.95)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def training_zip(images: int = 5) -> bytes:
    """A small upload of held-out concept pictures (purple stars), made in memory."""
    from lora_core.tiny import tiny_world

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, image in enumerate(tiny_world.concept_images("star", "purple", images, first_seed=0)):
            png = io.BytesIO()
            image.save(png, "PNG")
            z.writestr(f"star{i}.png", png.getvalue())
    return buf.getvalue()


def run(
    base_url: str,
    token: str,
    *,
    generations: int = 50,
    clients: int = 10,
    trainings: int = 2,
    steps: int = 4,
    size: int = 64,
    train_steps: int = 30,
    timeout_s: float = 600,
) -> LoadReport:
    """Run the load against a service already up; ``token``'s owner should have no other predictions."""
    auth = {"Authorization": f"Bearer {token}"}
    local = threading.local()
    created: list[str] = []
    guard = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers.update(auth)
        return local.session

    def one(model: str, kind: str, input: dict, **body) -> Outcome:
        started = time.monotonic()
        r = session().post(
            f"{base_url}/v1/models/{model}/predictions",
            json={"input": input, **body},
            headers={"Prefer": "wait=60"},
            timeout=90,
        )
        r.raise_for_status()
        prediction = r.json()
        with guard:
            created.append(prediction["id"])
        while prediction["status"] not in FINAL and time.monotonic() - started < timeout_s:
            time.sleep(0.1)
            prediction = session().get(prediction["urls"]["get"], timeout=30).json()
        output = prediction["output"]
        values = output if isinstance(output, list) else list((output or {}).values())
        outputs = sorted(u for v in values for u in (v if isinstance(v, list) else [v]))  # a training's checkpoints
        now = time.monotonic()
        return Outcome(
            prediction["id"], kind, prediction["status"], now - started, outputs, prediction["error"], now - run_started
        )

    zip_uri = "data:application/zip;base64," + base64.b64encode(training_zip()).decode()
    busy, health_ms, health_failures = threading.Event(), [], [0]

    def watch_health() -> None:
        health = requests.Session()
        while busy.is_set():
            started = time.perf_counter()
            try:
                ok = health.get(f"{base_url}/health", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                health_ms.append((time.perf_counter() - started) * 1e3)
            else:
                health_failures[0] += 1
            time.sleep(0.05)

    busy.set()
    watcher = threading.Thread(target=watch_health, daemon=True)
    run_started = time.monotonic()
    watcher.start()
    try:
        with (
            ThreadPoolExecutor(trainings or 1, thread_name_prefix="train") as train_pool,
            ThreadPoolExecutor(clients, thread_name_prefix="client") as clients_pool,
        ):
            training_jobs = [
                train_pool.submit(
                    one,
                    TRAIN,
                    "training",
                    {
                        "instance_data": zip_uri,
                        "task": "object",
                        "seed": i,
                        "max_train_steps": train_steps,
                        "checkpoints": 1,  # the figures stay comparable with runs before checkpoints existed
                        "grid_steps": 2,  # its report and grid in 2 steps: what this measures is the service
                    },
                )
                for i in range(trainings)
            ]
            generation_jobs = [
                clients_pool.submit(
                    one,
                    GENERATE,
                    "generation",
                    {
                        "prompt": PROMPTS[i % len(PROMPTS)],
                        "seed": i,
                        "num_inference_steps": steps,
                        "width": size,
                        "height": size,
                    },
                )
                for i in range(generations)
            ]
            generation_outcomes = [j.result() for j in generation_jobs]
            training_outcomes = [j.result() for j in training_jobs]
    finally:
        wall = time.monotonic() - run_started
        busy.clear()
        watcher.join(10)
    listed, url = [], f"{base_url}/v1/predictions"
    while url:
        page = requests.get(url, headers=auth, timeout=30).json()
        listed += [p["id"] for p in page["results"]]
        url = page["next"]
    return LoadReport(generation_outcomes, training_outcomes, health_ms, health_failures[0], wall, created, listed)


def metrics(report: LoadReport) -> list[Metric]:
    gens, trains = report.generations, report.trainings
    failed = sum(o.status != "succeeded" for o in report.outcomes)
    counts = f"{len(gens)} generations from concurrent clients + {len(trains)} trainings, one worker per model"
    return [
        Metric(
            "load_generation_p50_s",
            report.latency(0.5),
            "s",
            goal="record",
            note=f"{counts}; client-side latency, queueing included",
        ),
        Metric("load_generation_p95_s", report.latency(0.95), "s", goal="record", note=counts),
        Metric(
            "load_throughput_per_s",
            report.throughput,
            "/s",
            goal="record",
            note=f"{len(gens)} generations in {report.generations_s:.1f} s (first request to the last one "
            f"final), trainings running beside them",
        ),
        Metric(
            "load_training_s",
            max((o.seconds for o in trains), default=0.0),
            "s",
            goal="record",
            note="the slower training, sharing the machine with the generations",
        ),
        Metric(
            "load_health_p95_ms",
            report.health_p95_ms,
            "ms",
            limit=100.0,
            note=f"GET /health every 50 ms while busy: {len(report.health_ms)} answers, "
            f"median {statistics.median(report.health_ms):.1f} ms, {report.health_failures} failed",
        ),
        Metric(
            "load_lost",
            float(report.lost + failed),
            "",
            limit=0.0,
            note="predictions lost, duplicated, not final or not succeeded",
        ),
    ]


def measure(quick: bool) -> list[Metric]:
    """Start a service of our own (both models, one worker each), run the load, stop it."""
    from bench.service_api import ROOT, _env, _free_port, _stop, _token, _wait_until, _workers_ready

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        data, port = Path(tmp), _free_port()
        token = _token(data)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lora_core.cli", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT,
            env=_env({"LORA_STUDIO_DATA_DIR": str(data)}),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until(lambda: _workers_ready(base), 180, "service workers")
            report = run(base, token, generations=20 if quick else 50, trainings=1 if quick else 2)
        finally:
            _stop(proc)
    return metrics(report)
