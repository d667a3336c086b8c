import numpy as np
import pytest
from pydantic import ValidationError

from lora_core.base import checkpoints, sampling

DEFAULTS = checkpoints.get_checkpoint("tiny").defaults


def _request(**given):
    return sampling.resolve_request(DEFAULTS, **{"prompt": "a green star", "seed": 11, **given})


def _pixels(pipe, **given):
    return [np.asarray(im) for im in sampling.sample(pipe, _request(**given))]


def test_same_seed_same_pixels_and_each_output_remakeable_alone(tiny_pipe):
    batch = _pixels(tiny_pipe, num_outputs=3)
    assert all(np.array_equal(a, b) for a, b in zip(batch, _pixels(tiny_pipe, num_outputs=3), strict=True))
    assert not np.array_equal(batch[0], batch[1])
    # by construction (one pass per output), not by luck of the processor's kernels: exact, every output
    for i, image in enumerate(batch):
        assert np.array_equal(image, _pixels(tiny_pipe, seed=11 + i)[0]), f"output {i} differs from seed {11 + i}"


def test_an_ancestral_sampler_with_a_negative_prompt_remakes_each_output_alone(tiny_pipe):
    """Euler a draws fresh noise from the generator at every step: the draws of one output never depend on
    how many outputs were asked for."""
    given = {"scheduler": "Euler a", "negative_prompt": "a blue square", "num_inference_steps": 8, "seed": 40}
    batch = _pixels(tiny_pipe, num_outputs=4, **given)
    assert np.array_equal(batch[3], _pixels(tiny_pipe, **{**given, "seed": 43})[0])
    assert np.array_equal(batch[1], _pixels(tiny_pipe, **{**given, "num_outputs": 2, "seed": 40})[1])


@pytest.mark.parametrize("name", sampling.SCHEDULER_NAMES)
def test_every_scheduler_samples_and_leaves_the_warm_pipeline_untouched(tiny_pipe, name):
    before = dict(tiny_pipe.scheduler.config)
    image = sampling.sample(tiny_pipe, _request(scheduler=name, num_inference_steps=6))[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 5
    assert dict(tiny_pipe.scheduler.config) == before


def test_defaults_come_from_the_checkpoint_and_bad_values_are_refused():
    r = _request()
    assert (r.width, r.height, r.guidance_scale, r.num_inference_steps) == (64, 64, 3.0, 20)
    assert 0 <= sampling.resolve_request(DEFAULTS, prompt="x").seed <= sampling.MAX_SEED
    for bad in (
        {"width": 10000},
        {"width": 60},
        {"num_outputs": 5},
        {"guidance_scale": float("nan")},
        {"num_inference_steps": -1},
        {"scheduler": "Nope"},
    ):
        with pytest.raises(ValidationError):
            _request(**bad)


def test_larger_sizes_follow_the_request(tiny_pipe):
    image = sampling.sample(tiny_pipe, _request(width=96, height=64, num_inference_steps=4))[0]
    assert image.size == (96, 64)
