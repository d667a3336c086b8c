"""`lora-studio bench --quick` runs end to end and produces every metric, finite, with its baseline where it has one.

The figures are not compared with goals here (CI machines vary); that is what bench/results.json is for.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = [
    "train_step_overhead",
    "lora_swap_vs_diffusers",
    "lora_swap_ms_sd15",
    "swap_repeat_sd15_ms",
    "swap_vs_copy_sd15",
    "rss_after_many_predictions",
    "patch_overhead_fraction",
    "cached_fetch_ms",
    "api_overhead_ms",
    "peak_rss_ratio",
    "cold_start_s",
    "wait_elsewhere_ms",
    "lease_detection_s",
    "lora_file_mb",
    "batch_vs_single",
    "batch_vs_single_sd15",
]


def test_quick_bench_writes_every_metric(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # every suite but `load`: tests/load runs the same driver (bench/load.py) and checks its figures
    suites = [arg for name in ("training", "lora", "sampling", "service", "scale", "file") for arg in ("--only", name)]
    run = subprocess.run(
        [sys.executable, "-m", "lora_core.cli", "bench", "--quick", *suites, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,  # a guard against a hang, not a speed check (about 10 minutes here on 2026-12-04)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and doc["machine"]["cores"] >= 1 and doc["versions"]["diffusers"]
    metrics = {m["name"]: m for m in doc["metrics"]}
    missing = [name for name in HEADLINE if name not in metrics]
    assert not missing, missing
    for m in metrics.values():
        assert math.isfinite(m["value"]), m
        if m["baseline"] is not None:
            assert math.isfinite(m["baseline"]) and m["baseline"] > 0, m
        if m["limit"] is not None:
            assert m["met"] in (True, False) and m["goal"], m
    assert metrics["cached_fetch_ms"]["value"] > 0 and "0 bytes downloaded" in metrics["cached_fetch_ms"]["note"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "api_overhead_ms" in run.stdout  # the printed table
