"""Each task preset on real photos (shipped inside scikit-image's wheel), as zips of augmented crops."""

import numpy as np
import pytest
import skimage.data

from conftest import call_predictor, zip_images
from lora_core.tiny.preset_learning import PRESET_PHOTOS, augmented, preset_photos
from lora_core.training import dataset, preprocess, presets
from predict_train import Predictor
from service_harness import progress_steps

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')


def photo_zip(path, images):
    return zip_images(path, images, "JPEG", stem="photo", quality=90)


ZIPS = {
    **{task: (lambda task=task: preset_photos(task)) for task in PRESET_PHOTOS},
    "no_face": lambda: augmented(skimage.data.chelsea(), 4, 4),
}


def _examples(task, images, log=lambda _: None):
    data = dataset.InstanceData([dataset.InstanceImage(f"p{i}.jpg", im) for i, im in enumerate(images)])
    return preprocess.prepare_examples(data, presets.get_preset(task), 64, "<s0><s1>", log=log)


def test_face_preset_crops_to_the_face_and_masks_it():
    examples = _examples("face", ZIPS["face"]())
    assert len(examples) == 5
    for e in examples:
        assert e.image.size == (64, 64) and e.caption == "a photo of <s0><s1>"
        assert 0.1 < e.mask.mean() < 0.6  # the face ellipse, not the whole crop
        ys, xs = np.nonzero(e.mask > 0.5)
        assert 16 < xs.mean() < 48 and 12 < ys.mean() < 48  # centred on the face


def test_face_zip_without_faces_is_refused_and_unfound_faces_are_logged():
    with pytest.raises(preprocess.NoFaceError, match="No face was found in any of the 4 photos"):
        _examples("face", ZIPS["no_face"]())
    logs = []
    examples = _examples("face", ZIPS["face"]() + ZIPS["no_face"]()[:2], log=logs.append)
    assert len(examples) == 5 and any("no face found in 2 of 7" in line for line in logs)


def test_object_centres_and_style_covers_the_whole_photo():
    objects = _examples("object", ZIPS["object"]())
    assert len(objects) == 5 and all(e.mask is None for e in objects)
    styles = _examples("style", ZIPS["style"]())
    assert len(styles) > 6  # wide photos give several squares each
    assert all(e.caption == "a picture in the style of <s0><s1>" for e in styles)


def test_user_captions_name_the_concept():
    preset = presets.get_preset("object")
    assert preprocess.caption_for("my mug <1> on a table", preset, "<s0>") == "my mug <s0> on a table"
    assert preprocess.caption_for("on a table", preset, "<s0>") == "a photo of <s0>, on a table"
    assert preprocess.caption_for(None, preset, "<s0>") == "a photo of <s0>"


@pytest.fixture(scope="module")
def predictor():
    p = Predictor()
    p.setup()
    return p


@pytest.mark.parametrize("task", ["face", "object", "style"])
def test_each_task_trains_end_to_end_on_photos(predictor, tmp_path, task, capsys):
    out = call_predictor(
        predictor,
        instance_data=photo_zip(tmp_path / f"{task}.zip", ZIPS[task]()),
        task=task,
        seed=0,
        max_train_steps=20,
        checkpoints=1,
        grid_steps=2,
    )
    assert out.lora.stat().st_size > 0 and out.lora_a1111.stat().st_size > 0
    logs = capsys.readouterr().out
    assert (100, 20, 20) in progress_steps(logs) and f"task {task}" in logs


def test_face_task_with_no_face_fails_before_training(predictor, tmp_path, capsys):
    with pytest.raises(preprocess.NoFaceError):
        call_predictor(predictor, instance_data=photo_zip(tmp_path / "cat.zip", ZIPS["no_face"]()), task="face")
    assert not progress_steps(capsys.readouterr().out)
