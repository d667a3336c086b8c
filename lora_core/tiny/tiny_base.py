"""Builds the embedded tiny base model: a real SD-1.x diffusers pipeline trained on CPU.

The world (``tiny_world``) is drawn from a seed, the tokenizer is learned from its words,
then three stages train in order, each resumable from its checkpoint in ``work_dir``:

1. VAE on the world and on pictures in any colour and photo crops (``tiny_vae_data``), random
   32x32 crops first, whole pictures at the end;
2. all pictures encoded to latents (posterior means), which fixes ``scaling_factor``;
3. UNet and text encoder jointly (epsilon prediction, Min-SNR-5 weighting, EMA) on the world's
   captions and on the colour pictures, captioned "a photograph" or "a swatch".

The architecture is strictly SD-1.x (no extra embeddings), so the pipeline round-trips
through the original single-file layout like any SD-1.5 fine-tune.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lora_core.tiny import tiny_vae_data, tiny_world
from lora_core.tiny.tiny_tokenizer import write_clip_tokenizer_files

MAX_TOKENS = 32  # captions use at most 20; room for prompts with added LoRA tokens


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the weights. Same config and seed, same files."""

    seed: int = 0
    n_images: int = 24_000
    vae_crop_steps: int = 3_000
    vae_whole_steps: int = 400
    vae_batch: int = 64
    vae_lr: float = 2e-3
    unet_steps: int = 11_000
    unet_batch: int = 32
    unet_lr: float = 1.2e-3
    unet_final_lr_fraction: float = 0.04
    warmup_steps: int = 200
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    threads: int = 2
    # Pictures in any colour and photo crops (tiny_vae_data): half of every VAE batch, and beside the world's
    # n_images in the UNet's data, so the base can draw colours its world never paints (issue 21).
    colour_pictures: int = 6_000

    @classmethod
    def quick(cls) -> BuildConfig:
        """A few steps of everything: keeps the script working in CI, not a usable model."""
        return cls(
            n_images=96,
            vae_crop_steps=3,
            vae_whole_steps=2,
            vae_batch=8,
            unet_steps=4,
            unet_batch=8,
            warmup_steps=1,
            checkpoint_every=2,
            colour_pictures=32,
        )


# ---- architectures -------------------------------------------------------------------


def text_encoder_config(vocab_size: int, bos: int, eos: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=64,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_act="quick_gelu",
    )


# 8 latent channels, not SD's 4: at 16x16 the tiny VAE needs them to carry photo texture and patterns in colours the
# world never paints (held-out photo crops / a zigzag concept, mean error per channel: 4 channels 13.6 / 30 after
# 2,000 steps; 8 channels 14.5 / 35 after 1,000 and 11.6 / 19 after 3,400). Only the UNet's first and last
# convolutions grow.
LATENT_CHANNELS = 8
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=LATENT_CHANNELS,
    sample_size=tiny_world.SIZE,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
    mid_block_add_attention=False,
)

# Cross-attention at 8x8, 4x4 and the middle only: attention at 16x16 doubles the step time.
UNET_CONFIG = dict(
    sample_size=tiny_world.SIZE // 4,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=64,
    norm_num_groups=16,
)

NOISE_SCHEDULE: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


# ---- helpers -------------------------------------------------------------------------


def _lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    """Linear warm-up, then cosine decay to ``final`` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class _Checkpoint:
    """One stage's resumable state in ``work_dir`` (our own files: weights_only loading)."""

    def __init__(self, work_dir: Path, stage: str) -> None:
        self.path = work_dir / f"{stage}.ckpt"

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=True) if self.path.exists() else None

    def resume(self, model, opt, gen: torch.Generator, message: str, log: Log) -> int:
        """Loads a single-model stage's state if there is one; the step to start from."""
        if (state := self.load()) is None:
            return 0
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        log(message.format(state["step"]))
        return state["step"]

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


Log = Callable[[str], None]


# ---- stages --------------------------------------------------------------------------


def train_vae(world: np.ndarray, colours: np.ndarray, cfg: BuildConfig, work_dir: Path, log: Log):
    """Half of every batch is the world, half pictures in any colour and photo crops (``tiny_vae_data``): a VAE
    trained on the world alone maps every colour to the nearest of its six, and no LoRA can then learn a concept
    in its own colours (issue 21). Random 32x32 crops first (convolutions are translation-equivariant, crops are
    4x cheaper), whole pictures at the end (GroupNorm sees whole-picture statistics at run time)."""
    from diffusers import AutoencoderKL

    done = work_dir / "vae.safetensors"
    vae = AutoencoderKL(**VAE_CONFIG)
    if done.exists():
        vae.load_state_dict(load_file(done))
        return vae.eval()
    total = cfg.vae_crop_steps + cfg.vae_whole_steps
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ckpt = _Checkpoint(work_dir, "vae")
    start = ckpt.resume(vae, opt, gen, f"vae: resuming at step {{}}/{total}", log)
    sources = (_to_tensor(world), _to_tensor(colours))
    half = cfg.vae_batch // 2
    t0 = time.time()
    for step in range(start, total):
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(step, total, 50, 0.05)
        x = torch.cat([data[torch.randint(len(data), (half,), generator=gen)] for data in sources])
        if step < cfg.vae_crop_steps:
            oy, ox = torch.randint(0, tiny_world.SIZE - 32 + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy : oy + 32, ox : ox + 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            ckpt.save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step + 1})
            rate = (step + 1 - start) / (time.time() - t0)
            log(f"vae: step {step + 1}/{total} loss {loss.item():.4f} ({rate:.2f} steps/s)")
    save_file(vae.state_dict(), done)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, work_dir: Path, log: Log) -> tuple[torch.Tensor, float]:
    """Posterior means of every image, and the ``scaling_factor`` that gives them unit std."""
    path = work_dir / "latents.safetensors"
    if path.exists():
        latents = load_file(path)["latents"]
    else:
        data = _to_tensor(images)
        latents = torch.cat([vae.encode(data[i : i + 256]).latent_dist.mean for i in range(0, len(data), 256)])
        save_file({"latents": latents.contiguous()}, path)
    scaling = float(1.0 / latents.std())
    log(f"latents: {tuple(latents.shape)}, std {latents.std():.3f} -> scaling_factor {scaling:.4f}")
    return latents, scaling


def train_unet(
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    vocab: int,
    special: tuple[int, int],
    cfg: BuildConfig,
    work_dir: Path,
    log: Log,
):
    """Jointly trains UNet and text encoder; returns their EMA weights."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(vocab, *special)))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    noise_schedule = DDPMScheduler(**NOISE_SCHEDULE)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight_of_t = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # Min-SNR-γ for epsilon prediction
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    ckpt, start = _Checkpoint(work_dir, "unet"), 0
    if (state := ckpt.load()) is not None:
        unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        for e, s in zip(ema, state["ema"], strict=True):
            e.copy_(s)
        gen.set_state(state["gen"])
        start = state["step"]
        log(f"unet: resuming at step {start}/{cfg.unet_steps}")
    unet.train(), text_encoder.train()
    t0, running = time.time(), 0.0
    for step in range(start, cfg.unet_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * _lr_factor(step, cfg.unet_steps, cfg.warmup_steps, cfg.unet_final_lr_fraction)
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        x0 = latents[idx]
        ids = token_ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, NOISE_SCHEDULE["num_train_timesteps"], (len(idx),), generator=gen)
        noisy = noise_schedule.add_noise(x0, noise, t)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight_of_t[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.ema_decay)
        running = 0.98 * running + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            ckpt.save(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema,
                    "gen": gen.get_state(),
                    "step": step + 1,
                }
            )
            rate = (step + 1 - start) / (time.time() - t0)
            eta = (cfg.unet_steps - step - 1) / rate
            log(
                f"unet: step {step + 1}/{cfg.unet_steps} loss {running:.4f} "
                f"({rate:.2f} steps/s, eta {eta / 60:.1f} min)"
            )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    return unet.eval(), text_encoder.eval()


# ---- the whole build -----------------------------------------------------------------


def build_tiny_base(out_dir: Path, work_dir: Path, cfg: BuildConfig = BuildConfig(), log: Log = print) -> Path:
    """Trains every component and writes a ``StableDiffusionPipeline`` folder at ``out_dir``."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    config_file = work_dir / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()) != asdict(cfg):
        raise RuntimeError(
            f"{work_dir} holds a build with another configuration; remove it or choose another --work-dir"
        )
    config_file.write_text(json.dumps(asdict(cfg), indent=1))

    started = time.time()
    world, world_captions = tiny_world.sample_world(cfg.n_images, cfg.seed)
    colours, colour_captions = tiny_vae_data.colour_pictures(cfg.colour_pictures, cfg.seed + 3)
    images, captions = np.concatenate([world, colours]), world_captions + colour_captions
    log(f"world: {len(world)} images, e.g. {captions[0]!r}; {len(colours)} pictures in any colour")
    vocab_path, merges_path = write_clip_tokenizer_files(tiny_world.vocabulary_corpus(captions), work_dir / "tokenizer")
    tokenizer = CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=MAX_TOKENS)

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids

    vae = train_vae(world, colours, cfg, work_dir, log)
    latents, scaling = encode_latents(vae, images, work_dir, log)
    unet, text_encoder = train_unet(
        latents * scaling,
        ids(captions),
        ids([""])[0],
        len(tokenizer),
        (tokenizer.bos_token_id, tokenizer.eos_token_id),
        cfg,
        work_dir,
        log,
    )
    vae.register_to_config(scaling_factor=scaling)

    scheduler = DPMSolverMultistepScheduler(**NOISE_SCHEDULE, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for f in (vocab_path, merges_path):  # the classic CLIP files too, for older readers
        shutil.copy(f, out_dir / "tokenizer" / f.name)
    info = {
        "config": asdict(cfg),
        "held_out": tiny_world.HELD_OUT,
        "build_seconds": round(time.time() - started),
        "vocab_size": len(tokenizer),
        "scaling_factor": scaling,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {out_dir} in {info['build_seconds']} s (this run)")
    return out_dir
