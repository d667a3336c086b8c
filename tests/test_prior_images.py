"""Prior images are drawn once and read back the same, from memory or from disk (a restarted worker)."""

import numpy as np
import pytest

from lora_core.base import checkpoints
from lora_core.training import prior_images


@pytest.mark.medium
def test_a_set_is_drawn_once_and_read_back_pixel_for_pixel(tiny_pipe, tmp_path, monkeypatch):
    small = checkpoints.get_checkpoint("tiny").model_copy(update={"prior_images": 8})
    drawn = prior_images.prior_examples(tiny_pipe, small, 64, "test-base", folder=tmp_path)
    assert len(drawn) == 8 and {e.caption for e in drawn} <= set(small.prior_prompts)
    assert prior_images.prior_examples(tiny_pipe, small, 64, "test-base", folder=tmp_path) is drawn  # memory
    monkeypatch.setattr(prior_images, "_memory", {})  # a new process: only the disk has them
    monkeypatch.setattr(prior_images, "_draw", lambda *a: (_ for _ in ()).throw(AssertionError("drawn again")))
    read = prior_images.prior_examples(tiny_pipe, small, 64, "test-base", folder=tmp_path)
    assert [(e.name, e.caption) for e in read] == [(e.name, e.caption) for e in drawn]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(read, drawn, strict=True))
    assert not list(tmp_path.glob(".priors-*"))  # no half-written folder left behind


@pytest.mark.medium
def test_another_base_or_size_is_another_set(tiny_pipe, tmp_path):
    small = checkpoints.get_checkpoint("tiny").model_copy(update={"prior_images": 8})
    a = prior_images.prior_examples(tiny_pipe, small, 64, "base-a", folder=tmp_path)
    b = prior_images.prior_examples(tiny_pipe, small, 64, "base-b", folder=tmp_path)
    c = prior_images.prior_examples(tiny_pipe, small, 32, "base-a", folder=tmp_path)
    assert a is not b and len(list(tmp_path.iterdir())) == 3 and c[0].image.size == (32, 32)


@pytest.mark.medium
def test_a_training_may_ask_for_fewer_images_and_gets_that_many(tiny_pipe, tmp_path):
    """``prior_images`` (a training input): 3 of the 8 prompts get one image each; 11 gives the first three two."""
    tiny = checkpoints.get_checkpoint("tiny")
    three = prior_images.prior_examples(tiny_pipe, tiny, 32, "base-a", count=3, folder=tmp_path)
    assert [e.caption for e in three] == list(tiny.prior_prompts[:3])
    eleven = prior_images.prior_examples(tiny_pipe, tiny, 32, "base-a", count=11, folder=tmp_path)
    assert [e.caption for e in eleven] == [p for i, p in enumerate(tiny.prior_prompts) for _ in range(1 + (i < 3))]
    assert np.array_equal(np.asarray(three[0].image), np.asarray(eleven[0].image))  # the same seeds: the same images
