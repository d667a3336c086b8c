"""SDXL LoRAs read, bound and applied on a random tiny SDXL pipeline (issue 20, step 2).

The pipeline is diffusers' own ``StableDiffusionXLPipeline`` (two text encoders, ``text_time`` conditioning) with
random weights, so what is checked here is names, shapes and the computation, compared with diffusers' own loader;
learning is tested on the trained tiny SDXL base (``tests/test_tiny_sdxl.py``).
"""

import numpy as np
import pytest
import torch

from conftest import pipe_weights
from lora_core.base import checkpoints, sampling
from lora_core.catalog import families
from lora_core.lora import binding, lora_convert, lora_file, lora_formats, patching, prompts, token_slots
from lora_core.lora.lora_file import LoRAFileError
from lora_core.tiny import tiny_sdxl

XL_META = {"ss_base_model_version": "sdxl_base_v1-0", "lora_studio.init_word": "circle"}


@pytest.fixture(scope="module")
def xl():
    pipe = tiny_sdxl.random_pipeline(checkpoints.weights_dir() / "tiny-sd", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd1():
    """Its own tiny SD pipeline: binding may add slot tokens, which the session's shared pipe must not see."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# the attention projections kohya's and diffusers' trainers target in the UNet and in CLIP
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def random_lora(pipe, seed=0, rank=4, tokens=2, scale=0.3):
    """diffusers/PEFT names on every attention projection the LoRA classics target, on each of the pipe's
    family's models, and token vectors for each of its text encoders under our (and kohya's) keys."""
    family = families.of_pipeline(pipe)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, shape in binding.module_table(pipe).shapes.items():
        if path.endswith(ATTENTION):
            tensors[f"{path}.lora_A.weight"] = torch.randn(rank, shape[1], generator=gen) * scale
            tensors[f"{path}.lora_B.weight"] = torch.randn(shape[0], rank, generator=gen) * scale
    for encoder, key in family.embedding_keys.items():
        width = getattr(pipe, encoder).config.hidden_size
        tensors[key] = torch.randn(tokens, width, generator=gen)
    return tensors


def draw(pipe, prompt, seed=0, negative=""):
    """One 64-pixel picture through ``sampling.sample`` (the prompt encoded once, a fresh scheduler per pass)."""
    request = sampling.SamplingRequest(
        prompt=prompt, negative_prompt=negative, width=64, height=64, num_inference_steps=4, guidance_scale=5, seed=seed
    )
    return np.asarray(sampling.sample(pipe, request)[0], np.int16)


def layers_only(tensors):
    return {k: v for k, v in tensors.items() if "lora_" in k}


def test_the_pipeline_is_known_by_its_models(xl, sd1):
    assert families.of_pipeline(xl).name == "sdxl" and families.of_pipeline(sd1).name == "sd-1"
    table = binding.module_table(xl)
    assert table.family == "sdxl"
    assert {path.split(".", 1)[0] for path in table.shapes} == {"unet", "text_encoder", "text_encoder_2"}
    assert binding.describe_base(xl, "base model 'x'") == (
        "base model 'x' (SDXL, UNet channels (32, 64, 64), text widths 24 and 40)"
    )


def test_sampling_an_sdxl_base_draws_what_its_pipeline_draws(xl):
    """``sampling.sample`` encodes the prompt once (both encoders, the pooled prompt) and calls the pipeline with
    the embeddings: the picture of diffusers' own call with the prompt, negative prompt and seed."""
    for negative in ("", "blue"):
        ours = draw(xl, "a red circle", seed=3, negative=negative)
        out = xl(
            "a red circle",
            negative_prompt=negative or None,
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=5,
            generator=torch.Generator().manual_seed(3),
            output_type="pil",
        )
        assert np.array_equal(ours, np.asarray(out.images[0], np.int16)), negative


def test_a_diffusers_sdxl_lora_draws_what_diffusers_own_loader_draws(xl):
    """Our merged patching against ``load_lora_weights`` (PEFT layers, unmerged) on UNet and both text encoders,
    on an identical pipeline: pixels within 1/255; and the base is bit for bit itself afterwards."""
    tensors = layers_only(random_lora(xl, seed=1))
    assert any(k.startswith("text_encoder_2.") for k in tensors) and any(k.startswith("text_encoder.") for k in tensors)
    before, base = pipe_weights(xl), draw(xl, "a red circle")
    adapter = binding.bind(xl, tensors, {})
    assert adapter.layout == "diffusers/PEFT" and len(adapter.layers) == len(tensors) // 2
    with patching.applied(xl, [adapter], [0.8]):
        ours = draw(xl, "a red circle")

    reference = tiny_sdxl.random_pipeline(checkpoints.weights_dir() / "tiny-sd", seed=0)
    reference.set_progress_bar_config(disable=True)
    assert np.array_equal(draw(reference, "a red circle"), base)
    reference.load_lora_weights(dict(tensors), adapter_name="x")
    reference.set_adapters(["x"], adapter_weights=[0.8])
    assert all("x" in getattr(reference, c).peft_config for c in ("unet", "text_encoder", "text_encoder_2"))
    theirs = draw(reference, "a red circle")

    assert np.abs(ours - base).max() > 10  # the LoRA changes the picture
    assert np.abs(ours - theirs).max() <= 1
    after = pipe_weights(xl)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert np.array_equal(draw(xl, "a red circle"), base)


def kohya_twin(xl, tensors, sgm: bool = True, embedding_name=None):
    """What kohya writes for SDXL: ``lora_te1_text_model_…``, ``lora_te2_text_model_…``, the UNet under the original
    SGM block names (``input_blocks_4_1_…``, what kohya trains on) or, as some converters write, diffusers' ones."""
    family = families.FAMILIES["sdxl"]
    if not sgm:
        family = family.model_copy(update={"kohya_unet_names": "diffusers"})
    return lora_convert.to_kohya(tensors, embedding_name, family, dict(xl.unet.config))


@pytest.mark.parametrize("sgm", [True, False], ids=["sgm-block-names", "diffusers-block-names"])
def test_kohya_sdxl_files_read_as_the_diffusers_file(xl, sgm):
    """kohya's SDXL names (``lora_te1_``/``lora_te2_``, the UNet in SGM's ``input_blocks``/``middle_block``/
    ``output_blocks`` or in diffusers' block names) resolve to exactly the layers of the diffusers file, and the
    bundled vectors to each text encoder's rows."""
    tensors = random_lora(xl, seed=2)
    table = binding.module_table(xl)
    ours = lora_formats.read_contents(tensors, {}, table)
    kohya = kohya_twin(xl, tensors, sgm, embedding_name="thing")
    assert {"bundle_emb.thing.clip_l", "bundle_emb.thing.clip_g"} <= set(kohya)
    assert any(k.startswith("lora_te1_text_model_encoder_") for k in kohya)
    assert any(k.startswith("lora_te2_text_model_encoder_") for k in kohya)
    blocks = ("_input_blocks_", "_middle_block_", "_output_blocks_")
    assert all(any(b in k for k in kohya) for b in blocks) == sgm
    theirs = lora_formats.read_contents(kohya, XL_META, table)
    assert theirs.layout == "kohya/A1111" and set(theirs.layers) == set(ours.layers)
    for path, layer in ours.layers.items():
        assert torch.equal(theirs.layers[path].down, layer.down) and torch.equal(theirs.layers[path].up, layer.up)
        assert theirs.layers[path].alpha == 4.0
    assert all(torch.equal(theirs.embeddings[e], ours.embeddings[e]) for e in ("text_encoder", "text_encoder_2"))


def test_the_kohya_twin_of_an_sdxl_lora_draws_in_diffusers_what_ours_draws(xl):
    """The SGM-named twin, loaded by diffusers' own kohya conversion (``load_lora_weights``), draws the picture our
    patching draws from the diffusers-named file: the names are the ones kohya's readers expect."""
    tensors = layers_only(random_lora(xl, seed=9))
    with patching.applied(xl, [binding.bind(xl, tensors, {})], [1.0]):
        ours = draw(xl, "a blue square")
    reference = tiny_sdxl.random_pipeline(checkpoints.weights_dir() / "tiny-sd", seed=0)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(kohya_twin(xl, tensors), adapter_name="kohya")
    assert all("kohya" in getattr(reference, c).peft_config for c in ("unet", "text_encoder", "text_encoder_2"))
    assert np.abs(draw(reference, "a blue square") - ours).max() <= 1


def test_sdxl_token_embeddings_read_per_text_encoder_in_every_layout(xl):
    """Ours and kohya's (``clip_l``/``clip_g``), A1111's bundled ones (``bundle_emb.<name>.clip_l``/``clip_g``, in
    file order) and cog-sdxl's ``embeddings.pti`` (``text_encoders_0``/``_1``): each encoder gets its own rows."""
    table = binding.module_table(xl)
    gen = torch.Generator().manual_seed(3)
    widths = [getattr(xl, e).config.hidden_size for e in ("text_encoder", "text_encoder_2")]
    first, second = (torch.randn(3, width, generator=gen) for width in widths)
    layouts = {
        "kohya": {"clip_l": first, "clip_g": second},
        "a1111 bundle": {
            "bundle_emb.first.clip_l": first[:2],
            "bundle_emb.first.clip_g": second[:2],
            "bundle_emb.second.clip_l": first[2:],
            "bundle_emb.second.clip_g": second[2:],
        },
        "cog-sdxl": {"text_encoders_0": first, "text_encoders_1": second},
    }
    for layout, tensors in layouts.items():
        contents = lora_formats.read_contents(tensors, {}, table)
        assert set(contents.embeddings) == {"text_encoder", "text_encoder_2"}, layout
        assert torch.equal(contents.embeddings["text_encoder"], first), layout
        assert torch.equal(contents.embeddings["text_encoder_2"], second), layout
        assert contents.tokens == ["<t0>", "<t1>", "<t2>"] and contents.layers == {}, layout
    # the two widths differ, as in SDXL (768 and 1280): vectors swapped between the encoders are refused
    with pytest.raises(
        LoRAFileError, match=r"token embeddings for text_encoder are 40 wide, the base's text encoder 24"
    ):
        binding.bind(xl, {"clip_l": second, "clip_g": first}, XL_META, "<1>")


def cog_sdxl_names(ours: dict) -> dict:
    """The UNet attention layers of one of our files in cog-sdxl's ``lora.safetensors`` names."""
    tensors = {}
    for key, value in layers_only(ours).items():
        if key.startswith("unet.") and ".attn" in key:
            module, _, rest = key[len("unet.") :].rpartition(".lora_")
            block, _, proj = module.rpartition(".")
            proj = "to_out" if module.endswith("to_out.0") else proj
            block = block.removesuffix(".to_out") if proj == "to_out" else block
            tensors[f"{block}.processor.{proj}_lora.{'down' if rest == 'A.weight' else 'up'}.weight"] = value
    return tensors


def test_cog_sdxl_lora_file_reads_as_unet_layers(xl):
    """cog-sdxl's ``lora.safetensors``: unprefixed attention-processor names, no alpha (alpha = rank)."""
    tensors = cog_sdxl_names(random_lora(xl, seed=4))
    contents = lora_formats.read_contents(tensors, {}, binding.module_table(xl))
    assert contents.layout == "diffusers/PEFT" and len(contents.layers) == len(tensors) // 2
    assert all(p.startswith("unet.") and layer.alpha == 4 for p, layer in contents.layers.items())


def cog_sdxl_tar(folder, members: dict[str, bytes]):
    """A tar as cog-sdxl's train.py writes one (``tarfile.open(out, "w")``, names relative to its output folder)."""
    import io
    import tarfile

    path = folder / "trained_model.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cog_sdxl_trained_model_tar_reads_as_one_lora(xl, tmp_path):
    """Replicate's SDXL trainer's output as its users hold it, ``trained_model.tar``, is one LoRA: the layers of its
    ``lora.safetensors`` and the vectors of its ``embeddings.pti`` bind exactly as the same LoRA in our file does.
    Other members (checkpoints, a name climbing out) are not read; a tar of a full UNet fine-tune, or a truncated
    one, is refused with a sentence."""
    import tarfile

    from safetensors.torch import save

    ours = random_lora(xl, seed=4)
    layers = cog_sdxl_names(ours)
    vectors = {"text_encoders_0": ours["clip_l"], "text_encoders_1": ours["clip_g"]}
    tar = cog_sdxl_tar(
        tmp_path,
        {
            "lora.safetensors": save(layers),
            "embeddings.pti": save(vectors),
            "special_params.json": b'{"TOK": "<s0><s1>"}',
            "checkpoint/lora-100.safetensors": b"not read",
            "../../escaped.safetensors": b"not read either",
        },
    )
    tensors, meta = lora_file.read_lora(tar, name="trained_model.tar")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and not (tmp_path.parent / "escaped.safetensors").exists()
    got = binding.bind(xl, tensors, meta, "<1>")
    same = {k: v for k, v in ours.items() if (k.startswith("unet.") and ".attn" in k) or k in ("clip_l", "clip_g")}
    want = binding.bind(xl, same, {"ss_base_model_version": "sdxl_base_v1-0"}, "<1>")
    assert got.layers.keys() == want.layers.keys() and len(got.layers) == len(layers) // 2
    for path, layer in want.layers.items():
        mine = got.layers[path]
        assert torch.equal(mine.down, layer.down) and torch.equal(mine.up, layer.up) and mine.alpha == layer.alpha
    assert got.embeddings.keys() == want.embeddings.keys() == {"text_encoder", "text_encoder_2"}
    assert all(torch.equal(got.embeddings[e], want.embeddings[e]) for e in want.embeddings)

    (tmp_path / "full").mkdir()
    full = cog_sdxl_tar(tmp_path / "full", {"unet.safetensors": save(layers)})
    with pytest.raises(LoRAFileError, match=r"holds unet.safetensors, a fine-tune of the UNet rather than a LoRA"):
        lora_file.read_lora(full, name="full.tar")
    linked = tmp_path / "linked.tar"  # lora.safetensors as a link to a file of the machine's: not followed
    with tarfile.open(linked, "w") as archive:
        link = tarfile.TarInfo("lora.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with pytest.raises(LoRAFileError, match=r"linked.tar is a tar that has no lora.safetensors"):
        lora_file.read_lora(linked, name="linked.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:2000])
    with pytest.raises(LoRAFileError, match=r"cut.tar is not a readable tar|has no lora.safetensors"):
        lora_file.read_lora(cut, name="cut.tar")


def test_concept_tokens_reach_both_text_encoders_and_leave_no_trace(xl):
    """``<1>`` becomes slot tokens in both tokenizers, their rows in both tables hold the scaled vectors during the
    block and zeros after; scale 0 is the init word and the base bit for bit."""
    tensors = random_lora(xl, seed=5)
    adapter = binding.bind(xl, tensors, XL_META)
    assert adapter.token_count == 2 and set(adapter.embeddings) == {"text_encoder", "text_encoder_2"}
    before, base = pipe_weights(xl), draw(xl, "a red circle")
    with patching.applied(xl, [adapter], [1.0]) as texts:
        _, ids = token_slots.reserve(xl, 2)
        for encoder, key in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
            rows = getattr(xl, encoder).get_input_embeddings().weight[ids[encoder]]
            assert torch.allclose(rows, tensors[key]), encoder
        with_token = draw(xl, prompts.expand("a red <1>", texts))
    assert texts == [token_slots.SLOT.format(0) + token_slots.SLOT.format(1)]
    with patching.applied(xl, [adapter], [0.0]) as texts:
        assert texts == ["circle"]
        assert np.array_equal(draw(xl, prompts.expand("a red <1>", texts)), base)
    assert not np.array_equal(with_token, base)
    for encoder in ("text_encoder", "text_encoder_2"):
        assert not getattr(xl, encoder).get_input_embeddings().weight[ids[encoder]].any()
    after = pipe_weights(xl)
    assert all(torch.equal(before[n], after[n]) for n in before if not n.endswith("token_embedding.weight"))


def test_a_lora_of_the_other_family_fails_with_both_families_named(xl, sd1):
    """An SD 1.x LoRA on SDXL and an SDXL LoRA on SD 1.x: one sentence naming both; the next LoRA binds."""
    sd1_lora = random_lora(sd1, seed=6)
    with pytest.raises(LoRAFileError, match=r"made for SD 1\.x \(trained on tiny\).*\(SDXL, UNet channels"):
        binding.bind(xl, sd1_lora, {"lora_studio.base_family": "sd-1", "lora_studio.base_model": "tiny"}, "<1>")
    with pytest.raises(LoRAFileError, match=r"made for SDXL.*\(SD 1\.x, UNet channels"):
        binding.bind(sd1, random_lora(xl, seed=7), XL_META, "<1>")
    # a textual inversion of one family on the other, with no metadata: the count of text encoders tells
    with pytest.raises(LoRAFileError, match=r"for 1 text encoder, and the base \(SDXL\) has 2; it was made for an"):
        binding.bind(xl, {"emb_params": torch.zeros(1, 32)}, {}, "<1>")
    with pytest.raises(LoRAFileError, match=r"for 2 text encoders, and the base \(SD 1\.x\) has 1; it was made for"):
        binding.bind(sd1, {"clip_l": torch.zeros(1, 64), "clip_g": torch.zeros(1, 64)}, {}, "<1>")
    # with it, the metadata decides (kohya's or the model-spec's words), whatever the tensors
    for meta in ({"ss_base_model_version": "sd_v1"}, {"modelspec.architecture": "stable-diffusion-v1/lora"}):
        with pytest.raises(LoRAFileError, match=r"made for SD 1\.x, and the base is this base \(SDXL.*\(here: tiny,"):
            binding.bind(xl, random_lora(xl, seed=8), meta, "<1>")
    assert binding.bind(xl, random_lora(xl, seed=8), XL_META).token_count == 2


def test_a_trained_sdxl_lora_is_packed_with_both_encoders_and_reads_back(xl, tmp_path):
    """``pack_trained`` for SDXL: both text encoders' LoRAs under diffusers' prefixes, the token vectors under kohya's
    ``clip_l``/``clip_g``; written and read back, it binds to the same layers and rows."""
    tensors = random_lora(xl, seed=10)
    by_component: dict = {}
    for key, value in layers_only(tensors).items():
        component, rest = key.split(".", 1)
        by_component.setdefault(component, {})[rest] = value
    unet = by_component.pop("unet")
    rows = {"text_encoder": tensors["clip_l"], "text_encoder_2": tensors["clip_g"]}
    packed = lora_file.pack_trained(unet, by_component, rows, families.FAMILIES["sdxl"])
    assert set(packed) == set(tensors)
    path = lora_file.write_lora(tmp_path / "xl.safetensors", packed, XL_META)
    adapter = binding.bind(xl, *lora_file.read_lora(path))
    assert len(adapter.layers) == len(layers_only(tensors)) // 2
    assert all(torch.equal(adapter.embeddings[e], rows[e]) for e in rows)


def test_training_an_sdxl_lora_learns_both_encoders_tokens_and_leaves_the_base(xl):
    """The trainer on SDXL: new tokens in both tokenizers' copies, LoRAs on the UNet and both text encoders, the UNet
    conditioned as diffusers' SDXL pipeline conditions it (penultimate states side by side, pooled prompt, sizes).
    Learning, against the step-1 LoRA of the same run: the denoising loss on the training pictures falls. The warm
    base is bit for bit what it was, and the file packed from it binds."""
    from diffusers import DDPMScheduler

    from conftest import purple_stars
    from lora_core.training import conditioning, trainer
    from lora_core.training.preprocess import Example

    examples = [
        Example(f"s{i}", im.resize((64, 64)), None, "a photo of <s0><s1>") for i, im in enumerate(purple_stars(4))
    ]
    cfg = trainer.TrainingConfig(
        steps=120,
        batch_size=4,
        resolution=64,
        rank=4,
        learning_rate=5e-3,
        learning_rate_text=1e-3,
        learning_rate_embeddings=3e-3,
        train_text_encoder=True,
        train_resnets=True,
        tokens=("<s0>", "<s1>"),
        init_word="circle",
        seed=0,
    )
    before = pipe_weights(xl)
    first, last = trainer.train_checkpoints(xl, examples, cfg, (1, 120), log=lambda _: None)
    after = pipe_weights(xl)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert set(last.text_encoders) == set(last.embeddings) == {"text_encoder", "text_encoder_2"}
    assert last.embeddings["text_encoder_2"].shape == (2, 40) and last.text_encoders["text_encoder_2"]

    family = families.FAMILIES["sdxl"]
    latents, _ = trainer.encode_examples(xl.vae, examples, 1.0)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(100, 900, (len(latents),), generator=gen)

    schedule = DDPMScheduler.from_config(xl.scheduler.config)
    noisy = schedule.add_noise(latents, noise, t)

    def loss(trained) -> float:
        packed = lora_file.pack_trained(trained.unet, trained.text_encoders, trained.embeddings, family)
        with patching.applied(xl, [binding.bind(xl, packed, XL_META)], [1.0]) as texts, torch.no_grad():
            prompt = prompts.expand("a photo of <1>", texts)
            ids = {}
            for tokenizer_name, encoder in family.text_pairs:
                tokenizer = getattr(xl, tokenizer_name)
                ids[encoder] = tokenizer(
                    [prompt] * len(latents),
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    return_tensors="pt",
                ).input_ids
            encoders = {e: getattr(xl, e) for e in family.text_encoders}
            states, added = conditioning.encode(family, encoders, ids, 64)
            pred = xl.unet(noisy, t, states, added_cond_kwargs=added).sample
        return float(((pred - noise) ** 2).mean())

    before_training, trained = loss(first), loss(last)
    assert trained < 0.8 * before_training, (before_training, trained)


def test_a_training_on_an_sdxl_base_writes_files_that_draw_alike(xl, tmp_path, monkeypatch):
    """A whole training prediction (``training_job``) on an SDXL checkpoint: our file holds both encoders' LoRAs
    and ``clip_l``/``clip_g`` and says SDXL as kohya and the model-spec do; its kohya twin is in SGM names with the
    bundled vectors; both draw the same picture with ``<1>``, and the report and grid come out."""
    from conftest import purple_stars, zip_images
    from lora_core.training import training_job

    checkpoint = checkpoints.Checkpoint(
        name="xl-random",
        description="a random tiny SDXL (tests only)",
        family="sdxl",
        layout="diffusers",
        path="unused",
        defaults=checkpoints.SamplingDefaults(width=64, height=64, num_inference_steps=4, guidance_scale=5.0),
        train_lr_scale=10.0,
        train_batch_size=4,
        prior_images=0,
    )
    monkeypatch.setitem(checkpoints.REGISTRY, checkpoint.name, checkpoint)
    request = training_job.TrainingRequest(
        task="object", base_model=checkpoint.name, seed=0, max_train_steps=20, checkpoints=2, grid_steps=2
    )
    zip_path = zip_images(tmp_path / "in.zip", purple_stars(5))
    result = training_job.run_training(xl, "0" * 12, zip_path, request, tmp_path / "out", log=lambda _: None)

    tensors, meta = lora_file.read_lora(result.lora)
    assert {"clip_l", "clip_g"} <= set(tensors) and any(k.startswith("text_encoder_2.") for k in tensors)
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == (
        "sdxl_base_v1-0",
        "stable-diffusion-xl-v1-base/lora",
    )
    kohya, _ = lora_file.read_lora(result.lora_a1111)
    assert {"bundle_emb.object0.clip_l", "bundle_emb.object0.clip_g"} <= set(kohya)
    assert any("_input_blocks_" in k for k in kohya) and any(k.startswith("lora_te2_") for k in kohya)
    assert len(result.checkpoints) == 2 and result.grid.stat().st_size > 0 and result.report.stat().st_size > 0
    vectors, embedding_meta = lora_file.read_lora(result.embedding)  # ComfyUI's and A1111's SDXL embedding keys
    assert set(vectors) == {"clip_l", "clip_g"} and result.embedding.name == "object0.safetensors"
    assert embedding_meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/textual-inversion"

    pictures = []
    for path in (result.lora, result.lora_a1111):
        adapter = binding.bind(xl, *lora_file.read_lora(path))
        with patching.applied(xl, [adapter], [1.0]) as texts:
            pictures.append(draw(xl, prompts.expand("a photo of <1>", texts)))
    assert np.abs(pictures[0] - pictures[1]).max() <= 1
    assert not np.array_equal(pictures[0], draw(xl, "a photo of object"))


def test_a_float16_vae_that_asks_for_it_encodes_the_photos_in_float32():
    """SDXL's VAE overflows float16 (its config says ``force_upcast``), which would make every training latent NaN
    on a GPU: training encodes with it in float32, as diffusers' SDXL pipelines decode, and leaves it in float16.
    Shown on the tiny VAE with its first convolution scaled until its outputs pass float16's 65504."""
    from diffusers import AutoencoderKL

    from lora_core.tiny import tiny_world
    from lora_core.training import trainer
    from lora_core.training.preprocess import Example

    vae = AutoencoderKL.from_pretrained(checkpoints.DEFAULT_WEIGHTS_DIR / "tiny-sdxl" / "vae")
    with torch.no_grad():  # its largest weight 30000, still a float16 number; its outputs pass 65504
        vae.encoder.conv_in.weight *= 30000 / vae.encoder.conv_in.weight.abs().max()
    vae = vae.to(torch.float16)
    images = tiny_world.concept_images("star", "purple", 2, first_seed=0)
    examples = [Example(f"{i}", image.resize((64, 64)), None, "") for i, image in enumerate(images)]
    exact = AutoencoderKL.from_config(vae.config).to(torch.float32)
    exact.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})  # the same float16 weights, in float32

    vae.register_to_config(force_upcast=False)
    overflowed, _ = trainer.encode_examples(vae, examples, 1.0)
    assert not torch.isfinite(overflowed).all()  # what a float16 encode gives
    vae.register_to_config(force_upcast=True)
    latents, _ = trainer.encode_examples(vae, examples, 1.0)
    assert vae.dtype == torch.float16 and torch.isfinite(latents).all()
    assert torch.equal(latents, trainer.encode_examples(exact, examples, 1.0)[0])
