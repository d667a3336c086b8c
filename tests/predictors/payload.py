"""Bytes nobody designed to compress or align: a seeded stream of pseudo-random 1 MiB blocks, written by a stand-in
predictor and recomputed by the test that checks what arrived."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Iterator

BLOCK = 2**20


def blocks(size: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for start in range(0, size, BLOCK):
        yield rng.randbytes(min(BLOCK, size - start))


def safetensors(size: int, seed: int) -> Iterator[bytes]:
    """A valid ``.safetensors`` file: one uint8 tensor of ``size`` bytes (the file is a little larger)."""
    header = json.dumps(
        {"__metadata__": {"format": "pt"}, "w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    yield struct.pack("<Q", len(header)) + header
    yield from blocks(size, seed)


def sha256(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
