"""The training predictor end to end on the tiny base: a zip in, a LoRA that learned out."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import call_predictor, draw, purple_stars, zip_images
from lora_core import image_measures
from lora_core.base import checkpoints
from lora_core.lora import binding, lora_file, patching, prompts
from lora_core.tiny import tiny_eval
from lora_core.training import checkpoint_report, trainer
from predict_train import Predictor

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

SEEDS = range(6)


instance_images = purple_stars


@pytest.fixture(scope="module")
def predictor(train_predictor):
    return train_predictor


@pytest.fixture(scope="module")
def trained(preset_lora):
    return preset_lora("stars", purple_stars(), seed=1, checkpoints=4)  # the product's default


def test_output_is_one_safetensors_file_with_metadata_and_a_scale_grid(trained):
    assert trained.lora.suffix == ".safetensors"
    with safe_open(trained.lora, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["lora_studio.base_model"] == "tiny" and meta["lora_studio.task"] == "object"
    assert json.loads(meta["lora_studio.tokens"]) == ["<s0>", "<s1>"]
    assert meta["lora_studio.seed"] == "1" and meta["ss_network_dim"] == meta["lora_studio.rank"]
    assert len(meta["lora_studio.base_hash"]) == 12
    assert "emb_params" in keys and any(k.startswith("unet.") and "lora_A" in k for k in keys)
    assert any(k.startswith("text_encoder.") for k in keys)
    grid, cell = Image.open(trained.scales_grid), 64 * 4  # 64 px images, drawn 4x
    assert grid.size == (270 + 5 * cell, 4 * cell)  # a labelled row per checkpoint, a column per scale


def test_the_report_scores_every_checkpoint_and_recommends_one_by_its_rule(trained):
    """Fidelity to the photos rises from the base, bleed into other prompts rises with training, and the
    recommended checkpoint is the rule's pick: the lora output is that file, and every checkpoint file loads."""
    report = checkpoint_report.TrainingReport.model_validate_json(trained.report.read_text())
    scores = report.checkpoints
    assert [s.step for s in scores] == list(trainer.checkpoint_steps(scores[-1].step, 4))
    assert all(s.fidelity > report.base.fidelity for s in scores), (report.base, scores)
    assert scores[-1].bleed > scores[0].bleed and report.base.bleed == 0, scores
    assert (report.recommended_step, report.reason) == checkpoint_report.recommend(scores, report.bleed_bound)
    with safe_open(trained.lora, "pt") as f:
        meta = f.metadata()
    assert meta["lora_studio.steps"] == str(report.recommended_step) and meta["lora_studio.recommended"] == "true"
    assert trained.lora.read_bytes() == next(p for p in trained.checkpoints if p.name == trained.lora.name).read_bytes()
    for path, score in zip(trained.checkpoints, scores, strict=True):
        with safe_open(path, "pt") as f:
            assert f.metadata()["lora_studio.fidelity"] == f"{score.fidelity:.3f}"
        _plain_diffusers_images(path, ["<s0>", "<s1>"])  # diffusers' own loader takes each checkpoint


def _generate(pipe, lora, scale, prompt="a photo of <1>"):
    with patching.applied(pipe, [lora], [scale]) as texts:
        return draw(pipe, prompts.expand(prompt, texts), SEEDS)


def test_the_lora_moves_images_towards_the_instance_photos_and_scale_0_is_the_base(predictor, trained):
    pipe = predictor.bases.get("tiny")
    lora = binding.bind(pipe, *lora_file.read_lora(trained.lora))
    base = draw(pipe, "a photo of object", SEEDS)
    target = instance_images()
    distance = {scale: tiny_eval.palette_distance(_generate(pipe, lora, scale), target) for scale in (0, 0.5, 1.0)}
    print("fidelity (palette distance to the instance photos):", distance)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(_generate(pipe, lora, 0), base, strict=True)
    )
    assert distance[0.5] < distance[0] and distance[1.0] <= 0.5 * distance[0]
    assert distance[1.0] <= distance[0.5] + 0.02  # both near the photos: 1 may be saturated, not further away
    # the warm base is pristine afterwards
    after = draw(pipe, "a photo of object", SEEDS)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(after, base, strict=True))


def _plain_diffusers_images(lora_path, tokens, embedding_path=None):
    """What a diffusers user gets with the few lines in the README (a fresh pipeline, no lora_core); the tokens from
    the LoRA file, or from the standalone ``embedding`` output when given (``load_textual_inversion`` on its path,
    under one name: given a list of names with a path, diffusers 0.42 assigns the vectors otherwise)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(checkpoints.weights_dir() / "tiny-sd")
    pipe.set_progress_bar_config(disable=True)

    def draw(prompt):
        return [
            pipe(
                prompt,
                num_inference_steps=20,
                guidance_scale=3.0,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(s),
            ).images[0]
            for s in SEEDS
        ]

    base = draw("a photo of object")
    tensors = load_file(lora_path)
    embeddings = {k: v for k, v in tensors.items() if k == "emb_params" or k.startswith("bundle_emb.")}
    pipe.load_lora_weights({k: v for k, v in tensors.items() if k not in embeddings})
    vectors = str(embedding_path) if embedding_path else next(iter(embeddings.values()))
    pipe.load_textual_inversion(vectors, token=tokens, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    return base, draw(f"a photo of {''.join(tokens)}")


def test_plain_diffusers_loads_both_files_and_they_draw_the_same(trained):
    """Ours, the A1111 twin, and the twin's layers with the standalone embedding file (what ComfyUI users load, as
    it ignores bundled embeddings): the same weights under three namings, so float noise only."""
    assert trained.embedding.name == "object1.safetensors"  # task and seed: ComfyUI's ``embedding:object1``
    vectors, meta = lora_file.read_lora(trained.embedding)
    assert set(vectors) == {"emb_params"} and meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    base, ours = _plain_diffusers_images(trained.lora, ["<s0>", "<s1>"])
    _, a1111 = _plain_diffusers_images(trained.lora_a1111, ["<s0>", "<s1>"])
    # named as ComfyUI names it, by its file: diffusers expands "object1" to its two vectors, "object1 object1_1"
    _, separate = _plain_diffusers_images(trained.lora_a1111, ["object1"], embedding_path=trained.embedding)
    for a, b, c in zip(ours, a1111, separate, strict=True):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 3
        assert np.abs(np.asarray(a, np.int16) - np.asarray(c, np.int16)).max() <= 3
    target = instance_images()
    assert tiny_eval.palette_distance(ours, target) < tiny_eval.palette_distance(base, target)


OTHER_PROMPTS = ("a red circle", "a blue square on a white background", "a green triangle")


def test_prompts_without_the_token_keep_the_bases_look(predictor, trained):
    """Prior preservation: the same seed with the LoRA stays closer to the base than another seed is."""
    pipe = predictor.bases.get("tiny")
    lora = binding.bind(pipe, *lora_file.read_lora(trained.lora))
    base = {p: draw(pipe, p, SEEDS) for p in OTHER_PROMPTS}
    reseeded = {p: draw(pipe, p, range(100, 100 + len(SEEDS))) for p in OTHER_PROMPTS}
    with patching.applied(pipe, [lora], [1.0]):
        with_lora = {p: draw(pipe, p, SEEDS) for p in OTHER_PROMPTS}
    change = np.mean([image_measures.mean_abs_pixel_change(base[p], with_lora[p]) for p in OTHER_PROMPTS])
    seed_change = np.mean([image_measures.mean_abs_pixel_change(base[p], reseeded[p]) for p in OTHER_PROMPTS])
    colour_change = np.mean([tiny_eval.palette_distance(base[p], with_lora[p]) for p in OTHER_PROMPTS])
    print(
        f"other prompts: pixel change {change:.1f} vs a change of seed {seed_change:.1f}; colours {colour_change:.3f}"
    )
    # measured over 12 trainings (2 seeds x 6 prior sets): 0.24-0.52 of a change of seed; the promise is "less than one"
    assert change <= 0.6 * seed_change
    assert colour_change <= 0.05


def test_same_seed_same_lora_whatever_the_process_did_before(predictor, trained, tmp_path):
    """The shared predictor has trained and drawn grids already; a fresh one has done nothing. Keeping
    checkpoints copies tensors and changes nothing in the training: the last of 3 is the file of a training
    that kept one."""
    from safetensors.torch import load_file

    fresh = Predictor()
    fresh.setup()
    zip_path = zip_images(tmp_path / "few.zip", instance_images(4))
    given = {"instance_data": zip_path, "task": "object", "seed": 3, "max_train_steps": 10, "grid_steps": 2}
    a = load_file(call_predictor(predictor, **given, checkpoints=3).checkpoints[-1])
    b = load_file(call_predictor(fresh, **given, checkpoints=1).lora)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_zip_fails_before_training_and_leaves_no_output_dir(predictor, tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    before = set(Path(tempfile.gettempdir()).glob("train-*"))
    with pytest.raises(ValueError, match="not a readable .zip"):
        call_predictor(predictor, instance_data=bad, task="object")
    assert set(Path(tempfile.gettempdir()).glob("train-*")) == before
