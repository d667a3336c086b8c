"""Sampling a warm pipeline: schedulers by name, seeds, sizes, guidance -> PIL images.

Each output ``i`` is drawn in its own batch-1 pass from a generator seeded ``seed + i``, so
output ``i`` of a batch is exactly the single image of the same request with ``seed + i``, on any
CPU or GPU: batched matrix products are not bit-identical to single ones (the kernels chosen
depend on the batch shape and the processor), so a batched pass could only promise "close".
What that costs against one batched pass is measured in ``lora-studio bench`` (``batch_vs_single``).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Literal, get_args

from pydantic import BaseModel, Field

from lora_core.catalog import families
from lora_core.progress import Progress

SchedulerName = Literal["DPMSolverMultistep", "DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "PNDM", "K_LMS"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(SchedulerName)

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


def sample(
    pipe, request: SamplingRequest, log: Callable[[str], None] | None = None, *, one_pass: bool = False, **pipe_kwargs
) -> list:
    """PIL images for ``request``; with ``log``, progress lines (every 20%); ``pipe_kwargs`` pass through.

    Each output gets its own pass, so that it is exactly what ``seed + i`` alone gives. ``one_pass`` draws
    them all in one batched pass instead: faster where the model is small (``batch_vs_single`` in the
    benchmark), but output ``i`` is then only close to that single image (within 1/255 on the CPUs measured).
    Only for internal draws that no user re-makes one by one, such as a training's prior images.
    """
    import torch

    passes = (
        [(request.seed, request.num_outputs)]
        if one_pass
        else [(request.seed + i, 1) for i in range(request.num_outputs)]
    )
    done = 0
    if log is not None:
        progress = Progress(request.num_inference_steps * len(passes), log, every=0.2, what="sampling")

        def on_step_end(_pipe, i, _t, tensors):
            progress.step(done + i + 1)
            return tensors

        pipe_kwargs.setdefault("callback_on_step_end", on_step_end)

    family = families.of_pipeline(pipe)
    init = inspect.signature(type(pipe).__init__).parameters
    # the pipeline's own settings (SD 1.x ``requires_safety_checker``, SDXL ``force_zeros_for_empty_prompt``), and
    # what loading adds (no watermark)
    settings = {
        **{k: v for k, v in family.pipeline_kwargs.items() if k not in pipe.components},
        **{k: pipe.config[k] for k in init if k in pipe.config and k not in pipe.components},
    }

    def view():
        """Every component shared but a fresh scheduler: the warm pipeline is never mutated, and no scheduler
        state carries from one pass to the next."""
        v = type(pipe)(
            **{**pipe.components, "scheduler": make_scheduler(request.scheduler, pipe.scheduler.config)}, **settings
        )
        v.set_progress_bar_config(disable=True)
        return v

    # The prompt is encoded once, as the pipeline would for one image (prompt and negative each alone at batch 1),
    # and reused by every pass: the same tensors, without re-running the text encoders per output.
    first = view()
    guided = request.guidance_scale > 1 and first.unet.config.time_cond_proj_dim is None
    with torch.no_grad():
        encoded = first.encode_prompt(
            prompt=request.prompt,
            device=first._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=request.negative_prompt or None,
        )
    prompt_inputs = dict(zip(family.prompt_outputs, encoded, strict=True))
    images = []
    for seed, count in passes:
        images += view()(
            **prompt_inputs,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=count,
            generator=[torch.Generator("cpu").manual_seed(seed + k) for k in range(count)],
            **pipe_kwargs,
        ).images
        done += request.num_inference_steps
    return images


class SettingsError(ValueError):
    """Settings that cannot be used; one line per setting, saying what it must be."""

    @classmethod
    def of(cls, error) -> SettingsError:
        """From a pydantic ``ValidationError``, whose own text is a page long and quotes the whole value."""

        def shown(value) -> str:
            text = repr(value)
            return (
                text if len(text) <= 40 else f"{text[:30]}… ({len(value) if hasattr(value, '__len__') else '?'} long)"
            )

        return cls(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {shown(e['input'])})" for e in error.errors())
        )


def resolve_request(defaults, **given) -> SamplingRequest:
    """A full request: fields given as None take the checkpoint's recommended ``defaults``."""
    chosen = {k: v for k, v in given.items() if v is not None}
    merged = {**defaults.model_dump(), "seed": random_seed(), **chosen}
    return SamplingRequest(**merged)
