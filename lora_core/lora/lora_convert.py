"""Converting LoRA tensors between naming conventions. No model is touched here.

Our files use diffusers/PEFT names (``unet.<module>.lora_A.weight``). kohya's sd-scripts,
A1111, ComfyUI and Civitai use ``lora_unet_<module_with_underscores>.lora_down.weight``
plus a ``.alpha`` scalar per module, and carry token embeddings as A1111 "bundled
embeddings" (``bundle_emb.<name>.string_to_param.*``).
"""

from __future__ import annotations

import torch

from lora_core.base import families
from lora_core.lora.lora_file import EMBEDDINGS_KEY

_PEFT_SUFFIX = {".lora_A.weight": ".lora_down.weight", ".lora_B.weight": ".lora_up.weight"}


def _kohya_module(prefix: str, module: str) -> str:
    if prefix == "text_encoder" and not module.startswith("text_model."):
        module = "text_model." + module  # transformers 5 dropped this level; A1111 expects it
    return families.SD1.kohya_prefixes[prefix] + module.replace(".", "_")


def to_kohya(tensors: dict[str, torch.Tensor], embedding_name: str | None = None) -> dict[str, torch.Tensor]:
    """Our (diffusers/PEFT) tensors -> kohya/A1111 names, with ``alpha = rank`` per module."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key == EMBEDDINGS_KEY:
            if embedding_name:
                out[f"bundle_emb.{embedding_name}.string_to_param.*"] = value
            continue
        prefix, rest = key.split(".", 1)
        suffix = next((s for s in _PEFT_SUFFIX if rest.endswith(s)), None)
        if prefix not in families.SD1.lora_components or suffix is None:
            raise ValueError(f"unexpected tensor {key!r} in a LoRA file")
        module = _kohya_module(prefix, rest[: -len(suffix)])
        out[module + _PEFT_SUFFIX[suffix]] = value
        if suffix == ".lora_A.weight":
            out[module + ".alpha"] = torch.tensor(float(value.shape[0]))
    return out
