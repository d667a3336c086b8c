"""Placeholders, URL lists, scales and A1111 tags: table-driven, all checked before any work."""

import pytest

from lora_core.lora.prompts import PromptError, expand, parse_request

U1, U2 = "https://example.com/loras/mug.safetensors", "https://example.com/loras/watercolour.safetensors"

GOOD = [
    # prompt, urls, scales -> prompt, n urls, scales
    ("a red circle", "", "0.5", "a red circle", 0, []),
    ("a photo of <1>", U1, "0.5", "a photo of <1>", 1, [0.5]),
    ("<1> in the style of <2>", f"{U1}|{U2}", "0.5", "<1> in the style of <2>", 2, [0.5, 0.5]),
    ("<1> in the style of <2>", f"{U1} | {U2}", "0.5|0.6", "<1> in the style of <2>", 2, [0.5, 0.6]),
    ("<1> <2>", f"{U1}|{U2}", "0|-1.5", "<1> <2>", 2, [0.0, -1.5]),
    ("a photo of <1> <lora:1:0.8>", U1, "0.5", "a photo of <1>", 1, [0.8]),
    ("<lora:watercolour:0.3>, <1> by <2>", f"{U1}|{U2}", "0.5", "<1> by <2>", 2, [0.5, 0.3]),
    ("<1> <lora:mug:1> and <lora:2:0.2>", f"{U1}|{U2}", "0.5|0.6", "<1> and", 2, [1.0, 0.2]),
]


@pytest.mark.parametrize("prompt,urls,scales,want_prompt,want_n,want_scales", GOOD)
def test_valid_requests(prompt, urls, scales, want_prompt, want_n, want_scales):
    got_prompt, got_urls, got_scales = parse_request(prompt, urls, scales)
    assert (got_prompt, len(got_urls), got_scales) == (want_prompt, want_n, want_scales)


BAD = [
    ("a photo of <3>", f"{U1}|{U2}", "0.5", r"mentions <3>, but 2 LoRA URL\(s\)"),
    ("a photo of <1>", "", "0.5", "mentions <1>, but no LoRA URLs"),
    ("<1>", f"{U1}|{U2}", "0.5|0.6|0.7", "3 values for 2 LoRA URLs"),
    ("<1>", U1, "nan", "not a finite number"),
    ("<1>", U1, "inf", "not a finite number"),
    ("<1>", U1, "2.5", "outside -2.0..2.0"),
    ("<1>", U1, "half", "'half' is not a number"),
    ("<1>", f"{U1}||{U2}", "0.5", "empty entry at position 2"),
    ("<1> <lora:3:0.5>", U1, "0.5", "names LoRA 3, but 1 LoRA URL"),
    ("<1> <lora:unknown:0.5>", U1, "0.5", "names no LoRA.*mug"),
    ("<1> <lora:1:nan>", U1, "0.5", "not a finite number"),
]


@pytest.mark.parametrize("prompt,urls,scales,message", BAD)
def test_invalid_requests_say_what_to_change(prompt, urls, scales, message):
    with pytest.raises(PromptError, match=message):
        parse_request(prompt, urls, scales)


def test_expand_puts_each_loras_tokens_in_place():
    assert expand("<2> meets <1>, <1> again", ["<a0><a1>", "<b0>"]) == "<b0> meets <a0><a1>, <a0><a1> again"
    with pytest.raises(PromptError):
        expand("<2>", ["<a0>"])
