"""The committed tiny bases (SD 1.x and SDXL) understand their prompts at their recommended settings."""

import pytest
from diffusers import StableDiffusionPipeline

from lora_core.base import checkpoints
from lora_core.tiny import tiny_report


def test_loads_with_plain_diffusers_and_nothing_else():
    pipe = StableDiffusionPipeline.from_pretrained(checkpoints.weights_dir() / "tiny-sd")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents


@pytest.fixture(scope="module", params=["tiny", "tiny-xl"])
def base_pipe(request, tiny_pipe):
    if request.param == "tiny":
        return tiny_pipe
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint(request.param))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.medium
def test_each_colour_is_dominant_in_at_least_three_of_four_seeds(base_pipe):
    results = tiny_report.colour_test(base_pipe)
    for colour, seen in results.items():
        assert seen.count(colour) >= 3, (colour, seen)


@pytest.mark.medium
def test_different_shapes_are_drawn_differently(base_pipe):
    results = tiny_report.shape_test(base_pipe)
    correct = sum(seen.count(shape) for shape, seen in results.items())
    assert correct >= 12, results  # of 16: four shapes x four seeds, told apart by outline alone
