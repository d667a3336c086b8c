"""Builds the embedded tiny base model: a real SD-1.x diffusers pipeline trained on CPU.

The world (``tiny_world``) is drawn from a seed, the tokenizer is learned from its words,
then four stages train in order, each resumable from its checkpoint in ``work_dir``:

1. the world's VAE: random 32x32 crops (convolutions are translation-equivariant, crops are
   4x cheaper), finished on whole images;
2. the world encoded to latents (posterior means), which fixes ``scaling_factor``;
3. UNet and text encoder jointly on the world's captions (epsilon prediction, Min-SNR-5, EMA);
4. the VAE the base ships: wider, from scratch, on any colour and texture (``tiny_vae_data``) while the
   world's latents stay where the UNet learned them (an anchor term on the encoder).

Stage 4 exists because a VAE trained on the world alone maps every colour to the nearest of its
six, so no LoRA could learn a concept in its own colours (issue 21). Measured alternatives, worse:
training the whole base on the wider data gave latents the small UNet no longer followed prompts on
(4/16 colour prompts), and fine-tuning UNet and text encoder on the new pictures after stage 4 made
LoRAs on world concepts learn worse (purple stars: palette gap closed 0.71 against 0.97) and bleed more.
With the world's latents anchored, stages 1-3's UNet keeps its prompts (16/16) and LoRAs learn the new
latents themselves. Stage 4 refining stage 1's 16/32/32 VAE instead carried new colours at 6.4/255 (3.7 now), and
its copy of a two-colour concept closed 0.6 of the colour gap (0.70 now), which capped what LoRAs could learn.
``--from-world-base`` runs stage 4 alone from a folder stages 1-3 built.

The architecture is strictly SD-1.x (no extra embeddings), so the pipeline round-trips
through the original single-file layout like any SD-1.5 fine-tune.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lora_core.catalog import families
from lora_core.tiny import tiny_vae_data, tiny_world
from lora_core.tiny.tiny_tokenizer import write_clip_tokenizer_files
from lora_core.training import conditioning

MAX_TOKENS = 32  # captions use at most 20; room for prompts with added LoRA tokens


STAGE_4_STEPS = ("colour_vae_crop_steps", "colour_vae_whole_steps")


def stage_4_steps(config: dict[str, Any]) -> int:
    """Stage 4's steps in a build's settings (a ``BuildConfig`` as a dict, or a base's ``build_info``; absent: 0)."""
    return sum(config.get(k, 0) for k in STAGE_4_STEPS)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the weights. Same config and seed, same files."""

    seed: int = 0
    n_images: int = 24_000
    vae_crop_steps: int = 4_000
    vae_whole_steps: int = 600
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
    # Stage 4 (issue 21): pictures in any colour and photo crops beside the first colour_world_images of the world.
    # 0 steps skip it (a world-only base). Flat colours then round-trip at 3.7/255 (23 before), prompts keep 16/16.
    # 31 min here (3.4 steps/s on crops), after stages 1-3's 42: a whole build in 73.
    colour_pictures: int = 6_000
    colour_world_images: int = 12_000
    colour_vae_crop_steps: int = 4_000
    colour_vae_whole_steps: int = 600
    colour_vae_lr: float = 2e-3
    colour_anchor: float = 10.0  # weight of the world latents' squared drift: 1.8e-3 on fresh world pictures (std 1.02)

    @classmethod
    def quick(cls) -> BuildConfig:
        """A few steps of everything: keeps the script working in CI, not a usable model. On the calling
        process's torch threads (a test process's share of the machine)."""
        return cls(
            threads=torch.get_num_threads(),
            n_images=96,
            vae_crop_steps=3,
            vae_whole_steps=2,
            vae_batch=8,
            unet_steps=4,
            unet_batch=8,
            warmup_steps=1,
            checkpoint_every=2,
            colour_pictures=32,
            colour_world_images=32,
            colour_vae_crop_steps=2,
            colour_vae_whole_steps=1,
        )

    def world_only(self) -> BuildConfig:
        """The same build without stage 4: a world base, for ``--from-world-base``."""
        return replace(self, **dict.fromkeys(STAGE_4_STEPS, 0))

    @property
    def widens(self) -> bool:
        """Whether stage 4 trains at all: without steps it would leave the world VAE as it is."""
        return stage_4_steps(asdict(self)) > 0

    def world_stages(self) -> dict[str, Any]:
        """The settings stages 1-3 depend on: what a ``--from-world-base`` folder must have been built with."""
        later = {f for f in asdict(self) if f.startswith("colour_")} | {"checkpoint_every", "threads"}
        return {k: v for k, v in asdict(self).items() if k not in later}


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


# SD's 4 latent channels. 8 carry more texture (held-out photo crops 11.5/255 against 13.8), but a UNet this small
# trained on them followed 4/16 colour prompts instead of 16/16 (issue 21's notes).
LATENT_CHANNELS = 4
# Stage 1's VAE, on the world alone: its latents are what the UNet of stage 3 learns.
WORLD_VAE_CONFIG = dict(
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
# The VAE the base ships, trained in stage 4: 64 channels at 16x16 (0.65 M parameters against 0.23 M). The narrower
# decoder blurred two-colour bands and speckled new colours, so no LoRA could come near a concept in them (issue 21).
VAE_CONFIG = {**WORLD_VAE_CONFIG, "block_out_channels": (16, 32, 64)}

# Cross-attention at 8x8, 4x4 and the middle only. Tried with it on the way up at 16x16 too (one head, 10,000 steps;
# issue 21, 2026-12-04): the base followed more shape prompts (15/16, 16/16 at guidance 7.5) but sampled 17% slower,
# trained LoRAs 36% slower, and the zigzag concept's object LoRA closed 0.18 of the colour gap, not 0.46 (style 0.21,
# not 0.33). Eight heads there cost 1.8x the step time.
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


@dataclass(frozen=True)
class VaeStage:
    """One run of the VAE loop: stage 1 from scratch, stage 4 from stage 1's weights."""

    name: str
    crop_steps: int
    whole_steps: int
    lr: float
    seed: int


def _train_vae_stage(
    vae,
    stage: VaeStage,
    sample: Callable[[torch.Generator], torch.Tensor],
    extra_loss: Callable[[torch.Tensor, Any], torch.Tensor] | None,
    cfg: BuildConfig,
    work_dir: Path,
    log: Log,
):
    """Trains ``vae`` on batches from ``sample``: random 32x32 crops first (convolutions are translation-equivariant,
    crops are 4x cheaper), whole pictures at the end (GroupNorm sees whole-picture statistics at run time)."""
    done = work_dir / f"{stage.name}.safetensors"
    if done.exists():
        vae.load_state_dict(load_file(done))
        return vae.eval()
    vae.train().requires_grad_(True)
    total = stage.crop_steps + stage.whole_steps
    opt = torch.optim.AdamW(vae.parameters(), lr=stage.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(stage.seed)
    ckpt = _Checkpoint(work_dir, stage.name)
    start = ckpt.resume(vae, opt, gen, f"{stage.name}: resuming at step {{}}/{total}", log)
    t0 = time.time()
    for step in range(start, total):
        for group in opt.param_groups:
            group["lr"] = stage.lr * _lr_factor(step, total, 50, 0.05)
        x = sample(gen)
        if step < stage.crop_steps:
            oy, ox = torch.randint(0, tiny_world.SIZE - 32 + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy : oy + 32, ox : ox + 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        if extra_loss is not None:
            loss = loss + extra_loss(x, posterior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == total:
            ckpt.save({"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step + 1})
            rate = (step + 1 - start) / (time.time() - t0)
            log(f"{stage.name}: step {step + 1}/{total} loss {loss.item():.4f} ({rate:.2f} steps/s)")
    save_file(vae.state_dict(), done)
    return vae.eval()


def train_vae(world: np.ndarray, cfg: BuildConfig, work_dir: Path, log: Log):
    """Stage 1: the world's VAE."""
    from diffusers import AutoencoderKL

    data = _to_tensor(world)
    stage = VaeStage("vae", cfg.vae_crop_steps, cfg.vae_whole_steps, cfg.vae_lr, cfg.seed + 1)

    def sample(gen: torch.Generator) -> torch.Tensor:
        return data[torch.randint(len(data), (cfg.vae_batch,), generator=gen)]

    return _train_vae_stage(AutoencoderKL(**WORLD_VAE_CONFIG), stage, sample, None, cfg, work_dir, log)


def widen_vae(world_vae, world: np.ndarray, colours: np.ndarray, cfg: BuildConfig, work_dir: Path, log: Log):
    """Stage 4: a wider VAE (``VAE_CONFIG``), from scratch, learns any colour and texture while the world's latents
    stay put.

    Every batch is half world, half ``tiny_vae_data`` pictures. On the world half the encoder's posterior means are
    pulled towards the world VAE's (``colour_anchor`` times their squared distance), so the UNet of stage 3 keeps
    drawing the world as before with no UNet change; the new pictures get latents of their own, which the decoder
    learns to paint. From scratch, because the shipped decoder is wider than stage 1's."""
    from diffusers import AutoencoderKL

    world_vae.eval().requires_grad_(False)
    sources = (_to_tensor(world), _to_tensor(colours))
    half = cfg.vae_batch // 2
    stage = VaeStage(
        "colour-vae", cfg.colour_vae_crop_steps, cfg.colour_vae_whole_steps, cfg.colour_vae_lr, cfg.seed + 4
    )

    def sample(gen: torch.Generator) -> torch.Tensor:
        return torch.cat([data[torch.randint(len(data), (half,), generator=gen)] for data in sources])

    def anchor(x: torch.Tensor, posterior) -> torch.Tensor:
        with torch.no_grad():
            target = world_vae.encode(x[:half]).latent_dist.mean
        return cfg.colour_anchor * F.mse_loss(posterior.mean[:half], target)

    torch.manual_seed(stage.seed)  # its initial weights, the same whether stages 1-3 ran or were loaded
    return _train_vae_stage(AutoencoderKL(**VAE_CONFIG), stage, sample, anchor, cfg, work_dir, log)


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, path: Path, log: Log) -> torch.Tensor:
    """Posterior means of every image, kept at ``path``."""
    if path.exists():
        return load_file(path)["latents"]
    data = _to_tensor(images)
    latents = torch.cat([vae.encode(data[i : i + 256]).latent_dist.mean for i in range(0, len(data), 256)])
    save_file({"latents": latents.contiguous()}, path)
    log(f"latents: {tuple(latents.shape)}, std {latents.std():.3f}")
    return latents


@dataclass(frozen=True)
class UnetStage:
    """The UNet + text encoders loop of stage 3 (and of the tiny SDXL base's build)."""

    name: str
    steps: int
    lr: float
    warmup: int
    final_lr_fraction: float
    ema_decay: float
    seed: int
    batch: int
    caption_dropout: float
    min_snr_gamma: float
    checkpoint_every: int

    @classmethod
    def of(cls, cfg: Any, name: str = "unet") -> UnetStage:
        """The stage a build's settings describe (tiny SD's ``BuildConfig``, tiny SDXL's: the same field names)."""
        return cls(
            name,
            cfg.unet_steps,
            cfg.unet_lr,
            cfg.warmup_steps,
            cfg.unet_final_lr_fraction,
            cfg.ema_decay,
            cfg.seed + 2,
            cfg.unet_batch,
            cfg.caption_dropout,
            cfg.min_snr_gamma,
            cfg.checkpoint_every,
        )


# (encoder_hidden_states, added_cond_kwargs) for a batch of token ids: what the UNet is conditioned on
Condition = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor] | None]]


def train_unet(
    unet,
    encoders: dict[str, torch.nn.Module],
    condition: Condition,
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    stage: UnetStage,
    work_dir: Path,
    log: Log,
):
    """Jointly trains ``unet`` and ``encoders`` (the text encoders ``condition`` runs) from the weights given, in
    place, and leaves their EMA weights in them."""
    from diffusers import DDPMScheduler

    params = list(unet.parameters()) + [p for e in encoders.values() for p in e.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.01)
    noise_schedule = DDPMScheduler(**NOISE_SCHEDULE)
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight_of_t = torch.clamp(snr, max=stage.min_snr_gamma) / snr  # Min-SNR-γ for epsilon prediction
    gen = torch.Generator().manual_seed(stage.seed)
    models = {"unet": unet, **encoders}
    ckpt, start = _Checkpoint(work_dir, stage.name), 0
    if (state := ckpt.load()) is not None:
        for name, model in models.items():
            model.load_state_dict(state[name])
        opt.load_state_dict(state["opt"])
        for e, s in zip(ema, state["ema"], strict=True):
            e.copy_(s)
        gen.set_state(state["gen"])
        start = state["step"]
        log(f"{stage.name}: resuming at step {start}/{stage.steps}")
    for model in models.values():
        model.train()
    t0, running = time.time(), 0.0
    for step in range(start, stage.steps):
        for group in opt.param_groups:
            group["lr"] = stage.lr * _lr_factor(step, stage.steps, stage.warmup, stage.final_lr_fraction)
        idx = torch.randint(len(latents), (stage.batch,), generator=gen)
        x0 = latents[idx]
        ids = token_ids[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < stage.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, NOISE_SCHEDULE["num_train_timesteps"], (len(idx),), generator=gen)
        noisy = noise_schedule.add_noise(x0, noise, t)
        states, added = condition(ids)
        pred = unet(noisy, t, states, added_cond_kwargs=added).sample
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight_of_t[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - stage.ema_decay)
        running = 0.98 * running + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % stage.checkpoint_every == 0 or step + 1 == stage.steps:
            weights = {name: model.state_dict() for name, model in models.items()}
            ckpt.save({**weights, "opt": opt.state_dict(), "ema": ema, "gen": gen.get_state(), "step": step + 1})
            rate = (step + 1 - start) / (time.time() - t0)
            eta = (stage.steps - step - 1) / rate
            log(
                f"{stage.name}: step {step + 1}/{stage.steps} loss {running:.4f} "
                f"({rate:.2f} steps/s, eta {eta / 60:.1f} min)"
            )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    for model in models.values():
        model.eval()


# ---- the whole build -----------------------------------------------------------------


def _world_base(
    world: np.ndarray,
    world_captions: list[str],
    tokenizer,
    ids: Callable[[list[str]], torch.Tensor],
    cfg: BuildConfig,
    work_dir: Path,
    log: Log,
):
    """Stages 1-3: (vae, unet, text_encoder, scaling_factor) of the world alone."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = train_vae(world, cfg, work_dir, log)
    latents = encode_latents(vae, world, work_dir / "latents.safetensors", log)
    scaling = float(1.0 / latents.std())
    log(f"scaling_factor {scaling:.4f}")
    unet = UNet2DConditionModel(**UNET_CONFIG)
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(len(tokenizer), *special)))
    stage = UnetStage.of(cfg)

    def condition(batch: torch.Tensor):  # what the LoRA trainer conditions on, for SD 1.x: the last hidden state
        return conditioning.encode(
            families.SD1, {"text_encoder": text_encoder}, {"text_encoder": batch}, tiny_world.SIZE
        )

    latents = latents * scaling
    train_unet(
        unet,
        {"text_encoder": text_encoder},
        condition,
        latents,
        ids(world_captions),
        ids([""])[0],
        stage,
        work_dir,
        log,
    )
    return vae, unet, text_encoder, scaling


def _load_world_base(folder: Path, cfg: BuildConfig, log: Log):
    """Stages 1-3 read from a base they built, refused if it was built with other settings."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    built = json.loads((folder / "build_info.json").read_text())["config"]
    if stage_4_steps(built) > 0:
        raise RuntimeError(f"{folder} already went through stage 4; give a world base (build-tiny-base --world-only)")
    wanted = cfg.world_stages()
    if {k: built.get(k) for k in wanted} != wanted:
        differ = sorted(k for k in wanted if built.get(k) != wanted[k])
        raise RuntimeError(f"{folder} was built with other world settings ({', '.join(differ)})")

    def load(cls, part: str):  # from config and weights: from_pretrained would record the folder in the new config
        model = cls.from_config(cls.load_config(folder / part))
        model.load_state_dict(load_file(folder / part / "diffusion_pytorch_model.safetensors"))
        return model

    vae, unet = load(AutoencoderKL, "vae").eval(), load(UNet2DConditionModel, "unet")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    log(f"stages 1-3 from {folder}")
    return vae, unet, text_encoder, float(vae.config.scaling_factor)


def build_tiny_base(
    out_dir: Path, work_dir: Path, cfg: BuildConfig = BuildConfig(), log: Log = print, world_base: Path | None = None
) -> Path:
    """Trains every component and writes a ``StableDiffusionPipeline`` folder at ``out_dir``; with ``world_base``
    (a folder stages 1-3 of this configuration built), only stage 4 runs. Torch uses ``cfg.threads`` meanwhile;
    the process's own count comes back after (a build in a test process leaves its share as it was)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _build(out_dir, work_dir, cfg, log, world_base)
    finally:
        torch.set_num_threads(previous)


def _build(out_dir: Path, work_dir: Path, cfg: BuildConfig, log: Log, world_base: Path | None) -> Path:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

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
    log(f"world: {len(world)} images, e.g. {world_captions[0]!r}")
    vocab_path, merges_path = write_clip_tokenizer_files(
        tiny_world.vocabulary_corpus(world_captions), work_dir / "tokenizer"
    )
    tokenizer = CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=MAX_TOKENS)

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids

    if world_base is None:
        world_vae, unet, text_encoder, scaling = _world_base(world, world_captions, tokenizer, ids, cfg, work_dir, log)
    else:
        world_vae, unet, text_encoder, scaling = _load_world_base(world_base, cfg, log)
    vae = world_vae
    if cfg.widens:
        colours = tiny_vae_data.colour_pictures(cfg.colour_pictures, cfg.seed + 3)
        log(f"stage 4: {len(colours)} pictures in any colour")
        vae = widen_vae(world_vae, world[: cfg.colour_world_images], colours, cfg, work_dir, log)
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
        "world_base": str(world_base) if world_base else None,  # stages 1-3 read from there
        "world_base_build_seconds": (
            json.loads((world_base / "build_info.json").read_text())["build_seconds"] if world_base else None
        ),
        "vocab_size": len(tokenizer),
        "scaling_factor": scaling,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {out_dir} in {info['build_seconds']} s (this run)")
    return out_dir
