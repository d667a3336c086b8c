"""``python -m bench --device cuda``: the SD-1.5-sized path where users pay for it, on one GPU.

On an SD-1.5-sized pipeline with random weights (``tools.sd15_sized``, built locally: no network), at 512 px:
- a 25-step image in the half precision the GPU images use (float16) vs float32 (TF32 matmuls, as a deployment
  that sets ``LORA_STUDIO_DTYPE=float32`` runs);
- the same image with 2 LoRAs merged into the weights (``patching.applied``) vs the same LoRAs as hooks (the
  unfused computation of PEFT's layers) vs the bare base;
- a training step at batch 1 with mixed precision (half base, float32 LoRA of rank 64 on the UNet's and the text
  encoder's attention, two new tokens, autocast, a loss scaler for float16): the GPU images' training;
- peak memory of each (``torch.cuda.max_memory_allocated``; on a CPU, peak RSS).

It writes ``bench/results-<device>.json``, apart from the CPU figures, with the GPU named. On a CPU the same code
runs (bfloat16 as the half type) so that the GPU run is not its first: ``--base tiny --quick`` in the tests.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.lora_swap import write_random_loras
from bench.results import Metric
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, lora_file, patching
from lora_core.tools import sd15_sized


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts over from the current RSS


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024  # kB


def _median(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm-up: kernels chosen, caches filled
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _libraries() -> str:
    """The versions this machine resolved (its own packages first, then .build/device-site's)."""
    import importlib.metadata

    names = ("torch", "diffusers", "transformers", "peft", "huggingface_hub", "safetensors", "pydantic")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def _pipeline(base: str, dtype: torch.dtype, device: str):
    if base == "sd15":
        pipe = sd15_sized.load(dtype=dtype)
    else:
        pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint(base), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
    return checkpoints.on_device(pipe, device)


def _sampling(pipe, base: str, device: str, size: int, steps: int, repeats: int, loras: list[Path]) -> dict:
    """Seconds of one image bare, with the LoRAs merged and with them as hooks; peak memory of the merged one."""
    defaults = checkpoints.get_checkpoint("tiny" if base == "tiny" else "sd-1.5").defaults
    request = sampling.resolve_request(
        defaults, prompt="a photo of object", seed=0, num_inference_steps=steps, width=size, height=size
    )
    bound = [binding.bind(pipe, *lora_file.read_lora(path)) for path in loras]

    def with_loras(merge_layers: bool) -> Callable[[], object]:
        turn = [0]

        def run():  # the scales alternate: every run merges afresh (the same ones again would merge nothing)
            turn[0] += 1
            with patching.applied(pipe, bound, [0.5 + 0.1 * (turn[0] % 2), 0.7], merge_layers=merge_layers):
                sampling.sample(pipe, request)

        return run

    result = {"bare": _median(lambda: sampling.sample(pipe, request), device, repeats)}
    result["hooks"] = _median(with_loras(False), device, repeats)
    _reset_peak(device)
    result["merged"] = _median(with_loras(True), device, repeats)
    result["peak_mb"] = _peak_mb(device)
    return result


def _training(pipe, device: str, size: int, steps: int) -> dict:
    from lora_core.tiny import tiny_world
    from lora_core.training import trainer
    from lora_core.training.preprocess import Example

    examples = [
        Example(str(i), image.resize((size, size)), None, "a photo of <s0><s1>")
        for i, image in enumerate(tiny_world.concept_images("star", "purple", 4, first_seed=0))
    ]
    config = trainer.TrainingConfig(
        steps=steps,
        batch_size=1,
        resolution=size,
        rank=64,
        learning_rate=1e-4,
        learning_rate_text=5e-5,
        learning_rate_embeddings=1e-3,
        train_text_encoder=True,
        tokens=("<s0>", "<s1>"),
        init_word="person",
        seed=0,
    )
    trainer.train_lora(pipe, examples, config.model_copy(update={"steps": 1}), log=lambda _: None)  # warm-up
    _reset_peak(device)
    seconds = trainer.train_lora(pipe, examples, config, log=lambda _: None).seconds / steps
    return {"seconds": seconds, "peak_mb": _peak_mb(device)}


def measure(device: str, quick: bool = False, base: str = "sd15") -> list[Metric]:
    """Every figure above, on ``device``; ``quick``: 64 px, 2 steps, 1 repeat (what it checks is that it runs)."""
    size, steps, repeats = (64, 2, 1) if quick else (512, 25, 3)
    print(f"bench --device {device}: {_libraries()}", file=sys.stderr, flush=True)  # first thing a GPU run shows
    half = torch.float16 if device.startswith("cuda") else torch.bfloat16
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    where = f"{base}_{device.split(':')[0]}"
    what = f"{'SD-1.5-sized (random weights)' if base == 'sd15' else base} base, {size} px, {steps} steps"
    runs: dict[torch.dtype, dict] = {}
    loras: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, half):  # one pipeline at a time
            pipe = _pipeline(base, dtype, device)
            loras = loras or write_random_loras(pipe, Path(tmp), count=2)
            runs[dtype] = _sampling(pipe, base, device, size, steps, repeats, loras)
            if dtype is half:
                runs[dtype]["training"] = _training(pipe, device, size, 2 if quick else 10)
            del pipe
            gc.collect()  # the float32 pipeline gone before the half one loads: its memory is not the half's peak
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    full, low = runs[torch.float32], runs[half]
    h = names[half]
    return [
        Metric(f"image_s_{where}_fp32", full["bare"], "s", note=f"{what}, float32 (TF32 matmuls on a GPU)"),
        Metric(
            f"image_s_{where}_{h}",
            low["bare"],
            "s",
            baseline=full["bare"],
            ratio=low["bare"] / full["bare"],
            note=f"{what}, {h} (the GPU images' default) vs float32",
        ),
        Metric(
            f"merged_vs_hooks_{where}",
            low["merged"] / low["hooks"],
            "x",
            baseline=low["hooks"],
            ratio=low["merged"] / low["hooks"],
            limit=1.0,
            note=f"{what}, {h}: an image with 2 r8 LoRAs merged into the weights vs the same LoRAs as hooks "
            f"(PEFT's unfused computation, {low['hooks']:.3f} s)",
        ),
        Metric(
            f"loras_vs_bare_{where}",
            low["merged"] / low["bare"],
            "x",
            baseline=low["bare"],
            ratio=low["merged"] / low["bare"],
            limit=1.03,
            note=f"{what}, {h}: an image with 2 LoRAs merged (merge and restore included) vs the bare base",
        ),
        Metric(
            f"image_peak_mb_{where}_{h}",
            low["peak_mb"],
            "MB",
            baseline=full["peak_mb"],
            ratio=low["peak_mb"] / full["peak_mb"],
            note=f"peak memory of an image with 2 LoRAs in {h} vs float32 ({full['peak_mb']:.0f} MB), the base "
            "included",
        ),
        Metric(
            f"train_step_s_{where}_mixed",
            low["training"]["seconds"],
            "s",
            note=f"a training step, batch 1 at {size} px: {h} base, float32 rank-64 LoRA on the UNet's and text "
            "encoder's attention + 2 tokens, autocast" + (", loss scaler" if half is torch.float16 else ""),
        ),
        Metric(
            f"train_peak_mb_{where}_mixed",
            low["training"]["peak_mb"],
            "MB",
            note="peak memory of that training, the warm base included (on a GPU what torch allocated, on a CPU "
            "the process's RSS)",
        ),
    ]
