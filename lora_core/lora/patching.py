"""Applying bound LoRAs with scales to the warm pipeline, and removing them afterwards.

While the block runs, each patched layer computes with ``W + sum(scale * alpha / rank * up @ down)`` (the
computation of PEFT's and kohya's LoRA layers, merged): sampling then costs what the bare base costs, where forward
hooks on every layer cost 1.3-1.7x on the tiny base and a thousand small kernels per UNet call on a GPU.

The original weight is never written. Entering writes ``W + delta`` into a second buffer of the layer (one
``addmm`` per layer for all its LoRAs together, reading W once) and points the layer's parameter at it; leaving
points the parameter back at the original tensor. So the base is the original bit for bit after every prediction,
whether it succeeded, failed or was cancelled, and restoring costs nothing: no copy, on a CPU or a GPU. The
buffers cost memory once (the patchable layers only), never a reload. A buffer keeps what it holds after the
block: entering again with the same LoRAs at the same scales (a user's next batch) merges nothing. Measured at
SD-1.5 size on a 2-core CPU (``bench lora``, a swap against diffusers' unload + load in the same run): 0.19-0.25x,
where copying back from a pristine clone and merging each LoRA in place took 0.27x.

Hooks remain only where merging cannot give the same computation: a grouped convolution, or a convolution LoRA
whose up-projection is not 1x1. The token embeddings go into reserved slot rows, zeroed afterwards.

The scale moves the LoRA and its token embeddings alike (embeddings from the init word's
towards the trained ones), so 0.5 is half-way and 1 reproduces the training photos. At
scale 0 the LoRA is not applied at all: its ``<k>`` reads as its init word.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from lora_core.catalog import families
from lora_core.lora import token_slots
from lora_core.lora.binding import BoundLoRA

Delta = tuple[torch.Tensor, torch.Tensor, float]  # down, up, scale * alpha / rank


def _linear_hook(deltas: list[Delta], module, args, output):
    x = args[0]
    for down, up, factor in deltas:
        output = output + F.linear(F.linear(x, down), up) * factor
    return output


def _conv_hook(deltas: list[Delta], module, args, output):
    x = args[0]
    for down, up, factor in deltas:
        hidden = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)
        output = output + F.conv2d(hidden, up) * factor
    return output


def _scaled_embeddings(
    pipe, family: families.Family, adapter: BoundLoRA, encoder: str, embeddings: torch.Tensor, scale: float
) -> torch.Tensor:
    """init + scale * (trained - init), init being the init word's mean embedding in ``encoder``'s table (files
    without an init word: the trained vectors in full)."""
    if not adapter.init_word:
        return embeddings
    ids = getattr(pipe, family.tokenizer_of(encoder))(adapter.init_word, add_special_tokens=False).input_ids
    table = getattr(pipe, encoder).get_input_embeddings().weight
    init = table[ids].detach().mean(dim=0).to(embeddings.dtype)
    return init + scale * (embeddings - init)


@contextlib.contextmanager
def applied(pipe, adapters: list[BoundLoRA], scales: list[float], *, merge_layers: bool = True):
    """Within the block, ``pipe`` draws with ``adapters`` at ``scales``; yields the text each ``<k>`` becomes.
    ``merge_layers=False`` runs every layer's LoRAs as hooks, the unfused computation of PEFT's layers: the
    benchmark's baseline for merging."""
    family = families.of_pipeline(pipe)
    deltas: dict[str, list[Delta]] = {}
    texts: list[str] = []
    vectors: dict[str, list[torch.Tensor]] = {}  # per text encoder, in slot order
    slots = 0
    for adapter, scale in zip(adapters, scales, strict=True):
        if scale == 0:
            texts.append(adapter.init_word or adapter.trigger)
            continue
        for path, layer in adapter.layers.items():
            deltas.setdefault(path, []).append((layer.down, layer.up, scale * layer.alpha / layer.rank))
        if not adapter.embeddings:
            texts.append(adapter.trigger)
            continue
        for encoder, rows in adapter.embeddings.items():
            vectors.setdefault(encoder, []).append(_scaled_embeddings(pipe, family, adapter, encoder, rows, scale))
        texts.append("".join(token_slots.SLOT.format(slots + i) for i in range(adapter.token_count)))
        slots += adapter.token_count

    handles: list = []
    slot_ids: token_slots.SlotIds = {}
    try:
        if slots:
            _, slot_ids = token_slots.reserve(pipe, slots)
            token_slots.fill(pipe, slot_ids, {encoder: torch.cat(rows) for encoder, rows in vectors.items()})
        models = {component: getattr(pipe, component) for component in family.lora_components}
        store = _store(pipe)
        restore(pipe)  # what an earlier block could not finish restoring (a cancel landing in its finally)
        with torch.no_grad():
            for path, module_deltas in deltas.items():
                module = store.module(models, path)
                if not (merge_layers and mergeable(module, module_deltas)):
                    hook = _conv_hook if isinstance(module, torch.nn.Conv2d) else _linear_hook
                    handles.append(module.register_forward_hook(partial(hook, module_deltas)))
                    continue
                weight = cast(torch.nn.Parameter, module.weight)
                pristine, buffer = store.buffers_of(path, weight)
                store.merged[path] = weight  # listed first: a cancel after the next line still restores
                if not store.holds(path, module_deltas, weight):
                    store.contents.pop(path, None)  # unlisted first: a merge cut short is done again next time
                    merge(buffer, pristine, module_deltas)
                    store.contents[path] = (module_deltas, _versions(module_deltas))
                weight.data = buffer
                store.pointed[path] = weight._version
        yield texts
    finally:
        restore(pipe)
        for handle in handles:
            handle.remove()
        if slot_ids:
            token_slots.clear(pipe, slot_ids)


def mergeable(module: torch.nn.Module, deltas: list[Delta]) -> bool:
    """Whether ``W + delta`` computes what the hook would: a linear layer, or an ungrouped convolution whose LoRA
    up-projections are 1x1 (the down-projection carries the layer's kernel, stride and padding)."""
    if isinstance(module, torch.nn.Linear):
        return True
    return (
        isinstance(module, torch.nn.Conv2d)
        and module.groups == 1
        and all(up.shape[2:] == (1, 1) and down.shape[2:] == module.weight.shape[2:] for down, up, _ in deltas)
    )


def merge(out: torch.Tensor, weight: torch.Tensor, deltas: list[Delta]) -> None:
    """``out = weight + sum(factor * up @ down)`` in the weight's own dtype: the LoRAs' ranks side by side make one
    ``addmm`` for all of them, reading ``weight`` once and writing ``out`` once, with no temporary the size of the
    weight. A convolution's down-projection is its kernel flattened; its up-projection is 1x1 (``mergeable``)."""
    if len(deltas) == 1:  # the common case: no concatenation, the factor as addmm's alpha
        down, up, factor = deltas[0]
        torch.addmm(weight.flatten(1), up.flatten(1), down.flatten(1), alpha=factor, out=out.view(out.shape[0], -1))
        return
    ups = torch.cat([up.flatten(1) * factor for _, up, factor in deltas], dim=1)
    downs = torch.cat([down.flatten(1) for down, _, _ in deltas], dim=0)
    torch.addmm(weight.flatten(1), ups, downs, out=out.view(out.shape[0], -1))


@dataclass
class _Store:
    """Kept with the pipeline, per layer a LoRA has touched: its original weight tensor, a buffer of the same
    shape for the merged one and what that buffer holds; and the parameters that point at a merged buffer now."""

    pristine: dict[str, torch.Tensor] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    contents: dict[str, tuple[list[Delta], tuple[int, ...]]] = field(default_factory=dict)
    merged: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    pointed: dict[str, int] = field(default_factory=dict)  # a merged parameter's version counter when re-pointed
    restored: dict[str, int] = field(default_factory=dict)  # and when pointed back at its original
    modules: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = field(default_factory=dict)

    def module(self, models: dict[str, torch.nn.Module], path: str) -> torch.nn.Module:
        """The layer at ``path`` ("unet.down_blocks.0…"), looked up once per component model (a swap touches a
        few hundred layers; ``get_submodule`` walks each path)."""
        component, module_path = path.split(".", 1)
        owner, module = self.modules.get(path, (None, None))
        if owner is not models[component] or module is None:
            module = models[component].get_submodule(module_path)
            self.modules[path] = (models[component], module)
        return module

    def holds(self, path: str, deltas: list[Delta], weight: torch.nn.Parameter) -> bool:
        """Whether the layer's buffer already holds ``W + deltas``: the same LoRA tensors (the very objects, kept
        here, unchanged since by their version counters) at the same factors, and no in-place write through the
        parameter since the merge, to the buffer (``restore`` checks) or to the original weight (its counter then
        differs from the one ``restore`` left; torch does not count writes through ``.data``). So a prediction
        with the LoRAs and scales of the one before (a user's next batch) merges nothing."""
        held = self.contents.get(path)
        if held is None or len(held[0]) != len(deltas):
            return False
        same = all(d is d2 and u is u2 and f == f2 for (d, u, f), (d2, u2, f2) in zip(held[0], deltas, strict=True))
        return same and held[1] == _versions(deltas) and weight._version == self.restored.get(path)

    def buffers_of(self, path: str, weight: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        """(the original tensor, the merge buffer) of a layer that is not merged now. A parameter that no longer
        holds the tensor kept (the pipeline was moved to another device or dtype since) starts over."""
        pristine = self.pristine.get(path)
        if pristine is None or not _same_tensor(pristine, weight.data):
            self.contents.pop(path, None)
            # allocated first: one that fails (out of memory, a cancel) leaves no original without its buffer
            buffer = torch.empty_like(weight.data, memory_format=torch.contiguous_format)
            self.pristine[path], self.buffers[path] = weight.data, buffer
        return self.pristine[path], self.buffers[path]


def _versions(deltas: list[Delta]) -> tuple[int, ...]:
    """The version counters (bumped by every in-place write) of a layer's LoRA tensors."""
    return tuple(t._version for down, up, _ in deltas for t in (down, up))


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _store(pipe) -> _Store:
    store = getattr(pipe, "_lora_studio_patching", None)
    if store is None:
        store = _Store()
        pipe._lora_studio_patching = store
    return store


def restore(pipe) -> None:
    """Every merged layer's parameter back on its original tensor; each leaves ``merged`` only once restored, so
    an interruption here leaves the rest for the next call."""
    store = _store(pipe)
    for path in list(store.merged):
        param = store.merged[path]
        if param._version != store.pointed.pop(path, None):  # written to in the block, or never re-pointed
            store.contents.pop(path, None)
        param.data = store.pristine[path]
        store.restored[path] = param._version
        del store.merged[path]
