"""What the UNet is conditioned on while training, per model family: the training twin of ``encode_prompt``.

Sampling goes through each pipeline's own ``encode_prompt``; training needs the same computation on the trainer's
copies of the text encoders (with their new tokens and LoRAs) and on token ids it already holds, so it is written out
here, as diffusers' pipelines and training scripts compute it:
- SD 1.x: the text encoder's last hidden state;
- SDXL: both encoders' penultimate hidden states side by side, plus ``added_cond_kwargs``: the second encoder's
  pooled projection and the six size numbers (original size, crop corner, target size) of a square training image
  that was not cropped (cog-sdxl's and diffusers' SDXL scripts use the same for centre-cropped squares).
"""

from __future__ import annotations

import torch

from lora_core.catalog import families


def encode(
    family: families.Family, encoders: dict[str, torch.nn.Module], ids: dict[str, torch.Tensor], resolution: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """``(encoder_hidden_states, added_cond_kwargs)`` for token ``ids`` per text encoder (batch first)."""
    if family.name == "sd-1":
        return encoders["text_encoder"](ids["text_encoder"])[0], None
    hidden, pooled = [], None
    for name in family.text_encoders:
        out = encoders[name](ids[name], output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if out[0].ndim == 2:  # a projection's pooled output (SDXL's second encoder), as ``encode_prompt`` picks it
            pooled = out[0]
    if pooled is None:
        raise ValueError(f"{family.title} needs a text encoder with a pooled projection")
    states = torch.cat(hidden, dim=-1)
    sizes = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=states.dtype)
    time_ids = sizes.to(states.device).repeat(len(states), 1)
    return states, {"text_embeds": pooled, "time_ids": time_ids}
