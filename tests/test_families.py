"""The model families' facts (``lora_core.catalog.families``) agree with the libraries and tools they describe."""

from __future__ import annotations

import inspect

import diffusers
import pytest

from lora_core.base import checkpoints
from lora_core.catalog import families
from lora_core.lora import lora_file


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_a_family_names_what_its_diffusers_pipeline_takes(name):
    """Every component, text pair, hub folder and loading keyword is one the pipeline's constructor takes, and every
    model it needs is downloaded: a wrong name here would load a base without a part, or fetch a folder for nothing."""
    family = families.FAMILIES[name]
    pipeline_class = getattr(diffusers, family.pipeline_class)
    parameters = inspect.signature(pipeline_class.__init__).parameters
    takes = set(parameters) - {"self"}
    assert set(family.lora_components) <= takes
    assert {part for pair in family.text_pairs for part in pair} <= takes
    assert set(family.hub_folders) <= takes
    assert set(family.hashed_parts) <= set(family.hub_folders)
    assert set(family.pipeline_kwargs) <= takes
    needed = {p for p in takes if parameters[p].default is inspect.Parameter.empty} - set(family.pipeline_kwargs)
    assert needed <= set(family.hub_folders), needed - set(family.hub_folders)
    assert set(family.kohya_prefixes) == set(family.lora_components)
    assert set(family.embedding_keys) == set(family.text_encoders) and set(family.text_encoders) <= takes
    call = inspect.signature(pipeline_class.__call__).parameters
    encode = inspect.signature(pipeline_class.encode_prompt).parameters
    assert set(family.prompt_outputs) <= set(call) & set(encode)  # what encode_prompt returns, the call takes


def test_every_registry_checkpoint_has_a_family_and_loads_with_its_class():
    assert {c.family for c in checkpoints.REGISTRY.values()} <= set(families.FAMILIES)
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    assert type(pipe).__name__ == families.FAMILIES["sd-1"].pipeline_class
    assert pipe.safety_checker is None


@pytest.mark.parametrize(
    ("written", "title"),
    [("sd-1", "SD 1.x"), ("sd_v1", "SD 1.x"), ("sdxl_base_v1-0", "SDXL"), ("sd_v2", "SD 2.x"), ("", "an unknown base")],
)
def test_a_lora_files_family_reads_in_words(written, title):
    """Ours (``lora_studio.base_family``) or kohya's (``ss_base_model_version``): the error that says a LoRA was made
    for another base names the family the way a person knows it."""
    assert lora_file.family_of({"ss_base_model_version": written}) == title


METADATA_ARGS = dict(
    base_model="tiny",
    base_hash="0" * 12,
    task="object",
    rank=4,
    alpha=4,
    tokens=["<s0>"],
    init_word="thing",
    resolution=64,
    steps=10,
    seed=0,
)


def test_the_metadata_names_the_family_as_kohya_and_the_model_spec_do():
    meta = lora_file.lora_metadata(base_family="sd-1", **METADATA_ARGS)
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("sd_v1", "stable-diffusion-v1/lora")
    sdxl = lora_file.lora_metadata(base_family="sdxl", **METADATA_ARGS)
    assert (sdxl["ss_base_model_version"], sdxl["modelspec.architecture"]) == (
        "sdxl_base_v1-0",
        "stable-diffusion-xl-v1-base/lora",
    )
    with pytest.raises(KeyError):
        lora_file.lora_metadata(base_family="sd-3", **METADATA_ARGS)
