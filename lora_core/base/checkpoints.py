"""Named base checkpoints: where their weights live, how to load them, one warm per process.

Registry weights are fetched into ``weights/`` when the image is built, never while predicting: a missing
checkpoint is an error that says which command fetches it. A user's own checkpoint (``base_model`` as a URL) is
``own_checkpoints``' job; it becomes a ``Checkpoint`` like these and is loaded warm the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_core.base import families, placement

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
BASE_MODEL_MAX_CHARS = 2048  # a registry name or a checkpoint URL (signed ones are long)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


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
    """One named base model. ``path`` is relative to the weights folder."""

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


def weights_dir() -> Path:
    return Path(os.environ.get("LORA_STUDIO_WEIGHTS", DEFAULT_WEIGHTS_DIR))


OWN_CHECKPOINT_HINT = "or give the https:// URL of your own single-file .safetensors checkpoint (SD 1.x or SDXL)"


def get_checkpoint(name: str) -> Checkpoint:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CheckpointError(
            f"Unknown base model {name[:200]!r}. Choose one of: {', '.join(REGISTRY)}; {OWN_CHECKPOINT_HINT}."
        ) from None


def refuse_pickle(path: Path) -> None:
    """Pickled weights can run code when loaded: only safetensors are accepted."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a pickle-based checkpoint, which can run code when loaded; "
            "convert it to .safetensors first."
        )
    if path.is_file():
        with path.open("rb") as f:
            head = f.read(9)
        if holds_pickle(head):
            raise CheckpointError(f"{path.name} holds pickled data, not safetensors; refusing to load it.")


def holds_pickle(head: bytes) -> bool:
    """Whether a file's first 9 bytes are a pickle's (``\\x80`` then the protocol) or torch's zip container's rather
    than a safetensors header's. That header starts with its length, little-endian, whose first byte is ``\\x80`` in
    one file of 256, so the JSON's ``{`` at byte 8 decides. Nothing here is ever unpickled: this only picks the
    sentence a user reads."""
    if head[8:9] == b"{":
        return False
    return head[:1] == b"\x80" or head[:2] == b"PK"


def resolve(checkpoint: Checkpoint, root: Path | None = None) -> tuple[Path, Path | None]:
    """Local weights path (and config folder for single files), checked to exist and be safe."""
    root = root or weights_dir()
    path = root / checkpoint.path
    fetch_hint = (
        f"put the weights of {checkpoint.source or checkpoint.name} there when building the image "
        "(predictions never download weights)"
    )
    if not path.exists():
        raise CheckpointError(f"Weights for base model {checkpoint.name!r} are not installed at {path}; {fetch_hint}.")
    if checkpoint.layout == "single_file":
        refuse_pickle(path)
        if path.suffix != ".safetensors":  # diffusers reads any other name with torch.load
            raise CheckpointError(f"{path.name} is not named .safetensors; refusing to load it.")
        config = root / (checkpoint.config or "")
        if not (config / "model_index.json").is_file():
            raise CheckpointError(f"Base model {checkpoint.name!r} needs its config folder {config}; {fetch_hint}.")
        return path, config
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"{path} is not a diffusers pipeline folder (no model_index.json); {fetch_hint}.")
    for weights in path.glob("*/*"):
        if weights.suffix in PICKLE_SUFFIXES and not weights.with_suffix(".safetensors").exists():
            raise CheckpointError(f"{weights} is pickled and has no .safetensors twin; refusing to load it.")
    return path, None


def load_pipeline(checkpoint: Checkpoint, root: Path | None = None, dtype=None):
    """The family's pipeline (``StableDiffusionPipeline`` for SD 1.x) for ``checkpoint``, offline, safetensors only."""
    import diffusers
    import torch

    family = checkpoint.family_spec
    pipeline_class = getattr(diffusers, family.pipeline_class)
    path, config = resolve(checkpoint, root)
    common = dict(dtype=dtype or torch.float32, **family.pipeline_kwargs)
    if config is not None:
        return pipeline_class.from_single_file(str(path), config=str(config), local_files_only=True, **common)
    return pipeline_class.from_pretrained(path, use_safetensors=True, local_files_only=True, **common)


def weights_hash(checkpoint: Checkpoint, root: Path | None = None) -> str:
    """First 12 hex digits of the SHA-256 of the base's weights (a single file, or the files of a folder's
    ``Family.hashed_parts`` in that order: UNet, text encoder, VAE for SD 1.x): names the exact base a LoRA was made
    on, and keys what is cached per base (prior images are decoded by the VAE, so a new VAE alone is a new base)."""
    import hashlib

    if checkpoint.sha256:
        return checkpoint.sha256[:12]
    path, _ = resolve(checkpoint, root)
    targets = (
        [path]
        if path.is_file()
        else [f for part in checkpoint.family_spec.hashed_parts for f in sorted((path / part).glob("*.safetensors"))]
    )
    digest = hashlib.sha256()
    for target in targets:
        with target.open("rb") as f:
            while chunk := f.read(8 * 2**20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


class WarmPipelineCache:
    """The process's one warm base pipeline (the only mutable global state of the predictors).

    Holding one keeps memory bounded; asking for another base drops the current one first. It runs on
    ``placement.device()`` in ``placement.dtype()``: float16 on a GPU, float32 on a CPU, unless the deployment says
    otherwise. ``own`` turns a ``base_model`` URL into a ``Checkpoint`` (``own_checkpoints.OwnCheckpoints``);
    without it, only registry names are bases.
    """

    def __init__(self, root: Path | None = None, own: Callable[[str], Checkpoint] | None = None) -> None:
        self.root, self.own = root, own
        self.checkpoint: Checkpoint | None = None  # the warm one
        self.pipeline: Any = None  # a diffusers pipeline once loaded
        self.base_hash = ""

    @property
    def name(self) -> str | None:
        return self.checkpoint.name if self.checkpoint else None

    def checkpoint_of(self, base_model: str | None) -> Checkpoint:
        """The checkpoint ``base_model`` names: a registry name, a URL (fetched, or found in the cache) or, when
        empty, the deployment's default (``LORA_STUDIO_DEFAULT_BASE``)."""
        base_model = base_model or placement.default_base()
        if base_model not in REGISTRY and "://" in base_model[:12]:
            if self.own is None:
                raise CheckpointError("This deployment takes no checkpoint URLs; choose one of: " + ", ".join(REGISTRY))
            return self.own(base_model)
        return get_checkpoint(base_model)

    def get(self, base_model: str | None = None):
        """The warm pipeline of ``base_model`` (as ``checkpoint_of`` reads it)."""
        return self.load(self.checkpoint_of(base_model))

    def load(self, checkpoint: Checkpoint):
        """The warm pipeline of ``checkpoint``, loaded unless it is the warm one (same name, same weights file)."""
        warm = self.checkpoint
        if warm is None or (warm.name, warm.path) != (checkpoint.name, checkpoint.path):
            self.pipeline, self.checkpoint = None, None  # release before loading the next
            device = placement.device()
            self.pipeline = on_device(load_pipeline(checkpoint, self.root, placement.dtype(device)), device)
            self.base_hash = weights_hash(checkpoint, self.root)
            self.pipeline.set_progress_bar_config(disable=True)
            self.checkpoint = checkpoint
        return self.pipeline


def on_device(pipe, device: str):
    """``pipe`` moved to ``device`` (loading is always on the CPU). On a GPU, float32 matmuls (a deployment that
    chose ``LORA_STUDIO_DTYPE=float32``) may use TF32 tensor cores: about twice as fast on Ampere and later, with a
    10-bit mantissa, which sampling and LoRA training tolerate."""
    if device == "cpu":
        return pipe
    import torch

    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return pipe.to(device)
