"""Base checkpoints on disk: where their weights live, how to load them, one warm per process.

The registry itself is data (``catalog.registry``), re-exported here for the code that loads what it names.
Registry weights are fetched into ``weights/`` when the image is built, never while predicting: a missing
checkpoint is an error that says which command fetches it. A user's own checkpoint (``base_model`` as a URL or hub
id) is ``own_checkpoints``' job; it becomes a ``Checkpoint`` like these and is loaded warm the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_core.base import placement
from lora_core.catalog.registry import (
    BASE_MODEL_MAX_CHARS as BASE_MODEL_MAX_CHARS,
    OWN_CHECKPOINT_HINT as OWN_CHECKPOINT_HINT,
    REGISTRY as REGISTRY,
    Checkpoint as Checkpoint,
    CheckpointError as CheckpointError,
    SamplingDefaults as SamplingDefaults,
    get_checkpoint as get_checkpoint,
    is_hub_id as is_hub_id,
    split_hub_id as split_hub_id,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def weights_dir() -> Path:
    return Path(os.environ.get("LORA_STUDIO_WEIGHTS", DEFAULT_WEIGHTS_DIR))


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
        """The checkpoint ``base_model`` names: a registry name, a URL or hub id (fetched, or found in the cache) or,
        when empty, the deployment's default (``LORA_STUDIO_DEFAULT_BASE``)."""
        base_model = base_model or placement.default_base()
        if base_model not in REGISTRY and ("://" in base_model[:12] or is_hub_id(base_model)):
            if self.own is None:
                raise CheckpointError("This deployment takes no own checkpoints; choose one of: " + ", ".join(REGISTRY))
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
