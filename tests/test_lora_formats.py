"""Every LoRA layout reads into the same per-module layers (no sampling here: tensors only)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import cloneofsimo_modules
from lora_core.lora import binding, lora_formats
from lora_core.lora.lora_convert import to_kohya
from lora_core.lora.lora_formats import LayerMismatch, UnsupportedLayout, read_contents

RANK = 4


@pytest.fixture(scope="module")
def table(tiny_pipe):
    return binding.module_table(tiny_pipe)


def ours(table, targets=("to_q", "to_k", "to_v", "to_out.0", "conv1", "q_proj", "out_proj"), seed=0):
    """A random LoRA in our layout (PEFT names) on every module whose path ends in one of ``targets``."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, shape in table.shapes.items():
        if not path.endswith(targets):
            continue
        down_shape = (RANK, shape[1], *shape[2:])
        up_shape = (shape[0], RANK, *([1, 1] if len(shape) == 4 else []))
        tensors[f"{path}.lora_A.weight"] = torch.randn(down_shape, generator=gen)
        tensors[f"{path}.lora_B.weight"] = torch.randn(up_shape, generator=gen)
    tensors["emb_params"] = torch.randn(2, 64, generator=gen)
    return tensors


def same_layers(a: lora_formats.Contents, b: lora_formats.Contents, alpha_ratio: float = 1.0):
    assert a.layers.keys() == b.layers.keys()
    for path in a.layers:
        la, lb = a.layers[path], b.layers[path]
        delta_a = la.up.float().flatten(1) @ la.down.float().flatten(1) * la.alpha / la.rank
        delta_b = lb.up.float().flatten(1) @ lb.down.float().flatten(1) * lb.alpha / lb.rank
        torch.testing.assert_close(delta_a * alpha_ratio, delta_b, msg=path)
    return True


def test_our_layout_binds_every_layer(table):
    tensors = ours(table)
    contents = read_contents(tensors, {"lora_studio.tokens": '["<s0>", "<s1>"]'}, table)
    assert contents.layout == "diffusers/PEFT"
    assert len(contents.layers) == (len(tensors) - 1) // 2 > 40
    assert any(p.startswith("text_encoder.") for p in contents.layers)
    assert contents.tokens == ["<s0>", "<s1>"] and contents.embeddings["text_encoder"].shape == (2, 64)
    assert all(layer.alpha == RANK for layer in contents.layers.values())  # alpha = rank when the file is silent


def test_kohya_a1111_layout_reads_the_same(table):
    tensors = ours(table)
    reference = read_contents(tensors, {}, table)
    kohya = to_kohya(tensors, "thing")
    for key in [k for k in kohya if k.endswith(".alpha")]:
        kohya[key] = torch.tensor(2.0)  # alpha 2 of rank 4: half the effect
    contents = read_contents(kohya, {}, table)
    assert contents.layout == "kohya/A1111" and contents.embeddings["text_encoder"].shape == (2, 64)
    assert same_layers(reference, contents, alpha_ratio=0.5)


def ldm_name(kohya_key: str, layers_per_block: int) -> str:
    """A kohya UNet name with diffusers' blocks -> the original LDM block numbering, written from the SD-1 layout
    (input_blocks 1.. hold each down block's layers then its downsampler; output_blocks hold each up block's
    layers + 1), independently of the code under test."""
    lpb = layers_per_block
    patterns = (
        (r"down_blocks_(\d+)_attentions_(\d+)", lambda b, i: f"input_blocks_{1 + b * (lpb + 1) + i}_1"),
        (r"mid_block_attentions_0()()", lambda *_: "middle_block_1"),
        (r"up_blocks_(\d+)_attentions_(\d+)", lambda b, i: f"output_blocks_{b * (lpb + 1) + i}_1"),
    )
    for pattern, ldm in patterns:
        if m := re.search(pattern, kohya_key):
            groups = [int(g) for g in m.groups() if g]
            return kohya_key[: m.start()] + ldm(*groups) + kohya_key[m.end() :]
    return kohya_key


@pytest.fixture(scope="module")
def sd15_table(tiny_pipe):
    """SD 1.5's UNet (two layers per block, not tiny's one), built on the meta device: names and shapes only."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    return binding.module_table(SimpleNamespace(unet=unet, text_encoder=tiny_pipe.text_encoder))


@pytest.mark.parametrize("base", ["tiny", "sd15"])
def test_kohya_files_with_ldm_block_names_read_the_same(base, request):
    """Older Civitai files (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``), attention layers as
    classic LoRAs target: the same layers as our own file, not "made for another base"."""
    table = request.getfixturevalue("table" if base == "tiny" else "sd15_table")
    tensors = ours(table, targets=("to_q", "to_k", "to_v", "to_out.0", "q_proj"))
    reference = read_contents(tensors, {}, table)
    layers_per_block = sum(1 for p in table.classes if re.fullmatch(r"unet\.down_blocks\.0\.resnets\.\d+", p))
    ldm = {ldm_name(k, layers_per_block): v for k, v in to_kohya(tensors, "thing").items()}
    assert any("_input_blocks_" in k for k in ldm) and any("_output_blocks_" in k for k in ldm)
    assert any("_middle_block_" in k for k in ldm) and not any("_down_blocks_" in k for k in ldm)
    contents = read_contents(ldm, {}, table)
    assert contents.layout == "kohya/A1111" and same_layers(reference, contents)


@pytest.mark.parametrize(
    "rename",
    [
        pytest.param(lambda k: k.replace("unet.", "base_model.model.", 1), id="peft-save_pretrained"),
        pytest.param(
            lambda k: k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"),
            id="diffusers-lora.down",
        ),
        pytest.param(lambda k: k.replace("text_encoder.", "text_encoder.text_model.", 1), id="text_model-level"),
    ],
)
def test_diffusers_and_peft_variants_read_the_same(table, rename):
    tensors = {k: v for k, v in ours(table).items() if k != "emb_params"}
    if "base_model" in rename("unet.x"):  # PEFT's save_pretrained holds one model: the UNet
        tensors = {k: v for k, v in tensors.items() if k.startswith("unet.")}
    reference = read_contents(tensors, {}, table)
    assert same_layers(reference, read_contents({rename(k): v for k, v in tensors.items()}, {}, table))


def test_diffusers_alpha_from_adapter_metadata(table):
    tensors = {k: v for k, v in ours(table).items() if k.startswith("unet.")}
    reference = read_contents(tensors, {}, table)
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": RANK, "unet.lora_alpha": 1})}
    assert same_layers(reference, read_contents(tensors, meta, table), alpha_ratio=0.25)


def test_old_attention_processor_names(table):
    tensors = {k: v for k, v in ours(table, targets=("to_q", "to_out.0")).items() if k.startswith("unet.")}
    reference = read_contents(tensors, {}, table)
    old = {}
    for key, value in tensors.items():
        module, _, suffix = key.removeprefix("unet.").rpartition(".lora_")
        parent, _, leaf = module.removesuffix(".0").rpartition(".")
        direction = "down" if suffix.startswith("A") else "up"
        old[f"{parent}.processor.{leaf}_lora.{direction}.weight"] = value
    assert same_layers(reference, read_contents(old, {}, table))


def cloneofsimo_file(pipe, legacy=False, seed=0):
    """A file as ``save_safeloras_with_embeds`` writes it, and the same LoRA in our layout for reference."""
    gen = torch.Generator().manual_seed(seed)
    weights, metadata, reference = {}, {}, {}
    for component, classes in (("unet", {"CrossAttention", "Attention", "GEGLU"}), ("text_encoder", {"CLIPAttention"})):
        metadata[component] = json.dumps(sorted(classes))
        for i, (path, module) in enumerate(cloneofsimo_modules(getattr(pipe, component), classes, legacy)):
            up = torch.randn(module.weight.shape[0], RANK, generator=gen).half()
            down = torch.randn(RANK, module.weight.shape[1], generator=gen).half()
            weights[f"{component}:{i}:up"], weights[f"{component}:{i}:down"] = up, down
            metadata[f"{component}:{i}:rank"] = str(RANK)
            reference[f"{component}.{path}.lora_A.weight"] = down.float()
            reference[f"{component}.{path}.lora_B.weight"] = up.float()
    for token in ("<s1>", "<s2>"):
        weights[token] = torch.randn(64, generator=gen)
        metadata[token] = "<embed>"
    return weights, metadata, reference


@pytest.mark.parametrize("legacy", [False, True], ids=["diffusers-now", "diffusers-0.12"])
def test_cloneofsimo_layout_reads_the_same(tiny_pipe, table, legacy):
    weights, metadata, reference = cloneofsimo_file(tiny_pipe, legacy=legacy)
    contents = read_contents(weights, metadata, table)
    assert contents.layout == "cloneofsimo/lora"
    assert contents.tokens == ["<s1>", "<s2>"] and contents.embeddings["text_encoder"].shape == (2, 64)
    assert any(p.endswith("ff.net.0.proj") for p in contents.layers)  # GEGLU layers are where they belong
    assert same_layers(read_contents(reference, {}, table), contents)


@pytest.mark.parametrize(
    "tensors,error,message",
    [
        ({"lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a": torch.ones(4, 4)}, UnsupportedLayout, "LoHa"),
        (
            {
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(4, 768),
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(768, 4),
            },
            LayerMismatch,
            "no layer for 'lora_te1_",
        ),
        (
            {
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 320),
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(320, 4),
            },
            LayerMismatch,
            r"shapes \(4, 320\)",
        ),
        (
            {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 64)},
            LayerMismatch,
            "no matching",
        ),
        ({"unet.conv_in.weight": torch.ones(32, 4, 3, 3)}, UnsupportedLayout, "not LoRA pairs"),
        (
            {"unet:0:up": torch.ones(64, 4), "unet:0:down": torch.ones(4, 64)},
            UnsupportedLayout,
            "metadata does not say",
        ),
    ],
)
def test_files_that_do_not_fit_are_refused_with_the_reason(table, tensors, error, message):
    with pytest.raises(error, match=message):
        read_contents(tensors, {}, table)
