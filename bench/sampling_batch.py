"""What exact re-makes cost: each output in its own pass (``sampling.sample``, the product's path) against all
outputs in one batched pass (``one_pass=True``, diffusers' usual ``num_images_per_prompt``), same request.

Output ``i`` of the per-output path equals the single image of ``seed + i`` bit for bit on any processor; the
batched pass is only close to it (kernels differ with the batch shape). The ratio is the price of that promise:
large where per-pass overhead dominates (the tiny base), small where the matrix products do (SD-1.5 size).
"""

from __future__ import annotations

import torch

from bench.lora_swap import _median_seconds
from bench.results import Metric
from lora_core.base import checkpoints, sampling
from lora_core.tools import sd15_sized


def _ratio(pipe, request: sampling.SamplingRequest, repeats: int) -> tuple[float, float]:
    """(seconds per-output, seconds batched), medians."""
    per_output = _median_seconds(lambda: sampling.sample(pipe, request), repeats)
    batched = _median_seconds(lambda: sampling.sample(pipe, request, one_pass=True), repeats)
    return per_output, batched


def measure(quick: bool) -> list[Metric]:
    defaults = checkpoints.get_checkpoint("tiny").defaults
    tiny = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    tiny.set_progress_bar_config(disable=True)
    request = sampling.resolve_request(defaults, prompt="a photo of a red circle", seed=0, num_outputs=4)
    single, batched = _ratio(tiny, request, 3 if quick else 10)
    metrics = [
        Metric(
            "batch_vs_single",
            single / batched,
            "x",
            baseline=batched * 1e3,
            ratio=single / batched,
            note=f"tiny base, 4 outputs, 20 steps, 64 px: one pass per output {single * 1e3:.0f} ms vs "
            f"one batched pass {batched * 1e3:.0f} ms (baseline); the price of exact re-makes",
        )
    ]
    del tiny
    sd15 = sd15_sized.load(dtype=torch.float32)
    request = sampling.resolve_request(
        defaults, prompt="a photo of a red circle", seed=0, num_outputs=2, num_inference_steps=2
    )
    single, batched = _ratio(sd15, request, 1 if quick else 3)
    metrics.append(
        Metric(
            "batch_vs_single_sd15",
            single / batched,
            "x",
            baseline=batched * 1e3,
            ratio=single / batched,
            note=f"SD-1.5-sized pipeline (random weights, fp32, CPU), 2 outputs, 2 steps, 64 px: "
            f"{single * 1e3:.0f} ms vs {batched * 1e3:.0f} ms batched (baseline)",
        )
    )
    return metrics
