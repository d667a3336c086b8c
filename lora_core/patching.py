"""Applying LoRAs with scales to the warm pipeline, and removing them afterwards.

Each LoRA becomes a named diffusers adapter plus its tokens; leaving the ``with`` block
deletes both, so the next prediction sees the pristine base. A LoRA at scale 0 is not
applied at all: its ``<k>`` reads as its init word and the pixels are the base's.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass

import torch

from .lora_file import EMBEDDINGS_KEY


@dataclass
class LoRA:
    """A LoRA read into memory: adapter tensors (diffusers/PEFT names), token embeddings, tokens."""

    tensors: dict[str, torch.Tensor]
    embeddings: torch.Tensor | None
    tokens: list[str]
    init_word: str

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "LoRA":
        adapter = {k: v for k, v in tensors.items() if k != EMBEDDINGS_KEY}
        return cls(adapter, tensors.get(EMBEDDINGS_KEY), json.loads(metadata.get("lora_studio.tokens", "[]")),
                   metadata.get("lora_studio.init_word", ""))


@contextlib.contextmanager
def applied(pipe, loras: list[LoRA], scales: list[float]):
    """Within the block, ``pipe`` draws with ``loras`` at ``scales``; yields each LoRA's token text.

    Token strings are renamed per application (``<lora3_0>``…), so two LoRAs trained with
    the same token names never collide.
    """
    adapters, added_tokens, texts = [], [], []
    try:
        for lora, scale in zip(loras, scales):
            if scale == 0 or not lora.tensors:
                texts.append(lora.init_word)
                continue
            uid = uuid.uuid4().hex[:10]
            name = f"lora_studio_adapter_{uid}"  # never a substring of a module path
            pipe.load_lora_weights(dict(lora.tensors), adapter_name=name)
            adapters.append((name, scale))
            tokens = [f"<lora{uid}_{i}>" for i in range(len(lora.tokens))]
            if lora.embeddings is not None and tokens:
                pipe.load_textual_inversion(lora.embeddings, token=tokens, tokenizer=pipe.tokenizer,
                                            text_encoder=pipe.text_encoder)
                added_tokens += tokens
            texts.append("".join(tokens))
        if adapters:
            pipe.set_adapters([n for n, _ in adapters], adapter_weights=[s for _, s in adapters])
        yield texts
    finally:
        if adapters:
            pipe.delete_adapters([n for n, _ in adapters])
        if added_tokens:
            pipe.unload_textual_inversion(added_tokens)
