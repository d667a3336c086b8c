"""Header checks that run before any tensor of a downloaded LoRA is read."""

import json
import pickle
import struct

import pytest

from lora_core.lora.lora_file import LoRAFileError, check_safetensors


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


GOOD_HEADER = {
    "a.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "__metadata__": {"format": "pt"},
}


def test_a_valid_file_passes(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(safetensors_bytes(GOOD_HEADER, b"\0" * 24))
    assert "a.lora_A.weight" in check_safetensors(path)


def test_a_header_length_that_begins_like_a_pickle_is_still_safetensors(tmp_path):
    """The length's first byte is a pickle's ``\\x80`` in one file of 256 (a LoRA checkpoint of a real training hit
    it): the JSON that follows decides, for LoRA files and single-file checkpoints alike."""
    from lora_core.base import checkpoints

    header = dict(GOOD_HEADER)
    pad = next(n for n in range(256) if len(json.dumps({**header, "__metadata__": {"p": "x" * n}})) % 256 == 0x80)
    header["__metadata__"] = {"p": "x" * pad}
    content = safetensors_bytes(header, b"\0" * 24)
    assert content[:1] == b"\x80"
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    assert "a.lora_A.weight" in check_safetensors(path)
    checkpoints.refuse_pickle(path)  # no error
    assert checkpoints.holds_pickle(pickle.dumps({"a": 1}, protocol=2)[:9])


@pytest.mark.parametrize(
    "case,content,message",
    [
        ("pickle", pickle.dumps({"a": 1}, protocol=2), "is a pickle"),
        ("torch zip", b"PK\x03\x04" + b"\0" * 100, "is a pickle"),
        ("empty", b"", "too short"),
        ("truncated", safetensors_bytes(GOOD_HEADER, b"\0" * 10), "truncated or corrupt"),
        (
            "huge claim",
            safetensors_bytes({"x": {"dtype": "F32", "shape": [2**20, 2**12], "data_offsets": [0, 2**34]}}, b"\0" * 8),
            "truncated or corrupt",
        ),
        ("header length lies", struct.pack("<Q", 2**40) + b"{}", "header length is wrong"),
        ("not json", struct.pack("<Q", 4) + b"\xff\xfe{{", "unreadable header"),
        (
            "bad dtype",
            safetensors_bytes({"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
            "malformed entry",
        ),
    ],
)
def test_bad_files_are_refused_with_a_sentence(tmp_path, case, content, message):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    with pytest.raises(LoRAFileError, match=message):
        check_safetensors(path)
