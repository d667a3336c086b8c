"""lora_file_mb: the LoRA the training predictor makes from the example zip (examples/purple-stars.zip).

The size does not depend on the step count, so quick mode trains a few steps; full mode runs the
object preset and records its training time too.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.results import Metric
from lora_core.base import checkpoints
from lora_core.training import training_job

EXAMPLE = checkpoints.REPO_ROOT / "examples" / "purple-stars.zip"


def measure(quick: bool) -> list[Metric]:
    cache = checkpoints.WarmPipelineCache()
    pipe = cache.get("tiny")
    request = training_job.TrainingRequest(  # quick: a smoke run, its report and grid sampled in 2 steps
        task="object", base_model="tiny", seed=0, max_train_steps=20 if quick else None, grid_steps=2 if quick else None
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        start = time.perf_counter()
        result = training_job.run_training(pipe, cache.base_hash, EXAMPLE, request, Path(out), log=lambda _: None)
        seconds = time.perf_counter() - start
        size_mb = Path(result.lora).stat().st_size / 1e6
        a1111_mb = Path(result.lora_a1111).stat().st_size / 1e6
    metrics = [
        Metric(
            "lora_file_mb",
            size_mb,
            "MB",
            goal="record",
            note=f"object preset on the example zip (10 photos), tiny base; A1111 twin {a1111_mb:.2f} MB",
        )
    ]
    if not quick:
        metrics.append(
            Metric(
                "train_example_s",
                seconds,
                "s",
                goal="record",
                note="the whole training prediction on the example zip (object preset, tiny base, 4 checkpoints and "
                "their report)",
            )
        )
    return metrics
