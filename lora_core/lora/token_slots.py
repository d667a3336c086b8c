"""Reserved tokens whose embeddings a prediction fills with its LoRAs' trained vectors.

Adding tokens per prediction would resize SD-1.5's 49,408-row embedding table twice (tens
of milliseconds, and a new tensor each time); instead the warm pipeline gets a block of
slot tokens once, and a prediction writes its vectors into their rows and zeroes them
after. Prompts that never name a slot tokenize exactly as before.

Every (tokenizer, text encoder) pair of the pipeline's family gets the same slot strings (SDXL: both), each
with its own ids, so one prompt names a concept in every text encoder.
"""

from __future__ import annotations

import torch

from lora_core.catalog import families

SLOT = "<lora_studio_slot_{}>"
BLOCK = 16  # slots are added in blocks of this many

SlotIds = dict[str, list[int]]  # text encoder -> the slots' ids in its tokenizer


def reserve(pipe, count: int) -> tuple[list[str], SlotIds]:
    """``count`` slot token strings and their ids per text encoder, adding slots (and embedding rows) if there are
    too few."""
    names = [SLOT.format(i) for i in range(count)]
    ids: SlotIds = {}
    for tokenizer_name, encoder_name in families.of_pipeline(pipe).text_pairs:
        tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, encoder_name)
        added = tokenizer.get_added_vocab()
        if any(name not in added for name in names):
            total = -(-count // BLOCK) * BLOCK
            tokenizer.add_tokens([n for n in (SLOT.format(i) for i in range(total)) if n not in added])
            if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:
                encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            _zero(encoder, tokenizer.convert_tokens_to_ids([SLOT.format(i) for i in range(total)]))
        ids[encoder_name] = tokenizer.convert_tokens_to_ids(names)
    return names, ids


@torch.no_grad()
def fill(pipe, ids: SlotIds, vectors: dict[str, torch.Tensor]) -> None:
    """Each text encoder's slot rows ``ids[encoder]`` get ``vectors[encoder]``."""
    for encoder, rows in vectors.items():
        getattr(pipe, encoder).get_input_embeddings().weight[ids[encoder]] = rows


def clear(pipe, ids: SlotIds) -> None:
    """Zero the rows: a prompt that names a slot outside a prediction reads nothing from a previous one."""
    for encoder, rows in ids.items():
        _zero(getattr(pipe, encoder), rows)


@torch.no_grad()
def _zero(encoder, ids: list[int]) -> None:
    encoder.get_input_embeddings().weight[ids] = 0
