"""Which of a training's checkpoints to use: each one's fidelity to the photos and its bleed into other prompts.

Too few steps and the concept is weak; too many and the LoRA copies the photos and leaks into every prompt. Every
checkpoint draws, on the same fixed seeds:
- the concept's prompt (``a photo of <1>``): **fidelity** is how close those images are to the training photos;
- a few prompts without the concept (the base's ``bleed_prompts``): **bleed** is how far they moved from what the
  base draws on the same seeds, as a share of how far a change of seed moves them (0: untouched; 1: the LoRA
  changes them as much as drawing another picture would).
The recommended checkpoint is the most faithful one whose bleed stays at or under ``BLEED_BOUND``; when none
does, the one that bleeds least. Measures are model-free (``image_measures``) so they hold on any base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, Field

from lora_core import image_measures
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, patching, prompts
from lora_core.progress import Progress

BLEED_BOUND = 0.5  # other prompts may move at most half as far as a change of seed moves them
CONCEPT_SEEDS = 8  # images of the concept per checkpoint (two batched passes)
OTHER_SEEDS = 2  # images of each prompt without the concept (one batched pass each)
COMPARE_SIZE = 64  # photos and drawings are compared at this square size: the subject, not fine detail
MEASURE = (
    "model-free, on the subject (pixels that stand out from the background, at 64x64): fidelity = 1 - "
    "mean(subject colour distance (total variation of RGB histograms), relative error of the subject's size); "
    "bleed = mean pixel change of prompts without the concept against the base on the same seeds, divided by "
    "the change a new seed makes"
)


class Score(BaseModel):
    """One checkpoint's figures (step 0: the base itself, the LoRA at scale 0)."""

    step: int = Field(ge=0)
    fidelity: float  # 0..1, higher is closer to the photos
    subject_colour_distance: float  # 0..1
    subject_size_error: float  # 0..1: |drawn subject area - photos' subject area| / photos' (capped at 1)
    bleed: float = Field(ge=0)  # 0 for the base
    loss: float | None = None  # the training's running loss at that step


class TrainingReport(BaseModel):
    """What ``report.json`` holds, and what the training page shows as a table."""

    measure: str = MEASURE
    bleed_bound: float = BLEED_BOUND
    concept_prompt: str
    other_prompts: list[str]
    seed: int  # concept images use seed..seed+7, other prompts seed..seed+1; a change of seed: ``reseed(seed)``
    base: Score
    checkpoints: list[Score]
    recommended_step: int
    reason: str

    @property
    def recommended(self) -> Score:
        return next(s for s in self.checkpoints if s.step == self.recommended_step)


@dataclass
class Candidate:
    step: int
    lora: binding.BoundLoRA
    loss: float | None = None


def reseed(seed: int) -> int:
    """Another seed, far from ``seed``'s, for measuring how much a change of seed changes a picture."""
    return seed + 100 if seed + 100 + OTHER_SEEDS <= sampling.MAX_SEED else seed - 100


def fidelity(images: list[Image.Image], photos: list[Image.Image]) -> tuple[float, float, float]:
    """(fidelity, subject colour distance, subject size error) of drawn ``images`` against the training
    ``photos``. Whole-picture measures (colour histograms, nearest-photo pixel error) were tried first: they
    follow the background each seed happens to draw, and on the example zip they fell as the stars got better."""
    colour = image_measures.subject_colour_distance(images, photos, COMPARE_SIZE)
    target = image_measures.subject_area(photos, COMPARE_SIZE)
    size = min(1.0, abs(image_measures.subject_area(images, COMPARE_SIZE) - target) / max(target, 1e-6))
    return 1 - (colour + size) / 2, colour, size


def recommend(scores: Sequence[Score], bound: float = BLEED_BOUND) -> tuple[int, str]:
    """The step to use and why: the highest fidelity with bleed <= ``bound`` (the earlier on a tie), else the
    lowest bleed."""
    within = [s for s in scores if s.bleed <= bound]
    if within:
        best = max(within, key=lambda s: (round(s.fidelity, 4), -s.step))
        return best.step, (
            f"the closest to the photos (fidelity {best.fidelity:.3f}) among checkpoints whose bleed stays at or "
            f"under {bound} (this one {best.bleed:.2f})"
        )
    best = min(scores, key=lambda s: s.bleed)
    return best.step, (
        f"every checkpoint bleeds more than {bound}: this one bleeds least ({best.bleed:.2f}); prompts without "
        "<1> will show the concept, so use a lower scale or train with more prior images"
    )


def evaluate(
    pipe,
    checkpoint: checkpoints.Checkpoint,
    candidates: Sequence[Candidate],
    photos: list[Image.Image],
    concept_prompt: str,
    seed: int,
    size: int,
    steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainingReport:
    """Draw and score every candidate (and the base) on the same seeds; ``steps``: sampling steps (None: the
    base's recommended number)."""
    others = list(checkpoint.bleed_prompts)
    seed = min(seed, sampling.MAX_SEED - CONCEPT_SEEDS)  # seed + k stays a seed
    concept_passes = CONCEPT_SEEDS // 4
    passes = concept_passes + 2 * len(others) + len(candidates) * (concept_passes + len(others))
    progress = Progress(passes, log, what="report")
    done = 0

    def draw(prompt: str, first_seed: int, count: int) -> list[Image.Image]:
        nonlocal done
        request = sampling.resolve_request(
            checkpoint.defaults,
            prompt=prompt,
            seed=first_seed,
            num_outputs=count,
            width=size,
            height=size,
            num_inference_steps=steps,
        )
        images = sampling.sample(pipe, request, one_pass=True)  # internal draws: nobody re-makes them one by one
        done += 1
        progress.step(done)
        return images

    def drawn_with(lora: binding.BoundLoRA, scale: float) -> tuple[list[Image.Image], dict[str, list[Image.Image]]]:
        with patching.applied(pipe, [lora], [scale]) as texts:
            text = prompts.expand(concept_prompt, texts)
            concept = [im for first in range(0, CONCEPT_SEEDS, 4) for im in draw(text, seed + first, 4)]
            return concept, {p: draw(p, seed, OTHER_SEEDS) for p in others}

    base_concept, base_others = drawn_with(candidates[-1].lora, 0.0)  # scale 0: the base, bit for bit
    reseeded = {p: draw(p, reseed(seed), OTHER_SEEDS) for p in others}
    seed_change = sum(image_measures.mean_abs_pixel_change(base_others[p], reseeded[p]) for p in others) / len(others)

    def score(step: int, concept: list[Image.Image], drawn: dict[str, list[Image.Image]], loss: float | None):
        f, colour, size_error = fidelity(concept, photos)
        moved = sum(image_measures.mean_abs_pixel_change(base_others[p], drawn[p]) for p in others) / len(others)
        return Score(
            step=step,
            fidelity=round(f, 4),
            subject_colour_distance=round(colour, 4),
            subject_size_error=round(size_error, 4),
            bleed=round(moved / max(seed_change, 1e-6), 4),
            loss=None if loss is None else round(loss, 5),
        )

    base = score(0, base_concept, base_others, None)
    log(f"the base (scale 0): fidelity {base.fidelity:.3f}")
    scores = []
    for c in candidates:
        scores.append(score(c.step, *drawn_with(c.lora, 1.0), c.loss))
        s = scores[-1]
        log(
            f"checkpoint at step {c.step}: fidelity {s.fidelity:.3f} (subject colours {s.subject_colour_distance:.3f}"
            f", size {s.subject_size_error:.3f}), bleed {s.bleed:.2f}"
        )
    step, reason = recommend(scores)
    log(f"recommended: the checkpoint at step {step}, {reason}")
    return TrainingReport(
        concept_prompt=concept_prompt,
        other_prompts=others,
        seed=seed,
        base=base,
        checkpoints=scores,
        recommended_step=step,
        reason=reason,
    )
