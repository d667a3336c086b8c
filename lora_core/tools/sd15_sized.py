"""SD-1.5-sized bases with random weights, for testing and measuring the real-size path on a machine that cannot
download SD 1.5.

SD 1.5's exact model configurations (the 860 M-parameter UNet, CLIP ViT-L/14's text encoder with its 49,408-row
token table, the KL VAE), randomly initialised and saved once as a weights folder the registry reads: ``sd-1.5`` as a
diffusers folder and ``realistic-vision-v1.3`` as a single original-layout file (configs from ``sd-1.5``), in float16
as SD 1.5 is distributed. Loading, LoRAs of rank 64 on every layer, files of tens of MB, memory and time per step
are those of SD 1.5; the images are noise. The tokenizer is the tiny base's: CLIP's vocabulary files do not ship
offline, and ids below its size index the same table.
"""

from __future__ import annotations

from pathlib import Path

from lora_core.base import checkpoints

ROOT = checkpoints.REPO_ROOT / ".build" / "sd15-random"  # git-ignored; built once per machine (about a minute)


def weights_root(root: Path = ROOT) -> Path:
    """A weights folder (for ``LORA_STUDIO_WEIGHTS``) holding the SD-1.5-sized bases and the real tiny one."""
    import torch

    _folder(root)
    single = root / checkpoints.get_checkpoint("realistic-vision-v1.3").path
    if not single.exists():
        from lora_core.base.single_file import export_single_file

        pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("sd-1.5"), root, torch.float16)
        export_single_file(pipe, single.with_name(single.name + ".partial")).rename(single)
    tiny = root / checkpoints.get_checkpoint("tiny").path
    if not tiny.exists():
        tiny.symlink_to(checkpoints.DEFAULT_WEIGHTS_DIR / checkpoints.get_checkpoint("tiny").path)
    return root


def load(root: Path = ROOT, dtype=None):
    """The ``sd-1.5`` folder's pipeline in ``dtype`` (float16 if not given), built first if need be."""
    import torch

    _folder(root)
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("sd-1.5"), root, dtype or torch.float16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _folder(root: Path) -> None:
    folder = root / checkpoints.get_checkpoint("sd-1.5").path
    if not (folder / "model_index.json").exists():
        _build(folder)


def _build(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)  # SD 1.x's UNet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        latent_channels=4,
        sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    tiny = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"), checkpoints.DEFAULT_WEIGHTS_DIR)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tiny.tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(tiny.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(dtype=torch.float16)
    tmp = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)  # a build cut short is never mistaken for a whole one
