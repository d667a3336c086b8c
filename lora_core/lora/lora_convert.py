"""Converting LoRA tensors between naming conventions. No model is touched here.

Our files use diffusers/PEFT names (``unet.<module>.lora_A.weight``). kohya's sd-scripts,
A1111, ComfyUI and Civitai use ``lora_unet_<module_with_underscores>.lora_down.weight``
plus a ``.alpha`` scalar per module, and carry token embeddings as A1111 "bundled
embeddings" (``bundle_emb.<name>.<vector>``). Per family, the names kohya itself writes: SD 1.x's UNet under
diffusers' block names and ``lora_te_``; SDXL's under the original SGM ones (``input_blocks_4_1``), ``lora_te1_``
and ``lora_te2_``, with ``clip_l``/``clip_g`` vectors.
"""

from __future__ import annotations

import torch

from lora_core.base import single_file
from lora_core.catalog import families

_PEFT_SUFFIX = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}


def _sgm_names(modules: set[str], unet_config: dict) -> dict[str, str]:
    """diffusers UNet module paths -> the original SGM ones (``down_blocks.1.attentions.0`` -> ``input_blocks.4.1``)."""
    originals = single_file.unet_to_original({m + ".weight": m for m in modules}, unet_config)
    return {m: key.removeprefix(single_file.UNET_PREFIX).removesuffix(".weight") for key, m in originals.items()}


def to_kohya(
    tensors: dict[str, torch.Tensor],
    embedding_name: str | None = None,
    family: families.Family = families.SD1,
    unet_config: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Our (diffusers/PEFT) tensors -> kohya/A1111 names, with ``alpha = rank`` per module. SDXL needs the UNet's
    config (its SGM block numbers depend on the layers per block)."""
    vectors = {key: encoder for encoder, key in family.embedding_keys.items()}
    pairs: dict[str, tuple[str, str, str]] = {}  # our key -> (component, module, suffix)
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key in vectors:
            if embedding_name:
                out[f"bundle_emb.{embedding_name}.{family.bundle_vectors[vectors[key]]}"] = value
            continue
        component, rest = key.split(".", 1)
        suffix = next((s for s in _PEFT_SUFFIX if rest.endswith(s)), None)
        if component not in family.lora_components or suffix is None:
            raise ValueError(f"unexpected tensor {key!r} in a {family.title} LoRA file")
        pairs[key] = (component, rest[: -len(suffix)], suffix)
    unet_modules = {module for component, module, _ in pairs.values() if component == "unet"}
    if family.kohya_unet_names == "sgm":
        if unet_config is None:
            raise ValueError(f"{family.title} LoRAs need the UNet's config for kohya's block names")
        renamed = _sgm_names(unet_modules, unet_config)
    else:
        renamed = {m: m for m in unet_modules}
    for key, (component, module, suffix) in pairs.items():
        if component == "unet":
            module = renamed[module]
        elif not module.startswith("text_model."):
            module = "text_model." + module  # transformers 5 dropped this level of CLIPTextModel; kohya has it
        name = family.kohya_prefixes[component] + module.replace(".", "_")
        out[name + _PEFT_SUFFIX[suffix]] = tensors[key]
        if suffix == ".lora_A.weight":
            out[name + ".alpha"] = torch.tensor(float(tensors[key].shape[0]))
    return out
