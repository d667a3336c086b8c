"""Applying bound LoRAs with scales to the warm pipeline, and removing them afterwards.

While the block runs, each patched layer's weight holds ``W + sum(scale * alpha / rank * up @ down)`` (the
computation of PEFT's and kohya's LoRA layers, merged): sampling then costs what the bare base costs, where forward
hooks on every layer cost 1.3-1.7x on the tiny base and a thousand small kernels per UNet call on a GPU. Leaving
the block copies every touched weight back from a pristine copy of that layer, taken the first time a LoRA touched
it and kept with the pipeline: the base is the original bit for bit after every prediction, whether it succeeded,
failed or was cancelled. The copies cost memory once (the patchable layers only), never a reload.

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

import torch
import torch.nn.functional as F

from lora_core.lora import token_slots
from lora_core.lora.binding import COMPONENTS, BoundLoRA

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


def _scaled_embeddings(pipe, adapter: BoundLoRA, embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """init + scale * (trained - init), init being the init word's mean embedding (files without one: full)."""
    if not adapter.init_word:
        return embeddings
    ids = pipe.tokenizer(adapter.init_word, add_special_tokens=False).input_ids
    table = pipe.text_encoder.get_input_embeddings().weight
    init = table[ids].detach().mean(dim=0).to(embeddings.dtype)
    return init + scale * (embeddings - init)


@contextlib.contextmanager
def applied(pipe, adapters: list[BoundLoRA], scales: list[float]):
    """Within the block, ``pipe`` draws with ``adapters`` at ``scales``; yields the text each ``<k>`` becomes."""
    deltas: dict[str, list[Delta]] = {}
    texts: list[str] = []
    vectors: list[torch.Tensor] = []
    for adapter, scale in zip(adapters, scales, strict=True):
        if scale == 0:
            texts.append(adapter.init_word or adapter.trigger)
            continue
        for path, layer in adapter.layers.items():
            deltas.setdefault(path, []).append((layer.down, layer.up, scale * layer.alpha / layer.rank))
        if adapter.embeddings is None:
            texts.append(adapter.trigger)
            continue
        first = sum(len(v) for v in vectors)
        vectors.append(_scaled_embeddings(pipe, adapter, adapter.embeddings, scale))
        texts.append("".join(token_slots.SLOT.format(first + i) for i in range(len(vectors[-1]))))

    handles: list = []
    slot_ids: list[int] = []
    try:
        if vectors:
            _, slot_ids = token_slots.reserve(pipe, sum(len(v) for v in vectors))
            token_slots.fill(pipe, slot_ids, torch.cat(vectors))
        models = {component: getattr(pipe, component) for component in COMPONENTS}
        store = _store(pipe)
        restore(pipe)  # what an earlier block could not finish restoring (a cancel landing in its finally)
        with torch.no_grad():
            for path, module_deltas in deltas.items():
                component, module_path = path.split(".", 1)
                module = models[component].get_submodule(module_path)
                if not mergeable(module, module_deltas):
                    hook = _conv_hook if isinstance(module, torch.nn.Conv2d) else _linear_hook
                    handles.append(module.register_forward_hook(partial(hook, module_deltas)))
                    continue
                weight: torch.Tensor = module.weight  # mergeable: a Linear or a Conv2d
                if path not in store.pristine:
                    store.pristine[path] = weight.detach().clone()
                store.merged[path] = weight
                merge(weight, module_deltas)
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


def merge(weight: torch.Tensor, deltas: list[Delta]) -> None:
    """``weight += sum(factor * up @ down)`` in place, in the weight's own dtype: one ``addmm_`` per linear LoRA,
    no temporary the size of the weight (at SD-1.5 size on a 2-core CPU, 33-38 ms for every attention projection,
    where computing each delta in float32 first took 62-85 ms)."""
    for down, up, factor in deltas:
        if down.dim() == 4:  # conv: (r, in, kh, kw) and (out, r, 1, 1) -> (out, in, kh, kw)
            weight.add_(torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down), alpha=factor)
        else:
            weight.addmm_(up, down, alpha=factor)


@dataclass
class _Store:
    """Kept with the pipeline: the original weight of every layer a LoRA has touched, and the weights merged now."""

    pristine: dict[str, torch.Tensor] = field(default_factory=dict)
    merged: dict[str, torch.Tensor] = field(default_factory=dict)


def _store(pipe) -> _Store:
    store = getattr(pipe, "_lora_studio_patching", None)
    if store is None:
        store = _Store()
        pipe._lora_studio_patching = store
    return store


def restore(pipe) -> None:
    """Every merged weight back to its pristine copy; each leaves ``merged`` only once restored, so an interruption
    here leaves the rest for the next call."""
    store = _store(pipe)
    with torch.no_grad():
        for path in list(store.merged):
            store.merged[path].copy_(store.pristine[path])
            del store.merged[path]
