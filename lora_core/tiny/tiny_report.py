"""Does the tiny base understand its prompts? Colour test, shape test, and a picture of both."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lora_core import image_files
from lora_core.base import checkpoints, sampling
from lora_core.tiny import tiny_eval

COLOUR_TEST = ("red", "green", "blue", "yellow")
SEEDS = range(4)
GRID_PROMPTS = (
    "a red square",
    "a green square",
    "a blue square",
    "a yellow square",
    "a purple circle",
    "an orange star",
    "a blue triangle on a black background",
    "a photo of a yellow circle on a blue striped background",
    "a red and white checkered pattern",
    "a green circle and a red square",
)


def tiny_request(prompt: str, seed: int, **overrides) -> sampling.SamplingRequest:
    defaults = checkpoints.get_checkpoint("tiny").defaults
    return sampling.resolve_request(defaults, prompt=prompt, seed=seed, **overrides)


def colour_test(pipe, **overrides) -> dict[str, list[str | None]]:
    """Dominant colour of "a {colour} square" for each colour and seed."""
    return {
        c: [
            tiny_eval.dominant_colour(sampling.sample(pipe, tiny_request(f"a {c} square", s, **overrides))[0])
            for s in SEEDS
        ]
        for c in COLOUR_TEST
    }


def shape_test(pipe, **overrides) -> dict[str, list[str | None]]:
    """Shape recognised in "a red {shape} on a white background" for each shape and seed."""
    prototypes = tiny_eval.shape_prototypes()
    return {
        shape: [
            tiny_eval.classify_shape(
                sampling.sample(pipe, tiny_request(f"a red {shape} on a white background", s, **overrides))[0],
                prototypes,
            )
            for s in SEEDS
        ]
        for shape in prototypes
    }


def vae_round_trip(vae, pictures: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 (N, H, W, 3) pictures, no UNet: what the VAE alone preserves."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out = torch.cat([vae.decode(vae.encode(x[i : i + 64]).latent_dist.mean).sample for i in range(0, len(x), 64)])
    return out.clamp(-1, 1).add(1).mul(127.5).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()


def vae_report(vae, n: int = 64) -> dict:
    """Round-trip figures on pictures no VAE training saw: random saturated colours, held-out photo crops, and
    fresh pictures of the world (what the base itself draws must survive too)."""
    from lora_core.tiny import tiny_vae_data, tiny_world

    colours = tiny_vae_data.saturated_colours(n, seed=10_001)
    crops, photos = tiny_vae_data.held_out_crops(n, seed=10_002)
    crop_copies, names = vae_round_trip(vae, crops), np.array(photos)
    world = tiny_world.sample_world(n, seed=10_003)[0]
    colour_copies = vae_round_trip(vae, colours)
    hue = tiny_eval.hue_errors_deg(colours, colour_copies)
    return {
        "colours_mae": round(tiny_eval.mean_abs_error(colours, colour_copies), 2),
        "colours_hue_error_max_deg": round(float(hue.max()), 1),
        "colours_hue_error_mean_deg": round(float(hue.mean()), 1),
        "held_out_photos_mae": round(tiny_eval.mean_abs_error(crops, crop_copies), 2),
        "held_out_photos_by_photo": {
            name: round(tiny_eval.mean_abs_error(crops[names == name], crop_copies[names == name]), 2)
            for name in sorted(set(photos))
        },
        "held_out_photos_baselines": tiny_eval.codec_baselines(crops),
        "world_mae": round(tiny_eval.mean_abs_error(world, vae_round_trip(vae, world)), 2),
    }


def write_report(grid_path: Path, base_model: str = "tiny") -> dict:
    """Measure a committed tiny base (``tiny`` or ``tiny-xl``) and draw the README grid (prompts x seeds)."""
    checkpoint = checkpoints.get_checkpoint(base_model)
    folder = checkpoints.weights_dir() / checkpoint.path
    checkpoints.load_pipeline(checkpoint)  # first load pays for imports; time the second
    t0 = time.perf_counter()
    pipe = checkpoints.load_pipeline(checkpoint)
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    sampling.sample(pipe, tiny_request("a red circle", 0))  # warm-up
    t0 = time.perf_counter()
    for s in range(5):
        sampling.sample(pipe, tiny_request("a red circle", s))
    sample_s = (time.perf_counter() - t0) / 5

    report: dict = {
        "size_mb": round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 2),
        "load_s": round(load_s, 3),
        "sample_s_64px": round(sample_s, 3),
        "defaults": checkpoint.defaults.model_dump(),
    }
    for guidance in sorted({checkpoint.defaults.guidance_scale, 7.5}):
        colours = colour_test(pipe, guidance_scale=guidance)
        shapes = shape_test(pipe, guidance_scale=guidance)
        report[f"guidance_{guidance}"] = {
            "colour_score": sum(r.count(c) for c, r in colours.items()),
            "colours": colours,
            "shape_score": sum(r.count(s) for s, r in shapes.items()),
            "shapes": shapes,
        }
    report["vae_round_trip"] = vae_report(pipe.vae)
    rows = [sampling.sample(pipe, tiny_request(p, 0, num_outputs=len(SEEDS))) for p in GRID_PROMPTS]
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    image_files.grid(rows, labels=list(GRID_PROMPTS)).save(grid_path)
    report["grid"] = str(grid_path)
    return report
