"""Prompts that name LoRA concepts: ``<1>``, ``<2>``… and A1111's ``<lora:NAME:weight>``.

Everything here runs before any download or sampling, so a typo costs nothing but a
sentence that says what to change.
"""

from __future__ import annotations

import math
import posixpath
import re
from urllib.parse import urlsplit

PLACEHOLDER = re.compile(r"<(\d+)>")
A1111_TAG = re.compile(r"<lora:([^:<>]+):([^:<>]+)>")
MAX_ABS_SCALE = 2.0
MAX_LORAS = 8  # also in predict_generate.py's description of lora_urls


class PromptError(ValueError):
    """The prompt, URLs or scales do not fit together; the message says how."""


def split_urls(lora_urls: str) -> list[str]:
    """``"u1|u2"`` -> ``["u1", "u2"]``; empty -> ``[]``; an empty entry between pipes is an error."""
    if not lora_urls.strip():
        return []
    urls = [u.strip() for u in lora_urls.split("|")]
    if len(urls) > MAX_LORAS:
        raise PromptError(f"lora_urls names {len(urls)} LoRAs; at most {MAX_LORAS} can be applied at once.")
    for i, url in enumerate(urls, 1):
        if not url:
            raise PromptError(f"lora_urls has an empty entry at position {i}; separate URLs with a single '|'.")
    return urls


def _scale(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{where}: {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise PromptError(f"{where}: {text!r} is not a finite number.")
    if abs(value) > MAX_ABS_SCALE:
        raise PromptError(
            f"{where}: {value} is outside -{MAX_ABS_SCALE}..{MAX_ABS_SCALE} "
            "(0 is the base model, about 0.5 suits faces, 1 reproduces the training photos)."
        )
    return value


def parse_scales(lora_scales: str, n_loras: int) -> list[float]:
    """One scale per LoRA: ``"0.5"`` applies to all, ``"0.5|0.6"`` one each."""
    parts = [p.strip() for p in lora_scales.split("|")] if lora_scales.strip() else []
    scales = [_scale(p, f"lora_scales entry {i}") for i, p in enumerate(parts, 1)]
    if n_loras == 0:
        return []
    if len(scales) == 1:
        return scales * n_loras
    if len(scales) != n_loras:
        raise PromptError(
            f"lora_scales has {len(scales)} values for {n_loras} LoRA URLs; give one value for all, "
            f"or exactly {n_loras} separated by '|'."
        )
    return scales


def lora_name(url: str) -> str:
    """The name A1111 tags use for a LoRA: its file name without extension."""
    path = urlsplit(url).path if "://" in url else ""
    return posixpath.splitext(posixpath.basename(path))[0]


def apply_a1111_tags(prompt: str, urls: list[str], scales: list[float]) -> tuple[str, list[float]]:
    """Remove ``<lora:NAME_OR_INDEX:weight>`` tags from ``prompt``; each sets its LoRA's scale."""
    scales = list(scales)
    names = [lora_name(u) for u in urls]
    for match in A1111_TAG.finditer(prompt):
        key, weight = match.group(1).strip(), match.group(2).strip()
        if key.isdigit():
            index = int(key) - 1
            if not 0 <= index < len(urls):
                raise PromptError(f"{match.group(0)} names LoRA {key}, but {len(urls)} LoRA URL(s) were given.")
        elif key in names:
            index = names.index(key)
        else:
            raise PromptError(
                f"{match.group(0)} names no LoRA; use its position (1..{len(urls)}) or one of: "
                f"{', '.join(n for n in names if n) or 'no named URLs'}."
            )
        scales[index] = _scale(weight, match.group(0))
    cleaned = re.sub(r"\s{2,}", " ", A1111_TAG.sub("", prompt)).strip(" ,")
    return cleaned, scales


def check_placeholders(prompt: str, n_loras: int) -> None:
    for match in PLACEHOLDER.finditer(prompt):
        k = int(match.group(1))
        if not 1 <= k <= n_loras:
            raise PromptError(
                f"The prompt mentions {match.group(0)}, but {n_loras} LoRA URL(s) were given; use <1>..<{n_loras}>."
                if n_loras
                else f"The prompt mentions {match.group(0)}, but no LoRA URLs were given."
            )


def expand(prompt: str, token_texts: list[str]) -> str:
    """``<k>`` -> the k-th LoRA's token text (checked beforehand by ``check_placeholders``)."""
    check_placeholders(prompt, len(token_texts))
    return PLACEHOLDER.sub(lambda m: token_texts[int(m.group(1)) - 1], prompt)


def parse_request(prompt: str, lora_urls: str, lora_scales: str) -> tuple[str, list[str], list[float]]:
    """Validate the three inputs together: (prompt without A1111 tags, urls, scales)."""
    urls = split_urls(lora_urls)
    scales = parse_scales(lora_scales, len(urls))
    prompt, scales = apply_a1111_tags(prompt, urls, scales)
    check_placeholders(prompt, len(urls))
    return prompt, urls, scales
