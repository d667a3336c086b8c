"""Reserved tokens whose embeddings a prediction fills with its LoRAs' trained vectors.

Adding tokens per prediction would resize SD-1.5's 49,408-row embedding table twice (tens
of milliseconds, and a new tensor each time); instead the warm pipeline gets a block of
slot tokens once, and a prediction writes its vectors into their rows and zeroes them
after. Prompts that never name a slot tokenize exactly as before.
"""

from __future__ import annotations

import torch

SLOT = "<lora_studio_slot_{}>"
BLOCK = 16  # slots are added in blocks of this many


def reserve(pipe, count: int) -> tuple[list[str], list[int]]:
    """``count`` slot token strings and their ids, adding slots (and embedding rows) if there are too few."""
    names = [SLOT.format(i) for i in range(count)]
    tokenizer = pipe.tokenizer
    added = tokenizer.get_added_vocab()
    if any(name not in added for name in names):
        total = -(-count // BLOCK) * BLOCK
        tokenizer.add_tokens([n for n in (SLOT.format(i) for i in range(total)) if n not in added])
        table = pipe.text_encoder.get_input_embeddings()
        if len(tokenizer) > table.num_embeddings:
            pipe.text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = tokenizer.convert_tokens_to_ids([SLOT.format(i) for i in range(total)])
        clear(pipe, ids)
    return names, tokenizer.convert_tokens_to_ids(names)


@torch.no_grad()
def fill(pipe, ids: list[int], vectors: torch.Tensor) -> None:
    pipe.text_encoder.get_input_embeddings().weight[ids] = vectors


@torch.no_grad()
def clear(pipe, ids: list[int]) -> None:
    """Zero the rows: a prompt that names a slot outside a prediction reads nothing from a previous one."""
    pipe.text_encoder.get_input_embeddings().weight[ids] = 0
