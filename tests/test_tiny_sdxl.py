"""The embedded tiny SDXL base (``weights/tiny-sdxl``): a plain diffusers SDXL pipeline on which LoRAs learn, and the
script that builds it from the tiny SD base, in its few-step mode. Its prompts are tested beside tiny SD's
(``test_tiny_base_prompts.py``)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from conftest import call_predictor, local_generator, serve_folder
from lora_core.base import checkpoints
from lora_core.catalog import families
from lora_core.lora import lora_file
from lora_core.tiny import tiny_eval, tiny_sdxl
from lora_core.tiny.tiny_sdxl_build import XLBuildConfig, build_tiny_sdxl, warm_unet

TINY_SD = checkpoints.weights_dir() / "tiny-sd"
TINY_SDXL = checkpoints.weights_dir() / "tiny-sdxl"


def test_the_warm_unet_predicts_what_tiny_sds_does():
    """The build's starting point: tiny SD's UNet in SDXL's shape (linear projections, a new ``add_embedding`` that
    adds zero) is the same function of the latents, the time and the context, whatever the pooled prompt and sizes."""
    sd_unet = StableDiffusionPipeline.from_pretrained(TINY_SD).unet.eval()
    xl_unet = warm_unet(sd_unet).eval()
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 12, 64, generator=gen)
    t = torch.tensor([10, 700])
    pooled = torch.randn(2, tiny_sdxl.TEXT_WIDTHS[1], generator=gen)
    added = {"text_embeds": pooled, "time_ids": torch.rand(2, 6, generator=gen) * 64}
    with torch.no_grad():
        expected = sd_unet(x, t, context).sample
        got = xl_unet(x, t, context, added_cond_kwargs=added).sample
    # a 1x1 convolution there, a linear layer here: the same sums in another order, so float noise only
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())


def test_the_quick_build_writes_a_plain_sdxl_pipeline_and_repeats_itself(tmp_path):
    lines = []
    out = build_tiny_sdxl(TINY_SD, tmp_path / "out", tmp_path / "work", XLBuildConfig.quick(), lines.append)
    assert any(line.startswith("distil: step 3/3") for line in lines) and any("unet: step 3/3" in x for x in lines)
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    image = pipe("a red square", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    again = build_tiny_sdxl(TINY_SD, tmp_path / "out2", tmp_path / "work2", XLBuildConfig.quick(), lambda _: None)
    for part in ("unet", "text_encoder", "text_encoder_2"):
        first, second = (load_file(next((folder / part).glob("*.safetensors"))) for folder in (out, again))
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), part


def test_a_work_dir_of_another_configuration_is_refused(tmp_path):
    build_tiny_sdxl(TINY_SD, tmp_path / "out", tmp_path / "work", XLBuildConfig.quick(), lambda _: None)
    with pytest.raises(RuntimeError, match="another configuration"):
        build_tiny_sdxl(TINY_SD, tmp_path / "out", tmp_path / "work", XLBuildConfig(n_images=5), lambda _: None)


def test_the_committed_base_is_a_plain_sdxl_pipeline_of_the_tiny_world():
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL)
    assert families.of_pipeline(pipe).name == "sdxl" and pipe.unet.config.addition_embed_type == "text_time"
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == widths
    # tiny SD's VAE and tokenizer: the world's latents, so prompts and LoRA concepts mean the same on both bases
    for part in ("vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json", "tokenizer_2/vocab.json"):
        source = part.replace("tokenizer_2", "tokenizer")
        assert (TINY_SDXL / part).read_bytes() == (TINY_SD / source).read_bytes(), part
    size = sum(f.stat().st_size for f in TINY_SDXL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20, size


def test_a_single_file_export_loads_back_exactly_with_diffusers_own_loader(tmp_path):
    """SGM's layout (``label_emb``, ``conditioner.embedders.0`` CLIP and ``.1`` OpenCLIP names), read back by
    ``from_single_file`` with the folder's configs: every weight equal, the same pixels. The encoders' unequal widths
    are what lets diffusers tell them apart, as in SDXL."""
    from lora_core.base import sampling
    from lora_core.base.single_file import export_single_file

    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny-xl"))
    path = export_single_file(pipe, tmp_path / "tiny-xl.safetensors")
    keys = set(load_file(path))
    assert {
        "model.diffusion_model.label_emb.0.2.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
    } <= keys
    (tmp_path / "tiny-sdxl").symlink_to(TINY_SDXL, target_is_directory=True)
    single = checkpoints.get_checkpoint("tiny-xl").model_copy(
        update={"layout": "single_file", "path": path.name, "config": "tiny-sdxl"}
    )
    loaded = checkpoints.load_pipeline(single, root=tmp_path)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert set(a) <= set(b) and all(torch.equal(a[k], b[k]) for k in a), part
    request = sampling.resolve_request(single.defaults, prompt="a blue star", seed=3)
    drawn = [np.asarray(sampling.sample(p, request)[0]) for p in (pipe, loaded)]
    assert np.array_equal(*drawn)


# ---- LoRAs on it: learning, and the family check through the predictors ---------------------------------------


@pytest.fixture(scope="module")
def xl_stars(preset_lora):
    """The object preset on the purple stars (a concept the world never shows), on the tiny SDXL base."""
    from conftest import purple_stars

    return preset_lora("xl-stars", purple_stars(), seed=1, base_model="tiny-xl")


@pytest.fixture(scope="module")
def served(xl_stars, tmp_path_factory):
    """The SDXL stars LoRA and a kohya SD 1.x LoRA of the UNet's attention alone (whose layers fit the tiny SDXL
    UNet too: only its metadata tells the families apart), on a local server."""
    from safetensors.torch import save_file

    from lora_core.lora import binding, lora_convert

    root = tmp_path_factory.mktemp("served")
    (root / "xl-stars.safetensors").write_bytes(xl_stars.lora.read_bytes())
    sd = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    gen, tensors = torch.Generator().manual_seed(0), {}
    for path, shape in binding.module_table(sd).shapes.items():
        if path.startswith("unet.") and path.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            tensors[f"{path}.lora_A.weight"] = torch.randn(4, shape[1], generator=gen) * 0.1
            tensors[f"{path}.lora_B.weight"] = torch.randn(shape[0], 4, generator=gen) * 0.1
    kohya = lora_convert.to_kohya(tensors, family=families.SD1)
    save_file(kohya, root / "sd1-unet.safetensors", metadata={"ss_base_model_version": "sd_v1"})
    with serve_folder(root) as url:
        yield url


@pytest.fixture(scope="module")
def generator(served, tmp_path_factory):
    return local_generator(tmp_path_factory.mktemp("cache"))


def images(generator, **given) -> list[Image.Image]:
    """Eight pictures through the generation predictor, as Cog calls it: seeds 0-3 and 4-7."""
    return [
        Image.open(path).convert("RGB")
        for seed in (0, 4)
        for path in call_predictor(generator, seed=seed, num_outputs=4, **given)
    ]


@pytest.mark.slow
def test_a_lora_trained_on_the_tiny_sdxl_base_learns_a_concept_it_never_saw(xl_stars, generator, served):
    """The SD 1.x learning test's measure: at scale 1 the palette distance to the photos is at most half the
    base's, 0.5 is between, and scale 0 draws the base's pixels."""
    from conftest import purple_stars

    _, meta = lora_file.read_lora(xl_stars.lora)
    assert (meta["lora_studio.base_model"], meta["ss_base_model_version"]) == ("tiny-xl", "sdxl_base_v1-0")
    url = f"{served}/xl-stars.safetensors"
    base = images(generator, prompt="a photo of object", base_model="tiny-xl")
    drawn = {
        s: images(generator, prompt="a photo of <1>", lora_urls=url, lora_scales=str(s), base_model="tiny-xl")
        for s in (0, 0.5, 1)
    }
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn[0], base, strict=True))
    distance = {s: tiny_eval.palette_distance(pictures, purple_stars()) for s, pictures in drawn.items()}
    print("palette distance to the photos by scale:", distance)
    assert distance[0] >= 0.5, distance  # the base draws other things for the prompt: there is a gap to close
    assert distance[0.5] < distance[0] and distance[1] <= 0.5 * distance[0], distance


@pytest.mark.slow
def test_a_lora_of_the_other_family_fails_that_prediction_alone(generator, served):
    """Each way round, one sentence naming both families and the bases of the LoRA's own; the kohya SD 1.x file's
    layers fit the tiny SDXL UNet, so its metadata decides. The next prediction, each on its own base, succeeds."""
    xl_lora, sd_lora = f"{served}/xl-stars.safetensors", f"{served}/sd1-unet.safetensors"
    for url, base, made_for in ((xl_lora, "tiny", "SDXL"), (sd_lora, "tiny-xl", "SD 1.x")):
        with pytest.raises(lora_file.LoRAFileError) as refused:
            call_predictor(generator, prompt="a photo of <1>", lora_urls=url, base_model=base)
        message = str(refused.value)
        other = {"SDXL": "SD 1.x", "SD 1.x": "SDXL"}[made_for]
        assert f"made for {made_for}" in message and f"base model '{base}' ({other}" in message, message
        assert "(here: " in message and "\n" not in message, message
    for url, base in ((xl_lora, "tiny-xl"), (sd_lora, "tiny")):
        paths = call_predictor(generator, prompt="a photo of <1>", lora_urls=url, base_model=base, seed=1)
        assert Image.open(paths[0]).size == (64, 64)


@pytest.mark.slow
def test_a_cog_sdxl_tar_url_draws_as_the_same_lora_in_our_file(xl_stars, generator, tmp_path):
    """The stars LoRA as Replicate's SDXL trainer would hand it over (``trained_model.tar``: its UNet attention
    layers in attention-processor names and its tokens in ``embeddings.pti``), given in ``lora_urls``, draws the
    pixels of the same layers and tokens in our file, and not the base's."""
    from safetensors.torch import save, save_file
    from test_sdxl_loras import cog_sdxl_names, cog_sdxl_tar

    tensors, _ = lora_file.read_lora(xl_stars.lora)
    kept = {k: v for k, v in tensors.items() if (k.startswith("unet.") and ".attn" in k) or k in ("clip_l", "clip_g")}
    vectors = {"text_encoders_0": tensors["clip_l"], "text_encoders_1": tensors["clip_g"]}
    cog_sdxl_tar(tmp_path, {"lora.safetensors": save(cog_sdxl_names(kept)), "embeddings.pti": save(vectors)})
    save_file(kept, tmp_path / "same.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    given = dict(prompt="a photo of <1>", seed=3, num_outputs=2, base_model="tiny-xl", lora_scales="1")
    with serve_folder(tmp_path) as url:
        from_tar = call_predictor(generator, lora_urls=f"{url}/trained_model.tar", **given)
        from_ours = call_predictor(generator, lora_urls=f"{url}/same.safetensors", **given)
        base = call_predictor(generator, lora_urls=f"{url}/same.safetensors", **{**given, "lora_scales": "0"})
    tar_pixels, our_pixels, base_pixels = ([np.asarray(Image.open(p)) for p in o] for o in (from_tar, from_ours, base))
    assert all(np.array_equal(a, b) for a, b in zip(tar_pixels, our_pixels, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(tar_pixels, base_pixels, strict=True))
