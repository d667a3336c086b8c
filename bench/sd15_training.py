"""Training at SD 1.5's real size on this machine: seconds per step and peak memory, float32 and bfloat16.

The base is ``tools.sd15_sized`` (SD 1.5's exact configuration, random weights); the LoRA is what a face training
of rank 64 with the text encoder trains (attention layers of the UNet and the text encoder, two new tokens), batch
2 at 64 px, as ``tests/test_sd15_size.py`` runs it through the service. Each precision runs in a fresh process, its
peak RSS counted from after the base is loaded (Linux resets VmHWM when 5 is written to /proc/self/clear_refs), so
the figure is what training adds to a warm worker. The bfloat16 run is the GPU images' mixed-precision path (a half
base, float32 LoRA parameters under autocast) on a CPU: a ratio above 1 says this CPU computes bf16 slowly, not
that the path is slow on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.results import Metric
from lora_core.base import checkpoints

_CODE = """
import json, re, torch
from pathlib import Path
from lora_core.tiny import tiny_world
from lora_core.tools import sd15_sized
from lora_core.training import trainer
from lora_core.training.preprocess import Example
pipe = sd15_sized.load(dtype=getattr(torch, {dtype!r}))
examples = [Example(str(i), im, None, "a photo of <s0><s1>")
            for i, im in enumerate(tiny_world.concept_images("star", "purple", 4, first_seed=0))]
cfg = trainer.TrainingConfig(steps={steps}, batch_size=2, resolution=64, rank=64, learning_rate=1e-4,
    learning_rate_text=5e-5, learning_rate_embeddings=1e-3, train_text_encoder=True, tokens=("<s0>", "<s1>"),
    init_word="person", seed=0)
trainer.train_lora(pipe, examples, cfg.model_copy(update={{"steps": 1}}), log=lambda _: None)  # warm-up
def kb(name):
    return int(re.search(name + r":\\s+(\\d+) kB", Path('/proc/self/status').read_text())[1]) / 1024
Path('/proc/self/clear_refs').write_text('5')
warm = kb("VmRSS")
seconds = trainer.train_lora(pipe, examples, cfg, log=lambda _: None).seconds / cfg.steps
print(json.dumps({{"seconds": seconds, "warm_mb": warm, "peak_mb": kb("VmHWM")}}))
"""


def _run(dtype: str, steps: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CODE.format(dtype=dtype, steps=steps)],
        capture_output=True,
        text=True,
        cwd=checkpoints.REPO_ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"SD-1.5-sized training ({dtype}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> list[Metric]:
    steps = 2 if quick else 5
    fp32, bf16 = _run("float32", steps), _run("bfloat16", steps)
    what = "SD-1.5-sized base (random weights), rank 64 UNet + text-encoder LoRA and 2 tokens, batch 2, 64 px"
    return [
        Metric("train_step_s_sd15_fp32", fp32["seconds"], "s", note=f"{what}, float32, this CPU"),
        Metric(
            "train_step_s_sd15_bf16",
            bf16["seconds"],
            "s",
            baseline=fp32["seconds"],
            ratio=bf16["seconds"] / fp32["seconds"],
            note=f"{what}, bfloat16 base + float32 LoRA under autocast (the GPU images' path), vs float32",
        ),
        Metric(
            "train_peak_mb_sd15_fp32",
            fp32["peak_mb"],
            "MB",
            baseline=fp32["warm_mb"],
            ratio=fp32["peak_mb"] / fp32["warm_mb"],
            note=f"peak RSS while training vs the warm float32 worker's {fp32['warm_mb']:.0f} MB",
        ),
        Metric(
            "train_peak_mb_sd15_bf16",
            bf16["peak_mb"],
            "MB",
            baseline=fp32["peak_mb"],
            ratio=bf16["peak_mb"] / fp32["peak_mb"],
            note=f"the same with a bfloat16 base (warm: {bf16['warm_mb']:.0f} MB), vs float32's peak",
        ),
    ]
