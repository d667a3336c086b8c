"""LoRA files bound to a warm base: read once, resolved to its modules, kept in a bounded cache.

Binding (reading the layout, matching every layer to a module, moving tensors to the
base's device and dtype) is the slow part of using a LoRA, so it happens once per file
and base; applying a bound ``BoundLoRA`` is then a matter of milliseconds (``patching``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import Field
from pydantic_settings import BaseSettings

from lora_core.base import families
from lora_core.env_settings import PREFIXED, read_env
from lora_core.lora.lora_file import LoRAFileError, family_of
from lora_core.lora.lora_formats import Layer, LayerMismatch, ModuleTable, UnsupportedLayout, read_contents

COMPONENTS = families.SD1.lora_components  # per pipeline family with SDXL (issue 20)


@dataclass
class BoundLoRA:
    """One LoRA, ready for ``patching.applied`` on the base it was bound to."""

    layers: dict[str, Layer]  # "unet.<module>" / "text_encoder.<module>" -> weights on the base's device
    embeddings: torch.Tensor | None  # (tokens, hidden) on the base's device, or None
    init_word: str  # what ``<k>`` reads as at scale 0 (and where the embeddings start from)
    trigger: str  # trigger words from the metadata, for files without embeddings
    name: str
    layout: str

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers.values() for t in (layer.down, layer.up)]
        tensors += [self.embeddings] if self.embeddings is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)


def module_table(pipe) -> ModuleTable:
    """The pipe's UNet and text-encoder modules as plain data, for ``lora_formats``."""
    classes, shapes = {}, {}
    for component in COMPONENTS:
        for path, module in getattr(pipe, component).named_modules():
            key = f"{component}.{path}"
            classes[key] = type(module).__name__
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                shapes[key] = tuple(module.weight.shape)
    return ModuleTable(classes, shapes)


def describe_base(pipe, label: str) -> str:
    """``label`` with the sizes that decide which LoRAs fit."""
    return (
        f"{label} (SD-1.x layout, UNet channels {tuple(pipe.unet.config.block_out_channels)}, "
        f"text width {pipe.text_encoder.config.hidden_size})"
    )


def bind(
    pipe,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    name: str = "LoRA",
    base_label: str = "this base",
    table: ModuleTable | None = None,
) -> BoundLoRA:
    """An ``BoundLoRA`` for ``pipe`` from a file's tensors; ``LoRAFileError`` (naming both bases) if it does not fit."""
    try:
        contents = read_contents(tensors, metadata, table or module_table(pipe))
    except UnsupportedLayout as e:
        raise LoRAFileError(f"{name} cannot be used: {e}.") from None
    except LayerMismatch as e:
        raise LoRAFileError(
            f"{name} does not fit this base model: it was made for {family_of(metadata)}"
            f"{_made_on(metadata)}, and the base is {describe_base(pipe, base_label)}; {e}. "
            "Use it with a base of its own family."
        ) from None
    hidden = pipe.text_encoder.get_input_embeddings().weight
    if contents.embeddings is not None and contents.embeddings.shape[-1] != hidden.shape[-1]:
        raise LoRAFileError(
            f"{name} does not fit this base model: its token embeddings are "
            f"{contents.embeddings.shape[-1]} wide, the base's text encoder {hidden.shape[-1]}; it was "
            f"made for {family_of(metadata)}{_made_on(metadata)}."
        )
    # diffusers' ``model.device``/``.dtype`` walk every module (~3 ms on SD-1.5's UNet): ask once per component
    placement = {c: (w.device, w.dtype) for c in COMPONENTS for w in [next(getattr(pipe, c).parameters())]}
    layers = {}
    for path, layer in contents.layers.items():
        device, dtype = placement[path.split(".", 1)[0]]
        layers[path] = Layer(layer.down.to(device, dtype), layer.up.to(device, dtype), layer.alpha)
    embeddings = None if contents.embeddings is None else contents.embeddings.to(hidden.device, hidden.dtype)
    return BoundLoRA(
        layers,
        embeddings,
        metadata.get("lora_studio.init_word", ""),
        metadata.get("modelspec.trigger_phrase", "") if embeddings is None else "",
        name,
        contents.layout,
    )


def _made_on(metadata: dict[str, str]) -> str:
    base = metadata.get("lora_studio.base_model") or metadata.get("ss_sd_model_name")
    return f" (trained on {base})" if base else ""


class CacheEnv(BaseSettings):
    """The bound LoRAs' memory budget, from the environment (pydantic-settings checks it at start)."""

    model_config = PREFIXED
    adapter_cache_mb: float = Field(512, ge=0)


class BindingCache:
    """Bound adapters by (file sha256, base), least recently used first out, bounded in bytes.

    A LoRA used again on the same warm base skips reading and binding entirely.
    """

    @classmethod
    def from_env(cls) -> BindingCache:
        """LORA_STUDIO_ADAPTER_CACHE_MB bounds it (``CacheEnv``)."""
        return cls(int(read_env(CacheEnv).adapter_cache_mb * 2**20))

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], BoundLoRA] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, sha256: str, base: str, make: Callable[[], BoundLoRA]) -> BoundLoRA:
        key = (sha256, base)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        adapter = make()
        with self._lock:
            self.misses += 1
            self._items[key] = adapter
            while len(self._items) > 1 and sum(a.nbytes for a in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
        return adapter

    def __len__(self) -> int:
        return len(self._items)
