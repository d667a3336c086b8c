"""The named base models (the registry) and what a ``base_model`` input may be: data, no torch, no files.

The predictors, the trainers, the weights fetcher and the service (its form's choices and its check of a misspelt
name before queueing) read the same entries. Where their weights live and how they load is ``base.checkpoints``'.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_core.catalog import families

BASE_MODEL_MAX_CHARS = 2048  # a registry name, a checkpoint URL (signed ones are long) or a hub id


class CheckpointError(ValueError):
    """A base checkpoint cannot be used; the message says what to do."""


class SamplingDefaults(BaseModel):
    """What a checkpoint samples best with; predictors use these as their defaults."""

    model_config = ConfigDict(frozen=True)
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float


class Checkpoint(BaseModel):
    """One named base model. ``path`` is relative to the weights folder (absolute for a user's own checkpoint)."""

    model_config = ConfigDict(frozen=True)
    name: str
    description: str
    family: families.FamilyName = "sd-1"  # a key of families.FAMILIES
    layout: Literal["diffusers", "single_file"]
    path: str
    config: str | None = Field(None, description="single_file only: a local diffusers folder with the configs")
    source: str | None = Field(None, description="where `lora-studio weights fetch` gets it (hub id or URL)")
    sha256: str | None = Field(None, description="a single file's SHA-256 when known (a fetched one): not read twice")
    defaults: SamplingDefaults
    train_lr_scale: float = Field(
        1.0, description="multiplies the task presets' learning rates (tiny models need more)"
    )
    train_min_snr_gamma: float | None = Field(
        None, description="replaces the task presets' Min-SNR gamma (None: the preset's)"
    )
    train_batch_size: int = 2
    train_resnets: bool = Field(False, description="LoRA on ResNet convolutions too (LoCon)")
    prior_images: int = Field(48, description="how many images the base draws for prior preservation")
    prior_prompts: tuple[str, ...] = Field(
        (
            "a photo of a person",
            "a photo of a dog",
            "a landscape painting",
            "a city street at night",
            "a bowl of fruit on a table",
            "a portrait of a woman",
            "a red car",
            "a watercolor of flowers",
        ),
        description="what the base draws before training is mixed into training, so other prompts keep it",
    )
    bleed_prompts: tuple[str, ...] = Field(
        ("a photo of a man in a park", "a house by a lake", "a cat sleeping on a sofa"),
        description="prompts without the concept, none of them a prior prompt, that a training's report draws "
        "with each checkpoint to measure how far the LoRA leaks into them",
    )

    @property
    def family_spec(self) -> families.Family:
        """What the family's pipelines are made of (``families.FAMILIES``)."""
        return families.FAMILIES[self.family]


_SD15 = SamplingDefaults(width=512, height=512, num_inference_steps=30, guidance_scale=7.5)
# SDXL's native 1024 px; 30 steps and guidance 7 as A1111's and ComfyUI's SDXL workflows start (cog-sdxl: 50, 7.5)
_SDXL = SamplingDefaults(width=1024, height=1024, num_inference_steps=30, guidance_scale=7.0)

# What both embedded tiny bases (SD 1.x and SDXL, one world) sample and train with: one source for both.
_TINY_WORLD: dict[str, Any] = dict(
    layout="diffusers",
    defaults=SamplingDefaults(width=64, height=64, num_inference_steps=20, guidance_scale=3.0),
    train_lr_scale=10.0,
    # a concept's new colours: 0.56/0.45 of the gap (object/style) at 1, 0.51/0.34 at 5 (issue 21)
    train_min_snr_gamma=1.0,
    train_batch_size=8,
    train_resnets=True,
    prior_images=96,
    prior_prompts=(
        "a red circle",
        "a blue square on a white background",
        "a green triangle",
        "a yellow star on a black background",
        "a photo of an orange circle",
        "a purple square on a gray background",
        "a red and white striped pattern",
        "a blue circle and a yellow triangle",
    ),
    bleed_prompts=(
        "a green square",
        "an orange triangle on a black background",
        "a yellow circle on a blue striped background",
    ),
)

REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in [
        Checkpoint(
            name="tiny",
            description="Embedded tiny SD-1.x model of coloured shapes and patterns (CPU, 64x64)",
            path="tiny-sd",
            **_TINY_WORLD,
        ),
        Checkpoint(
            name="tiny-xl",
            description="Embedded tiny SDXL model of the same world (two text encoders, size conditioning; CPU, 64x64)",
            family="sdxl",
            path="tiny-sdxl",
            **_TINY_WORLD,
        ),
        Checkpoint(
            name="sd-1.5",
            description="Stable Diffusion 1.5",
            layout="diffusers",
            path="sd-1.5",
            source="stable-diffusion-v1-5/stable-diffusion-v1-5",
            defaults=_SD15,
        ),
        Checkpoint(
            name="realistic-vision-v1.3",
            description="Realistic Vision 1.3 (photographic SD-1.5 fine-tune)",
            layout="single_file",
            path="realistic-vision-v1.3.safetensors",
            config="sd-1.5",
            source="SG161222/Realistic_Vision_V1.3",
            defaults=_SD15,
        ),
        Checkpoint(
            name="inkpunk",
            description="Inkpunk Diffusion (SD-1.5 fine-tune)",
            layout="diffusers",
            path="inkpunk",
            source="Envvi/Inkpunk-Diffusion",
            defaults=_SD15,
        ),
        Checkpoint(
            name="gta5",
            description="GTA5 Artwork Diffusion (SD-1.5 fine-tune)",
            layout="diffusers",
            path="gta5",
            source="ItsJayQz/GTA5_Artwork_Diffusion",
            defaults=_SD15,
        ),
        Checkpoint(
            name="vintedois",
            description="Vintedois Diffusion 0.1 (SD-1.5 fine-tune)",
            layout="diffusers",
            path="vintedois",
            source="22h/vintedois-diffusion-v0-1",
            defaults=_SD15,
        ),
        Checkpoint(
            name="sdxl-1.0",
            description="Stable Diffusion XL 1.0 (base)",
            family="sdxl",
            layout="diffusers",
            path="sdxl-1.0",
            source="stabilityai/stable-diffusion-xl-base-1.0",
            defaults=_SDXL,
        ),
        Checkpoint(
            name="realvis-xl-4.0",
            description="RealVisXL 4.0 (photographic SDXL fine-tune)",
            family="sdxl",
            layout="diffusers",
            path="realvis-xl-4.0",
            source="SG161222/RealVisXL_V4.0",
            defaults=_SDXL,
        ),
        Checkpoint(
            name="dreamshaper-xl-1.0",
            description="DreamShaper XL 1.0 (artistic SDXL fine-tune)",
            family="sdxl",
            layout="diffusers",
            path="dreamshaper-xl-1.0",
            source="Lykon/dreamshaper-xl-1-0",
            defaults=_SDXL,
        ),
    ]
}


OWN_CHECKPOINT_HINT = (
    "or give your own SD 1.x or SDXL checkpoint: the https:// URL of a single .safetensors file, "
    "or a hub id (owner/name, or owner/name@revision for a branch, tag or commit)"
)
# huggingface_hub's rule for the repository (checked again when listing), then an optional @revision: a branch, a tag,
# a commit or a pull request's ref (refs/pr/1), as ``revision=`` takes them. huggingface_hub quotes it whole in the
# listing's URL; the files are then asked for by the commit the listing names, and the cache's folders are named by it.
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(@(?P<revision>\w[\w./-]{0,99}))?")


def is_hub_id(value: str) -> bool:
    """``owner/name`` or ``owner/name@revision``, as a hub repository is named (no registry name has a slash)."""
    found = _HUB_ID.fullmatch(value)
    return found is not None and ".." not in value and len(found["repo"]) <= 96


def split_hub_id(value: str) -> tuple[str, str]:
    """``owner/name@revision`` as (repository, revision); without ``@``, the revision is ``main``."""
    repo, _, revision = value.partition("@")
    return repo, revision or "main"


def get_checkpoint(name: str) -> Checkpoint:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CheckpointError(
            f"Unknown base model {name[:200]!r}. Choose one of: {', '.join(REGISTRY)}; {OWN_CHECKPOINT_HINT}."
        ) from None
