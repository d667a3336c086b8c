"""The three training presets as plain data, in the spirit of cloneofsimo/lora and cog-sdxl.

Values are for SD-1.x bases at 512 px; a checkpoint may scale the learning rates (see
``checkpoints.Checkpoint.train_lr_scale``) because a tiny model needs larger steps.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

TaskName = Literal["face", "object", "style"]


class TaskPreset(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: TaskName
    description: str
    crop: Literal["face", "center", "whole"]  # how each photo becomes a square training image
    mask_loss: bool  # weight the loss towards the detected face
    mask_floor: float  # loss weight outside the face, when masking
    max_train_steps: int
    learning_rate: float  # UNet LoRA
    learning_rate_text: float  # text-encoder LoRA
    learning_rate_embeddings: float  # the new tokens
    lora_rank: int
    train_text_encoder: bool
    num_tokens: int  # new tokens standing for the concept (what <1> becomes)
    init_word: str  # the new tokens start from this word's embedding
    caption_template: str  # {tokens} is replaced by the new tokens
    prior_weight: float = 1.0  # loss weight of the base's own images, which keep other prompts unchanged
    # Min-SNR loss weighting (``trainer.snr_weights``); 5 is the value diffusers and kohya recommend
    min_snr_gamma: float = 5.0


PRESETS: dict[str, TaskPreset] = {
    p.name: p
    for p in [
        TaskPreset(
            name="face",
            description="one person's face, seen in every photo",
            crop="face",
            mask_loss=True,
            mask_floor=0.3,
            max_train_steps=1000,
            learning_rate=1e-4,
            learning_rate_text=5e-5,
            learning_rate_embeddings=1e-3,
            lora_rank=16,
            train_text_encoder=True,
            num_tokens=2,
            init_word="person",
            caption_template="a photo of {tokens}",
        ),
        TaskPreset(
            name="object",
            description="an object or a pet",
            crop="center",
            mask_loss=False,
            mask_floor=1.0,
            max_train_steps=800,
            learning_rate=1e-4,
            learning_rate_text=5e-5,
            learning_rate_embeddings=1e-3,
            lora_rank=8,
            train_text_encoder=True,
            num_tokens=2,
            init_word="object",
            caption_template="a photo of {tokens}",
        ),
        TaskPreset(
            name="style",
            description="a visual style to transfer",
            crop="whole",
            mask_loss=False,
            mask_floor=1.0,
            max_train_steps=800,
            learning_rate=1e-4,
            learning_rate_text=0.0,
            learning_rate_embeddings=2e-4,
            lora_rank=16,
            train_text_encoder=False,
            num_tokens=1,
            init_word="style",
            caption_template="a picture in the style of {tokens}",
        ),
    ]
}


def get_preset(name: str) -> TaskPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown task {name!r}. Choose one of: {', '.join(PRESETS)}.") from None
