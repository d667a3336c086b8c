"""How far each training preset moves the tiny base towards the photos it is tested with (issue 21, item 4).

On the embedded base a preset must be seen learning, not only running. Each preset trains with its default
settings on its own photos (held out from the VAE's training: ``tiny_vae_data.HELD_OUT_PHOTOS``), then draws
its caption prompt at scale 0 (the base) and at scale 1 on the same seeds. Two distances to the training crops,
both independent of the world's palette: every pixel's colour (RGB histogram), and each image's mean pixel error
to its nearest training crop (layout and texture). ``gap_closed`` is the share of the base's distance the LoRA
removes: 0 learned nothing, 1 draws the photos.
"""

from __future__ import annotations

import random
import time
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from lora_core import image_measures
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, lora_file, patching, prompts
from lora_core.tiny import tiny_vae_data
from lora_core.training import dataset, preprocess, presets, training_job

# (photo, how many augmented copies, their seed) per preset: the zips tests/test_tasks_on_photos.py trains on.
PRESET_PHOTOS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "face": (("astronaut", 5, 0),),
    "object": (("chelsea", 3, 1), ("coffee", 2, 2)),
    "style": (("brick", 2, 3), ("grass", 2, 3), ("gravel", 2, 3)),
}
SEEDS = range(8)


def augmented(photo: np.ndarray, n: int, seed: int) -> list[Image.Image]:
    """Crops (80-100% of each side), mirror images and brightness changes of one photo: a user's handful."""
    rng = random.Random(seed)
    image = Image.fromarray(photo).convert("RGB")
    out = []
    for _ in range(n):
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2)))
    return out


def preset_photos(task: str) -> list[Image.Image]:
    return [im for name, n, seed in PRESET_PHOTOS[task] for im in augmented(tiny_vae_data.photo(name), n, seed)]


def write_zip(path: Path, images: list[Image.Image]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for i, image in enumerate(images):
            buf = BytesIO()
            image.save(buf, "JPEG", quality=90)
            z.writestr(f"photo{i}.jpg", buf.getvalue())
    return path


def _draw(pipe, prompt: str, defaults) -> list[Image.Image]:
    seeds = list(SEEDS)
    per = sampling.MAX_OUTPUTS
    return [
        im
        for first in seeds[::per]
        for im in sampling.sample(
            pipe,
            sampling.resolve_request(defaults, prompt=prompt, seed=first, num_outputs=min(per, len(seeds) - first)),
        )
    ]


def measure_preset(pipe, base_hash: str, task: str, work_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train ``task``'s preset (defaults, seed 0) on its photos and measure the LoRA against the base."""
    checkpoint = checkpoints.get_checkpoint("tiny")
    preset = presets.get_preset(task)
    photos = preset_photos(task)
    work_dir.mkdir(parents=True, exist_ok=True)
    zip_path = write_zip(work_dir / f"{task}.zip", photos)
    t0 = time.perf_counter()
    result = training_job.run_training(
        pipe, base_hash, zip_path, training_job.TrainingRequest(task=task, seed=0), work_dir / task, log=log
    )
    seconds = time.perf_counter() - t0
    data = dataset.InstanceData([dataset.InstanceImage(f"p{i}.jpg", im) for i, im in enumerate(photos)])
    targets = [e.image for e in preprocess.prepare_examples(data, preset, checkpoint.defaults.width, "<s0>")]
    lora = binding.bind(pipe, *lora_file.read_lora(result.lora))
    prompt = preset.caption_template.format(tokens="<1>")
    drawn = {}
    for scale in (0.0, 1.0):
        with patching.applied(pipe, [lora], [scale]) as texts:
            drawn[scale] = _draw(pipe, prompts.expand(prompt, texts), checkpoint.defaults)
    colour = [image_measures.rgb_histogram_distance(drawn[s], targets) for s in (0.0, 1.0)]
    nearest = [image_measures.nearest_mae(drawn[s], targets) for s in (0.0, 1.0)]
    return {
        "task": task,
        "photos": [name for name, _, _ in PRESET_PHOTOS[task]],
        "steps": int(result.metadata["lora_studio.steps"]),
        "train_s": round(seconds, 1),
        "colour_distance": {"scale_0": round(colour[0], 3), "scale_1": round(colour[1], 3)},
        "colour_gap_closed": round(1 - colour[1] / colour[0], 3),
        "nearest_photo_mae": {"scale_0": round(nearest[0], 1), "scale_1": round(nearest[1], 1)},
        "nearest_photo_gap_closed": round(1 - nearest[1] / nearest[0], 3),
    }


def preset_report(work_dir: Path, tasks: tuple[str, ...] = ("face", "object", "style")) -> list[dict]:
    bases = checkpoints.WarmPipelineCache()
    pipe = bases.get("tiny")
    pipe.set_progress_bar_config(disable=True)
    return [measure_preset(pipe, bases.base_hash, task, work_dir, log=lambda _line: None) for task in tasks]
