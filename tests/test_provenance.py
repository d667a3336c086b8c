"""A generation's record and what keeps a fork from re-running its parent exactly (the service's check)."""

import pytest
from pydantic import ValidationError

from lora_core import provenance

SHA = "ab" * 32


def record(**changes) -> provenance.Provenance:
    base = {
        "seed": 7,
        "base_model": "sd-1.5",
        "base_hash": "0123456789abcdef",
        "loras": [{"url": "https://example.com/a.safetensors", "sha256": SHA, "size": 10, "scale": 0.5}],
        "settings": {"num_inference_steps": 25, "seed": 7},
        "versions": {"lora_studio": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1"},
        "device": "cuda:0",
        "machine": "NVIDIA H200",
        "dtype": "float16",
    }
    return provenance.Provenance.model_validate({**base, **changes})


def test_the_same_record_is_an_exact_rerun_whatever_the_urls():
    moved = record(loras=[{"url": "https://elsewhere/b", "sha256": SHA, "size": 10, "scale": 0.5}])
    assert provenance.differences(record(), moved) == []
    fork = provenance.compared(record(), moved, "p1")
    assert fork.rerun == provenance.Rerun(of="p1", exact=True, differences=[])


def test_each_thing_that_changes_pixels_is_named():
    fork = record(
        base_hash="fedcba9876543210",
        versions={"lora_studio": "0.1.0", "torch": "2.14.0", "diffusers": "0.42.1"},
        device="cpu",
        machine="Intel(R) Xeon(R) Processor",
        dtype="float32",
        loras=[],
        seed=8,
    )
    assert provenance.differences(record(), fork) == [
        "the base model's weights differ (sd-1.5 0123456789ab then, sd-1.5 fedcba987654 now)",
        "torch 2.13.0 then, 2.14.0 now",
        "ran on cuda:0 (NVIDIA H200) in float16 then, on cpu (Intel(R) Xeon(R) Processor) in float32 now",
        "other LoRA files or scales (by sha256)",
        "other settings or seed",
    ]


def test_a_malformed_record_is_refused():
    with pytest.raises(ValidationError):
        record(loras=[{"url": "x", "sha256": "not a hash", "size": 1, "scale": 1}])
    with pytest.raises(ValidationError):
        record(seed=-1)


def test_versions_are_read_without_importing_the_libraries():
    found = provenance.versions()
    assert found["lora_studio"] and set(provenance.LIBRARIES) <= set(found)
    assert len(found["lora_studio_code"]) == 12  # moves with every change of the code, unlike the version number
