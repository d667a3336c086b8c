"""The original (CompVis/A1111, SGM for SDXL) single-file checkpoint layout of an SD-1.x or SDXL pipeline.

Format conversion only: diffusers key names -> original key names. Loading a single file
back is diffusers' own ``from_single_file`` (see ``checkpoints``). diffusers ships no
converter in this direction; this one generalises the map of its
``convert_diffusers_to_original_stable_diffusion`` and ``..._sdxl`` scripts to any number of blocks and
layers per block, so a tiny pipeline exports exactly like SD-1.5 or SDXL does. SDXL's second text encoder is
written in OpenCLIP's names, as SGM checkpoints hold it (the inverse of diffusers' ``convert_open_clip_checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

from lora_core.catalog import families

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = families.SD1.single_file_text[0] + "text_model."
SDXL_TEXT_PREFIX = families.FAMILIES["sdxl"].single_file_text[0] + "text_model."
SDXL_OPEN_CLIP_PREFIX = families.FAMILIES["sdxl"].single_file_text[1]

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's pooled prompt and sizes
    "add_embedding.linear_2.": "label_emb.0.2.",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _unet_prefix_map(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, original prefix) pairs for this UNet's block layout (SD 1.x's and SDXL's alike)."""
    per = config["layers_per_block"]
    n = len(config["block_out_channels"])
    pairs = list(_UNET_FIXED.items())
    for i in range(n):
        for j in range(per):
            block = (per + 1) * i + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        for j in range(per + 1):
            block = (per + 1) * i + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i < n - 1:
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1  # after the attention, when there is one
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per + 1) * i + per}.{slot}."))
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    return pairs


def _vae_prefix_map(config: dict) -> list[tuple[str, str]]:
    per = config["layers_per_block"]
    n = len(config["block_out_channels"])
    pairs = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
        ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
        ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
    ]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(per)]
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.") for j in range(per + 1)]
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    return pairs


def _rename(key: str, prefixes: list[tuple[str, str]], inner: dict[str, str]) -> str:
    for new, old in prefixes:
        if key.startswith(new):
            rest = key[len(new) :]
            for a, b in inner.items():
                rest = rest.replace(a, b)
            return old + rest
    return key


def unet_to_original(state: dict, config: dict) -> dict:
    """diffusers UNet keys -> the original layout's (``model.diffusion_model.input_blocks.4.1.…``)."""
    prefixes = _unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        inner = _UNET_RESNET if ".resnets." in key else {}
        out[UNET_PREFIX + _rename(key, prefixes, inner)] = value
    return out


def vae_to_original(state: dict, config: dict) -> dict:
    prefixes = _vae_prefix_map(config)
    out = {}
    for key, value in state.items():
        inner = _VAE_ATTENTION if ".attentions." in key else _VAE_RESNET if ".resnets." in key else {}
        new = _rename(key, prefixes, inner)
        if ".attn_1." in new and value.ndim == 2:  # original attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def text_encoder_to_original(state: dict, prefix: str = TEXT_PREFIX) -> dict:
    """transformers 5 drops the ``text_model.`` level; the original layout keeps it."""
    return {prefix + k.removeprefix("text_model."): v for k, v in state.items()}


_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2."}
_OPEN_CLIP_LAYER |= {"mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}


def open_clip_to_original(state: dict, prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP's names: each layer's q, k and v in one ``in_proj``, the
    projection stored transposed (``text_projection`` is ``x @ P`` there, a ``Linear`` here)."""
    import torch

    out: dict = {}
    qkv: dict[str, dict] = {}  # in_proj key -> the q, k and v it is made of
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif key in _OPEN_CLIP_FIXED:
            out[prefix + _OPEN_CLIP_FIXED[key]] = value
        elif key.startswith("encoder.layers."):
            layer, rest = key.removeprefix("encoder.layers.").split(".", 1)
            block = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest[len("self_attn.")] in "qkv" and "_proj." in rest:
                kind = rest.rsplit(".", 1)[1]  # weight or bias
                qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[rest[len("self_attn.")]] = value
                continue
            for new, old in _OPEN_CLIP_LAYER.items():
                rest = rest.replace(new, old)
            out[block + rest] = value
        else:
            raise ValueError(f"no OpenCLIP name for {key!r}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def export_single_file(pipe, path: Path) -> Path:
    """Write ``pipe`` (an SD-1.x or SDXL pipeline) as one original-layout ``.safetensors`` file."""
    from safetensors.torch import save_file

    state = {}
    state.update(unet_to_original(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(vae_to_original(pipe.vae.state_dict(), dict(pipe.vae.config)))
    if families.of_pipeline(pipe).name == "sdxl":
        state.update(text_encoder_to_original(pipe.text_encoder.state_dict(), SDXL_TEXT_PREFIX))
        state.update(open_clip_to_original(pipe.text_encoder_2.state_dict()))
    else:
        state.update(text_encoder_to_original(pipe.text_encoder.state_dict()))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    return path
