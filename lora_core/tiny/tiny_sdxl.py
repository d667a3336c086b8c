"""The tiny SDXL architecture: a real ``StableDiffusionXLPipeline`` at the tiny SD base's size (issue 20).

What SDXL adds to SD 1.x, at the smallest size that keeps its shape: two text encoders (a ``CLIPTextModel`` and a
``CLIPTextModelWithProjection``, whose penultimate hidden states are concatenated into the UNet's cross-attention
input, 24 + 40 = the tiny SD UNet's 64), and the ``text_time`` added conditioning (the second encoder's pooled
projection and six size numbers through ``add_embedding``). Linear attention projections, as SDXL has.

Everything else is the tiny SD base's: its UNet blocks (already SDXL's pattern: no attention at full resolution,
the last up block without attention or upsampler), its VAE, tokenizer and noise schedule. So every UNet tensor but
``proj_in``/``proj_out`` (1x1 convolution there, linear here) and the new ``add_embedding`` has a tiny SD twin of the
same shape, which a trained tiny SDXL base can start from (``docs/plans/sdxl.md`` §7).

``random_pipeline`` builds it with random weights in about a second: what the formats, binding and patching tests of
SDXL LoRAs run on. The trained base, ``weights/tiny-sdxl`` (registry name ``tiny-xl``), is built from tiny SD's
weights by ``tiny_sdxl_build``.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.tiny import tiny_base

# The two encoders' widths (SDXL: 768 and 1280), side by side the tiny SD UNet's 64. Unequal on purpose, as in SDXL:
# readers tell the encoders' tensors apart by width (diffusers' single-file loader, A1111's clip_l/clip_g), so equal
# widths would load one encoder's weights into the other and let a swapped clip_l/clip_g pass every shape check.
TEXT_WIDTHS = (24, 40)
TIME_EMBED_DIM = 8  # per size number (SDXL: 256)
UNET_CONFIG = {
    **tiny_base.UNET_CONFIG,
    "cross_attention_dim": sum(TEXT_WIDTHS),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    # six size numbers (original size, crop corner, target size) and the pooled prompt, as diffusers checks
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_WIDTHS[1],
}


def text_encoder_config(vocab_size: int, bos: int, eos: int, *, second: bool) -> dict:
    """Three layers, so the penultimate hidden state SDXL reads is a real layer's; the second encoder is
    OpenCLIP-G-like (``gelu``, a projection for the pooled prompt), the first CLIP-L-like (``quick_gelu``)."""
    return {
        **tiny_base.text_encoder_config(vocab_size, bos, eos),
        "hidden_size": TEXT_WIDTHS[second],
        "intermediate_size": 4 * TEXT_WIDTHS[second],
        "num_hidden_layers": 3,
        "projection_dim": TEXT_WIDTHS[second],
        "hidden_act": "gelu" if second else "quick_gelu",
    }


def random_pipeline(tiny_sd: Path, seed: int = 0):
    """A ``StableDiffusionXLPipeline`` with random UNet and text encoders, and the tiny SD folder's VAE, tokenizer
    and scheduler (the VAE trained, so decoded pictures are pictures). Float32, on the CPU."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.schedulers import DPMSolverMultistepScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizers = [CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer") for _ in range(2)]
    ids = dict(vocab_size=len(tokenizers[0]), bos=tokenizers[0].bos_token_id, eos=tokenizers[0].eos_token_id)
    torch.manual_seed(seed)
    first = CLIPTextModel(CLIPTextConfig(**text_encoder_config(**ids, second=False)))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**text_encoder_config(**ids, second=True)))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(tiny_sd / "vae"),
        text_encoder=first.eval(),
        text_encoder_2=second.eval(),
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(tiny_sd / "scheduler"),
        force_zeros_for_empty_prompt=False,  # an empty negative prompt is encoded, as SD 1.x does
        add_watermarker=False,
    )
