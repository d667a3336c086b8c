"""Applying LoRAs with scales to the warm pipeline, and removing them afterwards.

Each LoRA becomes a named diffusers adapter plus its tokens; leaving the ``with`` block
deletes both, so the next prediction sees the pristine base. The scale moves the LoRA
weights and the token embeddings alike (from the init word's embedding towards the trained
one), so 0.5 is half-way and 1 reproduces the training photos. At scale 0 the LoRA is not
applied at all: its ``<k>`` reads as its init word and the pixels are exactly the base's.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass

import torch

from .lora_file import EMBEDDINGS_KEY, LoRAFileError, family_of


@dataclass
class LoRA:
    """A LoRA read into memory: adapter tensors (diffusers/PEFT names), token embeddings, tokens."""

    tensors: dict[str, torch.Tensor]
    embeddings: torch.Tensor | None
    tokens: list[str]
    init_word: str
    name: str = "LoRA"
    family: str = "an unknown base"

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str = "LoRA") -> "LoRA":
        is_embedding = [k for k in tensors if k == EMBEDDINGS_KEY or k.startswith("bundle_emb.")]  # ours / A1111's
        adapter = {k: v for k, v in tensors.items() if k not in is_embedding}
        embeddings = tensors[is_embedding[0]] if is_embedding else None
        tokens = json.loads(metadata.get("lora_studio.tokens", "[]"))
        if embeddings is not None and not tokens:  # a foreign file with embeddings: name them ourselves
            tokens = [f"<t{i}>" for i in range(len(embeddings))]
        return cls(adapter, embeddings, tokens, metadata.get("lora_studio.init_word", ""), name, family_of(metadata))


def _scaled_embeddings(pipe, lora: LoRA, scale: float) -> torch.Tensor:
    """init + scale * (trained - init), init being the init word's mean embedding (files without one: full)."""
    if not lora.init_word:
        return lora.embeddings
    ids = pipe.tokenizer(lora.init_word, add_special_tokens=False).input_ids
    table = pipe.text_encoder.get_input_embeddings().weight
    init = table[ids].detach().mean(dim=0).to(lora.embeddings.dtype)
    return init + scale * (lora.embeddings - init)


@contextlib.contextmanager
def applied(pipe, loras: list[LoRA], scales: list[float]):
    """Within the block, ``pipe`` draws with ``loras`` at ``scales``; yields each LoRA's token text.

    Token strings are renamed per application (``<lora{random id}_0>``…), so two LoRAs
    trained with the same token names never collide.
    """
    adapters, added_tokens, texts = [], [], []
    try:
        for lora, scale in zip(loras, scales):
            if scale == 0:
                texts.append(lora.init_word)
                continue
            uid = uuid.uuid4().hex[:10]
            name = f"lora_studio_adapter_{uid}"  # never a substring of a module path
            tokens = [f"<lora{uid}_{i}>" for i in range(len(lora.tokens))]
            try:
                if lora.tensors:  # a file may hold embeddings only (textual inversion)
                    adapters.append((name, scale))  # before loading: a half-loaded adapter is removed too
                    pipe.load_lora_weights(dict(lora.tensors), adapter_name=name)
                if lora.embeddings is not None and tokens:
                    pipe.load_textual_inversion(_scaled_embeddings(pipe, lora, scale), token=tokens,
                                                tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
                    added_tokens += tokens
            except (RuntimeError, ValueError, KeyError, IndexError) as e:
                raise LoRAFileError(
                    f"{lora.name} does not fit this base model: it was made for {lora.family}, and its layers "
                    f"have other sizes or names ({type(e).__name__}). Use it with a base of its own family."
                ) from None
            texts.append("".join(tokens))
        if adapters:
            pipe.set_adapters([n for n, _ in adapters], adapter_weights=[s for _, s in adapters])
        yield texts
    finally:
        loaded = set(getattr(pipe.unet, "peft_config", {})) | set(getattr(pipe.text_encoder, "peft_config", {}))
        names = [n for n, _ in adapters if n in loaded]
        if names:
            pipe.delete_adapters(names)
        if added_tokens:
            pipe.unload_textual_inversion(added_tokens)
