"""A real CLIP byte-level BPE tokenizer, learned offline from a word list.

The files are laid out exactly as OpenAI's CLIP vocabulary (256 byte symbols, the same
with ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``), so
``CLIPTokenizer`` reads them unchanged and any word outside the list still tokenizes
(byte by byte), as with the real SD tokenizer.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merge the most frequent adjacent pair until every word is one symbol (ties broken by name)."""
    table = bytes_to_unicode()
    pieces: dict[str, list[str]] = {}
    for w in sorted(set(words)):
        chars = [table[b] for b in w.encode("utf-8")]
        pieces[w] = chars[:-1] + [chars[-1] + "</w>"]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in pieces.values():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, symbols in pieces.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            pieces[w] = out


def write_clip_tokenizer_files(words: list[str], folder: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` in CLIP's layout; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_symbols = list(bytes_to_unicode().values())
    merges = learn_merges(words)
    entries = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(entries))}
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path
