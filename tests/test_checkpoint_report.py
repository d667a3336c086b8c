"""The rule that picks a training's checkpoint, the steps it keeps, and the fidelity measure, on data with known
answers (the training that produces real scores is in test_predict_train)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lora_core.training import checkpoint_report as report, trainer


def _score(step: int, fidelity: float, bleed: float) -> report.Score:
    return report.Score(step=step, fidelity=fidelity, subject_colour_distance=0, subject_size_error=0, bleed=bleed)


def test_the_most_faithful_checkpoint_within_the_bleed_bound_is_recommended():
    scores = [_score(100, 0.60, 0.10), _score(200, 0.70, 0.30), _score(300, 0.80, 0.55), _score(400, 0.85, 0.90)]
    step, reason = report.recommend(scores, bound=0.5)
    assert step == 200 and "0.5" in reason
    assert report.recommend(scores, bound=1.0)[0] == 400
    # a tie in fidelity goes to the earlier checkpoint (less training, less copying)
    assert report.recommend([_score(100, 0.7, 0.1), _score(200, 0.7, 0.2)], bound=0.5)[0] == 100


def test_when_every_checkpoint_bleeds_the_least_bleeding_one_is_recommended_and_the_reason_says_so():
    step, reason = report.recommend([_score(100, 0.6, 0.8), _score(200, 0.9, 0.7), _score(300, 0.95, 1.2)], 0.5)
    assert step == 200 and "every checkpoint bleeds more than 0.5" in reason


def test_checkpoints_are_spread_evenly_and_end_on_the_last_step():
    assert trainer.checkpoint_steps(800, 4) == (200, 400, 600, 800)
    assert trainer.checkpoint_steps(300, 1) == (300,)
    assert trainer.checkpoint_steps(10, 3) == (3, 7, 10)
    assert trainer.checkpoint_steps(2, 4) == (1, 2)  # fewer steps than checkpoints: each step once


def _disc(colour, background, radius: int, centre=(32, 32), size: int = 64) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius**2
    return Image.fromarray(np.where(inside[..., None], colour, background).astype(np.uint8))


def test_fidelity_follows_the_subject_not_the_background():
    purple, green = (130, 50, 190), (40, 180, 60)
    photos = [
        _disc(purple, bg, 14, (30 + i, 34 - i)) for i, bg in enumerate([(250, 250, 245), (20, 20, 30), (128, 128, 128)])
    ]
    same, colour, size = report.fidelity(photos, photos)
    assert same == 1.0 and colour == 0.0 and size == 0.0
    elsewhere = report.fidelity([_disc(purple, (90, 120, 100), 14, (20, 40))], photos)[0]  # another background
    wrong_colour = report.fidelity([_disc(green, (250, 250, 245), 14)], photos)[0]
    too_small = report.fidelity([_disc(purple, (250, 250, 245), 5)], photos)[0]
    nothing = report.fidelity([Image.new("RGB", (64, 64), (250, 250, 245))], photos)[0]
    assert elsewhere > 0.95 and max(wrong_colour, too_small) < elsewhere - 0.2 and nothing == 0.0
    # a drawing at another size is compared at the measure's size, not refused
    assert report.fidelity([photos[0].resize((128, 128))], photos)[0] > 0.9


def test_another_seed_for_the_seed_change_stays_in_range():
    assert report.reseed(5) == 105
    assert report.reseed(2**32 - 1) == 2**32 - 101
