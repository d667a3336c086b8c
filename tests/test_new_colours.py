"""A LoRA on the tiny base learns a concept in colours and a pattern its world never has (issue 21: the goals
not met are stated, with the figures measured, where they are tested).

The concept is ours, not the world's: teal and hot-pink zigzags with a lime disc (hues 180°, 322° and 84°; the
world paints at 0°, 31°, 50°, 129°, 225° and 278°, and has stripes, dots, checks and gradients but no zigzags).
A preset trains on it with its default settings through predict_train.py. Learning shows against the base,
on every pixel's colour (a soft RGB histogram, not the world's palette): at scale 1 the LoRA's images close part of
the gap from the base's images to the concept's, scale 0 is the base bit for bit, and prompts without the
token move less than a change of seed does. The VAE alone must first carry such colours at all
(``test_the_vae_round_trips_any_colour``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import draw
from lora_core import image_measures
from lora_core.base import checkpoints
from lora_core.lora import binding, lora_file, patching, prompts
from lora_core.tiny import tiny_report, tiny_vae_data, tiny_world

TEAL, PINK, LIME = (0, 170, 170), (240, 60, 170), (150, 220, 30)
SEEDS, OTHER_SEEDS = range(8), range(8, 16)
PROMPTS = {"object": "a photo of <1>", "style": "a picture in the style of <1>"}
OTHER_PROMPTS = ("a red circle", "a blue square on a white background", "a yellow circle on a blue striped background")


def zigzag_disc(seed: int) -> Image.Image:
    """One picture of the concept: zigzag bands of two colours, a disc somewhere on them."""
    rng = np.random.default_rng(seed)
    size = tiny_world.SIZE
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    # Bands of 10-14 px: 2.5-3.5 latent pixels of the 16x16 latents, so the base can draw them at all.
    period, amplitude, phase = rng.uniform(20, 28), rng.uniform(6, 12), rng.uniform(0, 28)
    tooth = np.abs(((x + phase) % period) / period * 2 - 1) * amplitude  # a triangle wave along x
    bands = ((y + tooth) // (period / 2)) % 2 == 0
    picture = np.where(bands[..., None], np.array(TEAL, np.float32), np.array(PINK, np.float32))
    cy, cx, r = rng.uniform(18, size - 18), rng.uniform(18, size - 18), rng.uniform(8, 14)
    picture[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = LIME
    return Image.fromarray(picture.astype(np.uint8))


def concept(n: int = 10, first_seed: int = 300) -> list[Image.Image]:
    return [zigzag_disc(first_seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def round_trip_figures() -> dict:
    """The committed VAE's round-trip figures, measured once for the goal tests below."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    figures = tiny_report.vae_report(pipe.vae)
    ours = np.stack([np.asarray(im) for im in concept(8, first_seed=900)])
    figures["zigzag_mae"] = round(
        float(np.abs(tiny_report.vae_round_trip(pipe.vae, ours).astype(np.float32) - ours).mean()), 2
    )
    print("vae round trip:", json.dumps(figures))
    return figures


def test_the_vae_round_trips_any_colour(round_trip_figures):
    """The VAE alone (encode, decode, no UNet) on flat saturated colours no VAE training saw: issue 21's goals
    (≤ 8/255 per channel, no hue off by more than 15°; the world-only VAE: 23/255 and 69°, measured 3.7 and 8.0°).
    The world's own pictures stay close to the world-only VAE's 5.6/255 (5.7), and the zigzag concept round-trips
    at 17.9/255 (54 on the world-only VAE, 25 on the narrower 16/32/32 VAE of the base before)."""
    figures = round_trip_figures
    assert figures["colours_mae"] <= 8 and figures["colours_hue_error_max_deg"] <= 15, figures
    assert figures["world_mae"] <= 7, figures
    assert figures["zigzag_mae"] <= 22, figures


PHOTOS_NOT_MET = (
    "issue 21, blocked: held-out photo crops round-trip at 12.3/255 (goal 8; the world-only VAE: 22, the 16/32/32 VAE "
    "before: 13.6). chelsea, coffee and brick come back at 8.1-8.8; astronaut, grass and gravel at 15-20, where JPEG "
    "at quality 30 (1.2 KB a crop) is still 11-13. Neither a decoder fine-tuned on photos (12.2) nor a VAE of four "
    "times the width (32/64/128, 2,700 steps: 12.5) came nearer"
)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=PHOTOS_NOT_MET)
def test_the_vae_round_trips_held_out_photos(round_trip_figures):
    figures = round_trip_figures
    assert figures["held_out_photos_mae"] <= 8, figures


def test_the_vae_keeps_more_of_a_photo_than_a_thumbnail_of_as_many_numbers(round_trip_figures):
    """What the goal above is read against, on the same crops: an 18x18 thumbnail (972 numbers, the latents have
    1,024) loses more (13.8/255, the VAE 12.3), and the crops the goal is met on come back near it (chelsea, coffee
    and brick at 8.1-8.8; the mean is the textures')."""
    figures = round_trip_figures
    assert figures["held_out_photos_mae"] < figures["held_out_photos_baselines"]["thumbnail_18"], figures
    assert max(figures["held_out_photos_by_photo"][p] for p in ("chelsea", "coffee", "brick")) <= 10, figures


@pytest.mark.slow
@pytest.mark.parametrize("task", ["object", "style"])
def test_each_preset_learns_a_concept_in_new_colours(task, train_predictor, preset_lora):
    """At scale 1 the LoRA closes at least 0.3 of the colour gap from base to concept (the world-only VAE allowed
    0.03). Issue 21's goal, 0.5, is met for one training seed, not for every one: with the tiny base's Min-SNR
    weighting (gamma 1), object closed 0.56 (seed 0) and 0.34 (seed 1), style 0.45 and 0.35; without it, object
    0.46 and 0.30, style 0.33. The VAE's own copy of the pictures closes 0.70, so the VAE is not what holds them back;
    nor is the UNet's 16x16 level lacking cross-attention (a base rebuilt with it closed 0.18 and 0.21), nor the
    VAE's width (one four times as wide, its copy closing 0.76, gave object 0.38 and style 0.52). The
    presets' 800 steps stop short: at 1600 (without Min-SNR) object closed 0.59 and style 0.45, prompts without the
    token moving 46 and 44 against 58/255 for a change of seed. Without prior preservation style reached 0.38-0.53,
    but prompts without the token moved more than a change of seed (61 against 58/255)."""
    trained = preset_lora(f"zigzag-{task}", concept(), seed=0, task=task)
    pipe = train_predictor.bases.get("tiny")
    lora = binding.bind(pipe, *lora_file.read_lora(trained.lora))
    target, prompt = concept(), PROMPTS[task]

    def with_lora(scale: float, text: str) -> list[Image.Image]:
        with patching.applied(pipe, [lora], [scale]) as texts:
            return draw(pipe, prompts.expand(text, texts) if "<1>" in text else text, SEEDS)

    at = {scale: with_lora(scale, prompt) for scale in (0.0, 1.0)}
    base = draw(pipe, prompt.replace("<1>", lora.init_word), SEEDS)  # scale 0 is the base with the init word
    d0, d1 = (image_measures.rgb_histogram_distance(at[s], target) for s in (0.0, 1.0))
    pictures = np.stack([np.asarray(im) for im in target])
    copies = [Image.fromarray(a) for a in tiny_report.vae_round_trip(pipe.vae, pictures)]
    vae_copy = image_measures.rgb_histogram_distance(copies, target)  # the best any LoRA on this VAE can do
    others = {p: draw(pipe, p, SEEDS) for p in OTHER_PROMPTS}
    seed_change = np.mean(
        [image_measures.mean_abs_pixel_change(others[p], draw(pipe, p, OTHER_SEEDS)) for p in OTHER_PROMPTS]
    )
    lora_change = np.mean([image_measures.mean_abs_pixel_change(others[p], with_lora(1.0, p)) for p in OTHER_PROMPTS])
    result = {
        "task": task,
        "d_scale0": round(d0, 3),
        "d_scale1": round(d1, 3),
        "gap_closed": round(1 - d1 / d0, 3),
        "gap_closed_by_the_vae_alone": round(1 - vae_copy / d0, 3),
        "other_prompts_change": round(float(lora_change), 2),
        "seed_change": round(float(seed_change), 2),
    }
    print("new colours:", json.dumps(result))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(at[0.0], base, strict=True)), result
    assert lora_change < seed_change, result
    assert result["gap_closed"] >= 0.3, result


def test_the_concept_is_not_in_the_world():
    """Its colours are none of the world's (every world hue is ≥ 30° away) and the VAE's data never drew it."""
    import colorsys

    world_hues = [colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for rgb in tiny_world.COLOURS.values()]
    for colour in (TEAL, PINK, LIME):
        hue = colorsys.rgb_to_hsv(*(c / 255 for c in colour))[0] * 360
        assert min(min(abs(hue - w), 360 - abs(hue - w)) for w in world_hues) >= 30, (colour, hue)
    assert not any("zigzag" in f.__name__ for f in tiny_vae_data.SYNTHETIC)
