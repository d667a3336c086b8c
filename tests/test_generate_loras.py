"""The generation predictor with LoRAs fetched over HTTP from 127.0.0.1, trained here by the trainer."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import Files, call_predictor, cloneofsimo_modules, local_generator, purple_stars, serve_folder
from lora_core.base import checkpoints
from lora_core.lora import lora_file
from lora_core.lora.prompts import PromptError
from lora_core.net.fetch import FetchError
from lora_core.tiny import tiny_eval, tiny_world

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

SEED = 4


def concept(shape, colour, n=8):
    return tiny_world.concept_images(shape, colour, n, first_seed=300)


def save_with_diffusers(tensors, rank, path):
    """The LoRA as diffusers' own ``save_lora_weights`` writes it (PEFT names, alpha in its metadata), no tokens."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    parts = {
        c: {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(c + ".")}
        for c in ("unet", "text_encoder")
    }
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q"]).to_dict()
    StableDiffusionPipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=parts["unet"],
        text_encoder_lora_layers=parts["text_encoder"],
        weight_name=path.name,
        unet_lora_adapter_metadata=config,
        text_encoder_lora_adapter_metadata=config,
    )


def as_cloneofsimo(pipe, tensors):
    """The LoRA (alpha = rank) as cloneofsimo/lora's ``save_safeloras_with_embeds`` lays it out, fp16 like there."""
    weights, metadata = {}, {}
    for component, classes in (("unet", {"Attention", "ResnetBlock2D"}), ("text_encoder", {"CLIPAttention"})):
        metadata[component] = json.dumps(sorted(classes))
        for i, (path, module) in enumerate(cloneofsimo_modules(getattr(pipe, component), classes)):
            down = tensors.get(f"{component}.{path}.lora_A.weight")
            up = tensors.get(f"{component}.{path}.lora_B.weight")
            if down is None:  # a layer this LoRA did not train: cloneofsimo stores it anyway
                shape = module.weight.shape
                down, up = torch.zeros(4, *shape[1:]), torch.zeros(shape[0], 4, *([1, 1] if len(shape) == 4 else []))
            weights[f"{component}:{i}:down"], weights[f"{component}:{i}:up"] = down.half(), up.half()
            metadata[f"{component}:{i}:rank"] = str(down.shape[0])
    for i, row in enumerate(tensors["emb_params"]):
        weights[f"<s{i + 1}>"], metadata[f"<s{i + 1}>"] = row.clone(), "<embed>"
    return weights, metadata


@pytest.fixture(scope="module")
def served(tmp_path_factory, preset_lora):
    """Two LoRAs trained by the trainer (purple stars, orange triangles) and two bad files, on a local server."""
    root = tmp_path_factory.mktemp("served")
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    # The preset's 800 steps (the stars are the training tests' LoRA). Orange triangles train unreliably on the tiny
    # base (seeds 0 and 5 of 0/4/5 miss the colour at scale 1; stars reach it for 6 of 6 seeds): this file tests
    # generation, so it uses a seed that works.
    for name, images, seed, kept in (
        ("stars", purple_stars(), 1, 4),
        ("triangles", concept("triangle", "orange"), 4, 1),
    ):
        result = preset_lora(name, images, seed, checkpoints=kept)  # stars: shared with test_predict_train
        (root / f"{name}.safetensors").write_bytes(result.lora.read_bytes())
        (root / f"{name}-a1111.safetensors").write_bytes(result.lora_a1111.read_bytes())
    tensors, metadata = lora_file.read_lora(root / "stars.safetensors")
    save_file({"emb_params": tensors["emb_params"]}, root / "embeddings-only.safetensors", metadata=metadata)
    save_with_diffusers(tensors, int(metadata["lora_studio.rank"]), root / "stars-peft.safetensors")
    weights, meta = as_cloneofsimo(pipe, tensors)
    save_file(weights, root / "stars-cloneofsimo.safetensors", metadata=meta)
    # made for a bigger base (SD-1.5-sized attention): must be refused with one sentence
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 320),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(320, 4),
        },
        root / "other-base.safetensors",
        metadata={"ss_base_model_version": "sd_v2"},
    )
    (root / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    with serve_folder(root) as url:
        yield url


@pytest.fixture(scope="module")
def predictor(served, tmp_path_factory):
    return local_generator(tmp_path_factory.mktemp("cache"))


def pixels(predictor, **given):
    paths = call_predictor(predictor, seed=SEED, num_outputs=2, **given)
    return [np.asarray(Image.open(p), np.int16) for p in paths]


def images(predictor, **given):
    return [Image.open(p).convert("RGB") for p in call_predictor(predictor, seed=SEED, num_outputs=4, **given)]


def test_scale_0_is_the_base_model_bit_for_bit(predictor, served):
    base = pixels(predictor, prompt="a photo of object")
    zero = pixels(predictor, prompt="a photo of <1>", lora_urls=f"{served}/stars.safetensors", lora_scales="0")
    assert all(np.array_equal(a, b) for a, b in zip(base, zero, strict=True))


def test_the_effect_grows_with_the_scale(predictor, served):
    url, stars = f"{served}/stars.safetensors", concept("star", "purple")
    distance = {
        s: tiny_eval.palette_distance(
            images(predictor, prompt="a photo of <1>", lora_urls=url, lora_scales=str(s)), stars
        )
        for s in (0, 0.25, 0.5, 1.0)
    }
    print("palette distance to the training images by scale:", distance)
    assert distance[0] > distance[0.25] > distance[0.5]
    assert distance[1.0] <= distance[0.5] + 0.02  # saturated: the training images' colours are reached
    assert distance[1.0] < 0.2


def test_two_loras_each_draw_their_own_concept_and_order_does_not_matter(predictor, served):
    """At the default scale 0.5 each; at 1|1 two independently trained LoRAs interfere (their deltas sum)."""
    urls = f"{served}/stars.safetensors|{served}/triangles.safetensors"
    stars = images(predictor, prompt="a photo of <1>", lora_urls=urls)
    triangles = images(predictor, prompt="a photo of <2>", lora_urls=urls)
    purple, orange = concept("star", "purple"), concept("triangle", "orange")
    to_own = tiny_eval.palette_distance(stars, purple), tiny_eval.palette_distance(triangles, orange)
    to_other = tiny_eval.palette_distance(stars, orange), tiny_eval.palette_distance(triangles, purple)
    print("two LoRAs, palette distance to own / other concept:", to_own, to_other)
    assert to_own[0] < 0.5 * to_other[0] and to_own[1] < 0.5 * to_other[1]
    swapped = f"{served}/triangles.safetensors|{served}/stars.safetensors"
    again = images(predictor, prompt="a photo of <2>", lora_urls=swapped)
    assert (
        max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in zip(stars, again, strict=True))
        <= 3
    )


def test_each_lora_alone_draws_its_concept(predictor, served):
    for name, shape, colour in (("stars", "star", "purple"), ("triangles", "triangle", "orange")):
        drawn = images(predictor, prompt="a photo of <1>", lora_urls=f"{served}/{name}.safetensors", lora_scales="1")
        assert tiny_eval.palette_distance(drawn, concept(shape, colour)) < 0.1, name


def test_a_file_with_token_embeddings_only_works(predictor, served):
    base = pixels(predictor, prompt="a photo of object")
    tokens_only = pixels(
        predictor, prompt="a photo of <1>", lora_urls=f"{served}/embeddings-only.safetensors", lora_scales="1"
    )
    assert not all(np.array_equal(a, b) for a, b in zip(base, tokens_only, strict=True))


def test_the_a1111_twin_acts_like_our_file(predictor, served):
    ours = pixels(predictor, prompt="a photo of <1>", lora_urls=f"{served}/stars.safetensors", lora_scales="0.8")
    theirs = pixels(
        predictor, prompt="a photo of <1>", lora_urls=f"{served}/stars-a1111.safetensors", lora_scales="0.8"
    )
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True)) <= 3


@pytest.mark.parametrize("twin,prompt", [("stars-peft", "a photo of a star"), ("stars-cloneofsimo", "a photo of <1>")])
def test_diffusers_and_cloneofsimo_files_of_the_same_lora_act_like_ours(predictor, served, twin, prompt):
    """The diffusers file has no tokens, so its prompt names none; the cloneofsimo file carries them."""
    base = pixels(predictor, prompt=prompt.replace("<1>", "object"))
    ours = pixels(predictor, prompt=prompt, lora_urls=f"{served}/stars.safetensors", lora_scales="1")
    theirs = pixels(predictor, prompt=prompt, lora_urls=f"{served}/{twin}.safetensors", lora_scales="1")
    assert max(np.abs(a - b).mean() for a, b in zip(base, ours, strict=True)) > 3  # the LoRA changes the picture...
    assert (
        max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True)) <= 3
    )  # ...and the twin changes it the same way


def test_a_cached_url_is_not_fetched_again(predictor, served):
    url = f"{served}/stars.safetensors"
    pixels(predictor, prompt="a photo of <1>", lora_urls=url, lora_scales="0.5")
    before = Files.gets["/stars.safetensors"]
    pixels(predictor, prompt="a photo of <1>", lora_urls=url, lora_scales="0.7")
    assert Files.gets["/stars.safetensors"] == before == 1


@pytest.mark.parametrize(
    "given,error,message",
    [
        (
            {"lora_urls": "{s}/other-base.safetensors"},
            lora_file.LoRAFileError,
            "does not fit this base.*made for SD 2.x",
        ),
        ({"lora_urls": "{s}/pickle.safetensors"}, lora_file.LoRAFileError, "is a pickle"),
        ({"lora_urls": "{s}/missing.safetensors"}, FetchError, "HTTP 404"),
        ({"lora_urls": "http://169.254.169.254/x.safetensors"}, FetchError, "private or local"),
        ({"lora_urls": "{s}/stars.safetensors", "lora_scales": "0.5|0.5"}, PromptError, "2 values for 1 LoRA"),
        ({"lora_urls": "{s}/stars.safetensors", "prompt": "<2>"}, PromptError, "mentions <2>"),
    ],
)
def test_bad_loras_fail_that_prediction_only_and_the_base_stays_pristine(predictor, served, given, error, message):
    base = pixels(predictor, prompt="a photo of object")
    inputs = {"prompt": "a photo of <1>", "lora_scales": "0.8", **given}
    inputs["lora_urls"] = inputs["lora_urls"].format(s=served)
    with pytest.raises(error, match=message):
        call_predictor(predictor, **inputs)
    assert all(np.array_equal(a, b) for a, b in zip(base, pixels(predictor, prompt="a photo of object"), strict=True))
