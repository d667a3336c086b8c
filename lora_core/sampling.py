"""Sampling a warm pipeline: schedulers by name, seeds, sizes, guidance -> PIL images.

Each output ``i`` uses its own generator seeded ``seed + i``, so any single image of a
batch can be re-made alone from the recorded seed.
"""

from __future__ import annotations

import random
from typing import Callable, Literal

from pydantic import BaseModel, Field

from .progress import Progress

SchedulerName = Literal["DPMSolverMultistep", "DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "PNDM", "K_LMS"]
SCHEDULER_NAMES: tuple[str, ...] = SchedulerName.__args__

# name -> (diffusers class, overrides on top of the checkpoint's own scheduler config)
_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "K_LMS": ("LMSDiscreteScheduler", {}),
}
MAX_SEED = 2**32 - 1
MAX_OUTPUTS = 4
MAX_PROMPT_CHARS = 2000  # also the predictor's Input(max_length=...), so the API refuses longer ones (422)


class SamplingRequest(BaseModel):
    """Fully resolved settings of one generation: what is recorded to re-make it."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    width: int = Field(ge=16, le=1024, multiple_of=8)
    height: int = Field(ge=16, le=1024, multiple_of=8)
    num_inference_steps: int = Field(ge=1, le=150)
    guidance_scale: float = Field(ge=0.0, le=30.0, allow_inf_nan=False)
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS)
    seed: int = Field(ge=0, le=MAX_SEED)
    scheduler: SchedulerName = "DPMSolverMultistep"


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def make_scheduler(name: str, base_config):
    """A scheduler of kind ``name`` sharing the checkpoint's training noise schedule."""
    import diffusers

    if name not in _SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")
    cls_name, overrides = _SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def sample(pipe, request: SamplingRequest, log: Callable[[str], None] | None = None, **pipe_kwargs) -> list:
    """PIL images for ``request``; with ``log``, progress lines (every 20%); ``pipe_kwargs`` pass through."""
    import torch

    if log is not None:
        progress = Progress(request.num_inference_steps, log, every=0.2, what="sampling")

        def on_step_end(_pipe, i, _t, tensors):
            progress.step(i + 1)
            return tensors

        pipe_kwargs.setdefault("callback_on_step_end", on_step_end)

    # A view sharing every component but the scheduler: the warm pipeline is never mutated.
    view = type(pipe)(**{**pipe.components, "scheduler": make_scheduler(request.scheduler, pipe.scheduler.config)},
                      requires_safety_checker=False)
    view.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.num_outputs)]
    result = view(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        width=request.width,
        height=request.height,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.num_outputs,
        generator=generators,
        **pipe_kwargs,
    )
    return result.images


class SettingsError(ValueError):
    """Settings that cannot be used; one line per setting, saying what it must be."""

    @classmethod
    def of(cls, error) -> "SettingsError":
        """From a pydantic ``ValidationError``, whose own text is a page long and quotes the whole value."""
        def shown(value) -> str:
            text = repr(value)
            return text if len(text) <= 40 else f"{text[:30]}… ({len(value) if hasattr(value, '__len__') else '?'} long)"
        return cls("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {shown(e['input'])})"
                             for e in error.errors()))


def resolve_request(defaults, **given) -> SamplingRequest:
    """A full request: fields given as None take the checkpoint's recommended ``defaults``."""
    chosen = {k: v for k, v in given.items() if v is not None}
    merged = {**defaults.model_dump(), "seed": random_seed(), **chosen}
    return SamplingRequest(**merged)
