"""Where the warm pipeline runs, in which precision, and which base a prediction gets when it names none.

One reading of ``LORA_STUDIO_DEVICE``, ``LORA_STUDIO_DTYPE`` and ``LORA_STUDIO_DEFAULT_BASE``, checked at a
predictor's start (a bad value stops the worker with the variable's name, not a prediction later).

Precision follows the field: on a GPU the base samples in float16, about twice as fast as float32 and half
the memory, as diffusers' and Replicate's SD-1.5 models do; training keeps its own parameters in float32 under
autocast (``training.trainer``). On a CPU float32 is the default: CPU half-precision kernels are slow or
missing, and bfloat16 is there for machines whose CPU has bf16 instructions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings

from lora_core.env_settings import PREFIXED, read_env

if TYPE_CHECKING:
    import torch

DtypeName = Literal["auto", "float16", "bfloat16", "float32"]
CPU_DEFAULT_BASE = "tiny"  # the embedded base: what a machine without a GPU can train and sample


class PlacementEnv(BaseSettings):
    """``LORA_STUDIO_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``; empty: the GPU when torch sees one),
    ``LORA_STUDIO_DTYPE`` (``auto``: float16 on a GPU, float32 on a CPU) and ``LORA_STUDIO_DEFAULT_BASE`` (the
    base of predictions that leave ``base_model`` empty; the GPU images set ``sd-1.5``)."""

    model_config = PREFIXED
    device: str = ""
    dtype: DtypeName = "auto"
    default_base: str = CPU_DEFAULT_BASE

    @field_validator("default_base")
    @classmethod
    def _known(cls, name: str) -> str:
        from lora_core.base.checkpoints import REGISTRY

        if name not in REGISTRY:
            raise ValueError(f"not a base model; choose one of {', '.join(REGISTRY)}")
        return name


class PlacementError(ValueError):
    """The deployment asks for a device this machine does not have; the message says what to change."""


def settings() -> PlacementEnv:
    return read_env(PlacementEnv)


def device() -> str:
    """``LORA_STUDIO_DEVICE`` if set, else the GPU when torch sees one (a Cog image on a GPU host), else the CPU.
    Nothing else chooses a device: code that makes tensors follows the pipeline's own."""
    import torch

    wanted = settings().device.strip()
    if not wanted:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise PlacementError(
            f"LORA_STUDIO_DEVICE={wanted} but torch {torch.__version__} sees no CUDA GPU; run the "
            "container with GPUs (docker run --gpus all) or unset LORA_STUDIO_DEVICE."
        )
    return wanted


def dtype(on: str) -> torch.dtype:
    """The base's dtype on device ``on``: ``LORA_STUDIO_DTYPE``, where ``auto`` is float16 on CUDA, float32
    elsewhere."""
    import torch

    name = settings().dtype
    if name == "auto":
        name = "float16" if on.startswith("cuda") else "float32"
    return getattr(torch, name)


def default_base() -> str:
    return settings().default_base


def machine(on: str) -> str:
    """What computes on device ``on``, as a re-run must match it to give the same bits: the GPU's name, or the CPU's
    model (two CPU makes rounded a pixel differently here)."""
    if on.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(on))
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()
