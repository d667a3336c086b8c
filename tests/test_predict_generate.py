"""The generation predictor called as Cog calls it (in-process; the HTTP server is tested with packaging)."""

import numpy as np
import pytest
from PIL import Image

from conftest import call_predictor
from predict_generate import Predictor


@pytest.fixture(scope="module")
def predictor():
    p = Predictor()
    p.setup()
    return p


def test_outputs_are_files_in_the_asked_format_with_the_bases_native_size(predictor):
    paths = call_predictor(predictor, prompt="a red circle", num_outputs=2, seed=1, output_format="webp")
    assert len(paths) == 2 and all(p.suffix == ".webp" and p.stat().st_size > 0 for p in paths)
    assert Image.open(paths[0]).size == (64, 64)


def test_same_seed_same_pixels(predictor):
    a = call_predictor(predictor, prompt="a blue star", seed=5)[0]
    b = call_predictor(predictor, prompt="a blue star", seed=5)[0]
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_unknown_base_model_fails_with_the_choices(predictor):
    with pytest.raises(ValueError, match="Unknown base model"):
        call_predictor(predictor, prompt="a red circle", base_model="sdxl")
