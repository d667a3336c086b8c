"""Applying bound LoRAs with scales to the warm pipeline, and removing them afterwards.

Each LoRA layer runs as a forward hook on its base module (``output += up(down(x)) *
scale * alpha / rank``, the computation of PEFT's and kohya's LoRA layers), and its token
embeddings go into reserved slot rows. Leaving the ``with`` block removes the hooks and
zeroes the rows: no weight of the base is ever written, so the next prediction sees the
pristine base bit for bit, and switching LoRAs costs no tensor copies (the cost of
diffusers' ``load_lora_weights``/``unload_lora_weights`` and of fusing).

The scale moves the LoRA and its token embeddings alike (embeddings from the init word's
towards the trained ones), so 0.5 is half-way and 1 reproduces the training photos. At
scale 0 the LoRA is not applied at all: its ``<k>`` reads as its init word.
"""

from __future__ import annotations

import contextlib
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
        for path, module_deltas in deltas.items():
            component, module_path = path.split(".", 1)
            module = models[component].get_submodule(module_path)
            hook = _conv_hook if isinstance(module, torch.nn.Conv2d) else _linear_hook
            handles.append(module.register_forward_hook(partial(hook, module_deltas)))
        yield texts
    finally:
        for handle in handles:
            handle.remove()
        if slot_ids:
            token_slots.clear(pipe, slot_ids)
