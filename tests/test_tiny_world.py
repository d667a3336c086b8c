import numpy as np
import pytest

from lora_core.tiny import tiny_world


def test_same_seed_same_world_other_seed_other_world():
    a_images, a_captions = tiny_world.sample_world(64, seed=3)
    b_images, b_captions = tiny_world.sample_world(64, seed=3)
    c_images, _ = tiny_world.sample_world(64, seed=4)
    assert a_captions == b_captions
    assert np.array_equal(a_images, b_images)
    assert not np.array_equal(a_images, c_images)


def test_world_has_patterns_two_colour_objects_several_objects_and_photo_captions():
    _, captions = tiny_world.sample_world(2000, seed=0)
    text = "\n".join(captions)
    for phrase in ("striped", "dotted", "checkered", "gradient", " and a ", "a photo of", "pattern", "background"):
        assert phrase in text, phrase
    assert any(" and " in c and c.split(" and ")[0].split()[-1] in tiny_world.COLOURS for c in captions)


def _modifiers(words: list[str], noun: str) -> set[str]:
    """Words describing each occurrence of ``noun``: "a purple and red striped star" -> {purple, and, red, striped}."""
    found = set()
    for i, w in enumerate(words):
        if w == noun:
            j = i - 1
            while j >= 0 and words[j] not in ("a", "an", "of"):
                found.add(words[j])
                j -= 1
    return found


@pytest.mark.medium
def test_held_out_combinations_never_appear():
    _, captions = tiny_world.sample_world(6000, seed=0)
    held_out = list(tiny_world.HELD_OUT_OBJECTS) + [(c, p) for p, c in tiny_world.HELD_OUT_PATTERNS]
    for caption in captions:
        for colour, noun in held_out:
            assert colour not in _modifiers(caption.split(), noun), caption


def test_render_object_draws_held_out_concepts_in_their_colour():
    image = tiny_world.render_object("star", tiny_world.Fill("purple"), tiny_world.Fill("white"), seed=0)
    purple = np.array(tiny_world.COLOURS["purple"])
    close = np.abs(image.astype(int) - purple).max(axis=2) < 30
    assert 0.05 < close.mean() < 0.6
