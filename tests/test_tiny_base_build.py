"""The build script in its few-step mode: it runs, it is deterministic, it resumes."""

import pytest
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from lora_core.tiny.tiny_base import BuildConfig, build_tiny_base


class Interrupt(Exception):
    pass


def _weights(folder):
    return {part: load_file(next((folder / part).glob("*.safetensors"))) for part in ("unet", "vae", "text_encoder")}


def _max_difference(a, b):
    assert all(a[p].keys() == b[p].keys() for p in a)
    return max(float((a[p][k] - b[p][k]).abs().max()) for p in a for k in a[p])


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    return build_tiny_base(root / "out", root / "work", BuildConfig.quick(), log=lambda _: None)


def test_quick_build_writes_a_plain_diffusers_pipeline(quick_build):
    for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (quick_build / part).exists(), part
    pipe = StableDiffusionPipeline.from_pretrained(quick_build)
    image = pipe("a red square", num_inference_steps=2, height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)


def test_same_seed_same_weights(quick_build, tmp_path):
    again = build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig.quick(), log=lambda _: None)
    assert _max_difference(_weights(quick_build), _weights(again)) == 0.0


def test_build_resumes_after_an_interruption(quick_build, tmp_path):
    def stop_in_unet(line):
        if line.startswith("unet: step 2/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig.quick(), log=stop_in_unet)
    assert (tmp_path / "work" / "unet.ckpt").exists() and not (tmp_path / "out").exists()
    lines = []
    build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig.quick(), log=lines.append)
    assert any(line.startswith("unet: resuming at step 2/") for line in lines)
    # reloaded optimizer state differs from the live one by float rounding only
    assert _max_difference(_weights(quick_build), _weights(tmp_path / "out")) < 1e-6


def test_a_work_dir_of_another_configuration_is_refused(tmp_path):
    build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig.quick(), log=lambda _: None)
    with pytest.raises(RuntimeError, match="another configuration"):
        build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig(n_images=5), log=lambda _: None)


def test_from_a_world_base_only_the_colour_stage_runs_and_gives_the_same_base(quick_build, tmp_path):
    """A base of stages 1-3 (stage 4 of no steps) and then stage 4 from it: the whole build's weights."""
    from dataclasses import replace

    world_base = build_tiny_base(
        tmp_path / "world", tmp_path / "world-work", BuildConfig.quick().world_only(), log=lambda _: None
    )
    lines = []
    out = build_tiny_base(tmp_path / "out", tmp_path / "work", BuildConfig.quick(), lines.append, world_base)
    assert not any(line.startswith(("vae:", "unet:")) for line in lines)
    assert any(line.startswith("colour-vae: step") for line in lines)
    assert _max_difference(_weights(quick_build), _weights(out)) == 0.0
    with pytest.raises(RuntimeError, match="other world settings .*n_images"):
        build_tiny_base(
            tmp_path / "o2", tmp_path / "w2", replace(BuildConfig.quick(), n_images=64), world_base=world_base
        )
    with pytest.raises(RuntimeError, match="already went through stage 4"):
        build_tiny_base(tmp_path / "o3", tmp_path / "w3", BuildConfig.quick(), world_base=out)
