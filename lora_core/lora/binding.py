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

from lora_core.base import checkpoints
from lora_core.catalog import families
from lora_core.env_settings import PREFIXED, read_env
from lora_core.lora.lora_file import LoRAFileError, declared_family, family_of
from lora_core.lora.lora_formats import Layer, LayerMismatch, ModuleTable, UnsupportedLayout, read_contents


@dataclass
class BoundLoRA:
    """One LoRA, ready for ``patching.applied`` on the base it was bound to."""

    layers: dict[str, Layer]  # "unet.<module>" / "text_encoder.<module>" -> weights on the base's device
    embeddings: dict[str, torch.Tensor]  # text encoder -> (tokens, its hidden) on the base's device; {}: none
    init_word: str  # what ``<k>`` reads as at scale 0 (and where the embeddings start from)
    trigger: str  # trigger words from the metadata, for files without embeddings
    name: str
    layout: str

    @property
    def nbytes(self) -> int:
        tensors = [t for layer in self.layers.values() for t in (layer.down, layer.up)]
        tensors += list(self.embeddings.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def token_count(self) -> int:
        """How many tokens ``<k>`` stands for (0: a file without embeddings)."""
        return len(next(iter(self.embeddings.values()))) if self.embeddings else 0


def module_table(pipe) -> ModuleTable:
    """The modules of the pipe's family's LoRA components as plain data, for ``lora_formats``."""
    family = families.of_pipeline(pipe)
    classes, shapes = {}, {}
    for component in family.lora_components:
        for path, module in getattr(pipe, component).named_modules():
            key = f"{component}.{path}"
            classes[key] = type(module).__name__
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                shapes[key] = tuple(module.weight.shape)
    return ModuleTable(classes, shapes, family.name)


def describe_base(pipe, label: str) -> str:
    """``label`` with the family and the sizes that decide which LoRAs fit."""
    family = families.of_pipeline(pipe)
    widths = " and ".join(str(getattr(pipe, e).config.hidden_size) for e in family.text_encoders)
    return (
        f"{label} ({family.title}, UNet channels {tuple(pipe.unet.config.block_out_channels)}, "
        f"text width{'s' if len(family.text_encoders) > 1 else ''} {widths})"
    )


def bind(
    pipe,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    name: str = "LoRA",
    base_label: str = "this base",
    table: ModuleTable | None = None,
) -> BoundLoRA:
    """An ``BoundLoRA`` for ``pipe`` from a file's tensors; ``LoRAFileError`` (naming both bases) if it does not fit:
    its metadata names another family, or its layers or token vectors are not the base's."""
    family = families.of_pipeline(pipe)
    declared = declared_family(metadata)
    if declared is not None and declared.name != family.name:
        raise LoRAFileError(
            f"{name} does not fit this base model: it was made for {declared.title}{_made_on(metadata)}, and the "
            f"base is {describe_base(pipe, base_label)}. Use it with a base of its own family"
            f"{_bases_of(declared)}."
        )
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
    _check_embeddings(pipe, family, contents.embeddings, name, metadata)
    # diffusers' ``model.device``/``.dtype`` walk every module (~3 ms on SD-1.5's UNet): ask once per component
    placement = {c: (w.device, w.dtype) for c in family.lora_components for w in [next(getattr(pipe, c).parameters())]}
    layers = {}
    for path, layer in contents.layers.items():
        device, dtype = placement[path.split(".", 1)[0]]
        layers[path] = Layer(layer.down.to(device, dtype), layer.up.to(device, dtype), layer.alpha)
    embeddings = {encoder: rows.to(*placement[encoder]) for encoder, rows in contents.embeddings.items()}
    return BoundLoRA(
        layers,
        embeddings,
        metadata.get("lora_studio.init_word", ""),
        "" if embeddings else metadata.get("modelspec.trigger_phrase", ""),
        name,
        contents.layout,
    )


def _check_embeddings(
    pipe, family: families.Family, embeddings: dict[str, torch.Tensor], name: str, metadata: dict[str, str]
) -> None:
    """Token vectors for exactly the base's text encoders, each as wide as its table; else one sentence."""
    if not embeddings:
        return
    made = f"it was made for {family_of(metadata)}{_made_on(metadata)}"
    if set(embeddings) != set(family.text_encoders):
        count = len(embeddings)
        raise LoRAFileError(
            f"{name} does not fit this base model: its token embeddings are for {count} text encoder"
            f"{'s' if count > 1 else ''}, and the base ({family.title}) has {len(family.text_encoders)}; {made}."
        )
    for encoder, rows in embeddings.items():
        width = getattr(pipe, encoder).get_input_embeddings().weight.shape[-1]
        if rows.shape[-1] != width:
            which = "" if len(embeddings) == 1 else f" for {encoder}"
            raise LoRAFileError(
                f"{name} does not fit this base model: its token embeddings{which} are {rows.shape[-1]} wide, "
                f"the base's text encoder {width}; {made}."
            )


def _bases_of(family: families.Family) -> str:
    names = [c.name for c in checkpoints.REGISTRY.values() if c.family == family.name]
    return f" (here: {', '.join(names)})" if names else ""


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
