"""What a generation used, recorded with it so that it can be made again bit for bit, and told when it cannot.

A prediction's inputs do not say what ran: an empty seed is drawn, empty settings come from the base's defaults,
a LoRA URL can point at other bytes tomorrow (or expire), and the base's weights, the libraries and the precision
decide the last bits of every pixel. The predictor records all of it (Cog's prediction metrics carry it to the
service, which returns it as the prediction's ``provenance``); a fork without changes re-runs with the recorded seed,
and ``differences`` says what would keep a re-run from being exact.

Torch-free on purpose: the service reads and compares these without importing torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import lora_core
from lora_core.catalog import registry

LIBRARIES = ("torch", "diffusers", "transformers", "peft")
MAX_LORAS = 8


class LoRAUse(BaseModel):
    url: str = Field(max_length=16384)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    scale: float


class Rerun(BaseModel):
    """A fork's record against its parent's, added by the service: exact, or what differs."""

    of: str = Field(max_length=64)
    exact: bool
    differences: list[str]


class Provenance(BaseModel):
    """Everything that decides a generation's pixels beside its inputs as written."""

    seed: int = Field(ge=0)
    base_model: str = Field(max_length=registry.BASE_MODEL_MAX_CHARS)  # a registry name or a URL
    base_hash: str = Field(max_length=128)
    loras: list[LoRAUse] = Field(max_length=MAX_LORAS)
    settings: dict[str, Any]  # the resolved SamplingRequest: every default filled in, the seed drawn
    versions: dict[str, str]
    device: str = Field(max_length=64)
    machine: str = Field(max_length=200)  # the GPU's name or the CPU's model: another one may round differently
    dtype: str = Field(max_length=32)
    rerun: Rerun | None = None  # a fork's: set by the service, not the predictor


@functools.cache
def versions() -> dict[str, str]:
    """The project's version and its code's hash (the version number does not move with every change), and the
    libraries that compute the pixels (read from their metadata: no import)."""
    found = {"lora_studio": lora_core.__version__, "lora_studio_code": _code_hash()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def compared(parent: Provenance, fork: Provenance, parent_id: str) -> Provenance:
    """``fork`` with its ``rerun`` against ``parent``."""
    found = differences(parent, fork)
    return fork.model_copy(update={"rerun": Rerun(of=parent_id, exact=not found, differences=found)})


def _code_hash() -> str:
    """The first 12 hex digits of a sha256 over lora_core's Python files (paths and bytes), once per process."""
    root = Path(lora_core.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def differences(parent: Provenance, rerun: Provenance) -> list[str]:
    """What keeps ``rerun`` from being a bit-exact re-run of ``parent``, one sentence each (none: it is exact, on the
    same machine type)."""
    found = []
    if rerun.base_hash != parent.base_hash:
        found.append(
            f"the base model's weights differ ({parent.base_model} {parent.base_hash[:12]} then, "
            f"{rerun.base_model} {rerun.base_hash[:12]} now)"
        )
    for name in sorted(set(parent.versions) | set(rerun.versions)):
        then, now = parent.versions.get(name, "absent"), rerun.versions.get(name, "absent")
        if then != now:
            found.append(f"{name} {then} then, {now} now")
    if (parent.device, parent.machine, parent.dtype) != (rerun.device, rerun.machine, rerun.dtype):
        found.append(
            f"ran on {parent.device} ({parent.machine}) in {parent.dtype} then, "
            f"on {rerun.device} ({rerun.machine}) in {rerun.dtype} now"
        )
    then_loras = [(lora.sha256, lora.scale) for lora in parent.loras]
    now_loras = [(lora.sha256, lora.scale) for lora in rerun.loras]
    if then_loras != now_loras:
        found.append("other LoRA files or scales (by sha256)")
    if {**parent.settings, "seed": parent.seed} != {**rerun.settings, "seed": rerun.seed}:
        found.append("other settings or seed")
    return found
