"""The LoRA training loop: UNet LoRA, optional text-encoder LoRA, new token embeddings.

Pivotal tuning as in cloneofsimo/lora and cog-sdxl: the concept gets its own new tokens
(``<s0>``, ``<s1>``, …) whose embeddings train alongside the LoRA, so that ``<1>`` in a
prompt can later be replaced by them. Reads top to bottom; the config is plain data.

The warm base is not altered: the text encoder and tokenizer are trained as copies, and
the UNet's training adapter is deleted when the loop ends, whatever happens.

Mixed precision, as diffusers' DreamBooth-LoRA and textual-inversion scripts do it: on a half-precision base
(float16 on GPUs) the trained parameters (the LoRA layers, the text encoder copy with its token table) are float32,
the forward passes run under autocast, and float16 scales the loss so small gradients survive. A float32 base
trains in float32 as before.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from lora_core.catalog import families
from lora_core.progress import Progress
from lora_core.training import conditioning
from lora_core.training.preprocess import Example

ADAPTER = "lora_studio_training"  # cannot occur in a module path (adapter names match as substrings)
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
RESNET_TARGETS = ("conv1", "conv2")


class TrainingConfig(BaseModel):
    """Every value that decides the result; recorded in the LoRA file's metadata."""

    model_config = ConfigDict(frozen=True)
    steps: int = Field(ge=1, le=20_000)
    batch_size: int = Field(4, ge=1, le=64)
    resolution: int = Field(ge=32, le=1024, multiple_of=8)
    rank: int = Field(ge=1, le=128)
    learning_rate: float = Field(gt=0, le=1e-1)
    learning_rate_text: float = Field(ge=0, le=1e-1)
    learning_rate_embeddings: float = Field(ge=0, le=1e-1)
    train_text_encoder: bool
    train_resnets: bool = False  # LoRA on ResNet convolutions too (LoCon)
    tokens: tuple[str, ...]
    init_word: str
    seed: int = Field(ge=0)
    mask_floor: float = Field(1.0, ge=0, le=1)
    prior_weight: float = Field(1.0, ge=0, le=10)  # loss weight of the base's own images (0: none)
    prior_images: int = Field(0, ge=0, le=200)  # how many the base draws for that (training_job draws them)
    warmup_fraction: float = 0.05
    min_snr_gamma: float = Field(0.0, ge=0, le=100)  # Min-SNR loss weighting (``snr_weights``); 0: plain MSE

    @property
    def alpha(self) -> int:
        """alpha = rank: scale 1 in every tool, so a missing alpha is never misread."""
        return self.rank


@dataclass
class TrainedLoRA:
    unet: dict[str, torch.Tensor]  # PEFT names (``…to_q.lora_A.weight``), relative to the UNet
    text_encoders: dict[str, dict[str, torch.Tensor]]  # per text encoder with a LoRA: PEFT names relative to it
    embeddings: dict[str, torch.Tensor]  # per text encoder: (num_tokens, its hidden) for config.tokens, in order
    config: TrainingConfig
    final_loss: float  # the running loss at ``step``
    seconds: float  # of training, up to ``step``
    step: int


def checkpoint_steps(steps: int, count: int) -> tuple[int, ...]:
    """``count`` steps spread evenly over a training of ``steps``, ending on the last (fewer when steps < count)."""
    return tuple(sorted({max(1, round(steps * k / count)) for k in range(1, count + 1)}))


Log = Callable[[str], None]


def snr_weights(noise_schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023; diffusers' ``--snr_gamma``, kohya's ``--min_snr_gamma``):
    ``min(SNR, gamma) / SNR`` for an epsilon-predicting base, so the low-noise steps, whose loss is large and
    which teach fine detail, stop drowning out the noisy steps where a picture's colours and layout are decided.
    Measured on the tiny base (issue 21, the zigzag concept, 800 steps, seed 0): the colour gap closed 0.56
    (`object`) and 0.45 (`style`) at gamma 1, 0.51 and 0.34 at gamma 5, 0.46 and 0.33 without (seed 1, `object`: 0.34
    against 0.30); prompts without the token moved less. On photos `style` did worse at 1 (README, issue 21)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_schedule, t)
    return torch.clamp(snr, max=gamma) / snr


def _lora_config(rank: int, targets: tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))


def encode_examples(vae, examples: Sequence[Example], floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of every example and its mirror image, and the matching loss weights.

    A VAE that asks for it (``force_upcast``: SDXL's, whose activations overflow float16 into NaN latents) encodes
    in float32 when the warm pipeline is in float16, as diffusers' SDXL pipelines decode and its SDXL training
    scripts keep that VAE; it goes back to float16 afterwards."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        return _encode(vae, examples, floor)
    finally:
        if upcast:
            vae.to(torch.float16)


def _encode(vae, examples: Sequence[Example], floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(e.image, np.float32)).permute(2, 0, 1) / 127.5 - 1 for e in examples]
    )
    masks = torch.stack(
        [torch.from_numpy(e.mask)[None] if e.mask is not None else torch.ones(1, *pixels.shape[2:]) for e in examples]
    )
    pixels, masks = torch.cat([pixels, pixels.flip(-1)]), torch.cat([masks, masks.flip(-1)])
    with torch.no_grad():
        latents = (
            torch.cat(
                [
                    vae.encode(pixels[i : i + 8].to(vae.device, vae.dtype)).latent_dist.mean
                    for i in range(0, len(pixels), 8)
                ]
            )
            * vae.config.scaling_factor
        )
    weights = F.interpolate(masks, size=latents.shape[-2:], mode="area")
    return latents.float(), floor + (1 - floor) * weights


def _add_tokens(tokenizer, text_encoder, tokens: tuple[str, ...], init_word: str) -> list[int]:
    if any(t in tokenizer.get_vocab() for t in tokens):
        raise ValueError(f"tokens {tokens} already exist in the base tokenizer")
    tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # no RNG draw: same seed, same LoRA
    table = text_encoder.get_input_embeddings().weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    with torch.no_grad():
        table[ids] = table[init_ids].mean(dim=0)
    return ids


def _remove_peft_layers(*models) -> None:
    """Put the base modules back as they were: ``delete_adapters`` leaves PEFT's wrappers in place (and a
    text-encoder adapter active), which would change what the warm pipe computes and how LoRAs bind to it."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    for model in models:
        recurse_remove_peft_layers(model)
        if getattr(model, "peft_config", None) is not None:
            del model.peft_config
        model._hf_peft_config_loaded = False


def _snapshot(unet, encoders, tables, new_ids, cfg, running: float, start: float, step: int) -> TrainedLoRA:
    """A copy of the LoRA's tensors as they are now (CPU, contiguous)."""
    from peft.utils import get_peft_model_state_dict

    def copied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    return TrainedLoRA(
        unet=copied(get_peft_model_state_dict(unet, adapter_name=ADAPTER)),
        text_encoders={
            name: copied(get_peft_model_state_dict(encoder, adapter_name=ADAPTER, save_embedding_layers=False))
            for name, encoder in encoders.items()
        }
        if cfg.train_text_encoder
        else {},
        embeddings={name: table[new_ids[name]].detach().cpu().clone() for name, table in tables.items()},
        config=cfg,
        final_loss=float(running),
        seconds=time.perf_counter() - start,
        step=step,
    )


def train_lora(
    pipe, examples: list[Example], cfg: TrainingConfig, log: Log = print, prior: Sequence[Example] = ()
) -> TrainedLoRA:
    """The LoRA after the last step (``train_checkpoints`` with one checkpoint)."""
    return train_checkpoints(pipe, examples, cfg, (cfg.steps,), log=log, prior=prior)[-1]


def train_checkpoints(
    pipe,
    examples: list[Example],
    cfg: TrainingConfig,
    save_at: Sequence[int],
    log: Log = print,
    prior: Sequence[Example] = (),
) -> list[TrainedLoRA]:
    """Train on ``examples`` with the warm ``pipe``'s weights; the LoRA tensors as they were after each step of
    ``save_at`` (the last step is always among them), in order. Saving a checkpoint copies the LoRA's tensors and
    nothing else: the training itself is the same with one checkpoint or ten, so the last is the same file.

    ``prior``: images the base drew for other prompts. Each batch also holds half a batch of
    them (weighted ``cfg.prior_weight``), so prompts without the new tokens keep the base's look.
    """
    kept_steps = sorted({s for s in save_at if 1 <= s < cfg.steps} | {cfg.steps})
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    gen = torch.Generator().manual_seed(cfg.seed)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    family = families.of_pipeline(pipe)
    tokenizers, encoders, new_ids = {}, {}, {}
    for tokenizer_name, encoder_name in family.text_pairs:  # copies: the warm pipe's tables never grow
        tokenizer = copy.deepcopy(getattr(pipe, tokenizer_name))
        encoder = copy.deepcopy(getattr(pipe, encoder_name)).to(torch.float32)
        new_ids[encoder_name] = _add_tokens(tokenizer, encoder, cfg.tokens, cfg.init_word)
        tokenizers[encoder_name], encoders[encoder_name] = tokenizer, encoder

    def tokenized(captions: list[str]) -> dict[str, torch.Tensor]:
        return {
            name: tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for name, tokenizer in tokenizers.items()
        }

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    latents, weights = encode_examples(pipe.vae, examples, cfg.mask_floor)
    ids = tokenized([e.caption for e in examples] * 2)  # mirrored copies share captions
    use_prior = bool(prior) and cfg.prior_weight > 0
    if use_prior:
        prior_latents, _ = encode_examples(pipe.vae, prior, 1.0)
        prior_ids = tokenized([e.caption for e in prior] * 2)
        n_prior = max(1, cfg.batch_size // 2)

    unet = pipe.unet
    targets = ATTENTION_TARGETS + (RESNET_TARGETS if cfg.train_resnets else ())
    # LoRA weights are initialised from the global generator: seed it here, after the token tables grew (their
    # size, and so the draws before this line, depend on what the process did before)
    torch.manual_seed(cfg.seed)
    unet.add_adapter(_lora_config(cfg.rank, targets), adapter_name=ADAPTER)
    try:
        cast_training_params(unet, dtype=torch.float32)  # the LoRA layers only: the base keeps its dtype
        tables, original_rows, keep = {}, {}, {}
        for name, encoder in encoders.items():
            encoder.requires_grad_(False)
            if cfg.train_text_encoder:
                encoder.add_adapter(_lora_config(cfg.rank, TEXT_TARGETS), adapter_name=ADAPTER)
            table = encoder.get_input_embeddings().weight
            table.requires_grad_(True)  # after add_adapter, which freezes everything else
            tables[name], original_rows[name] = table, table.detach().clone()
            keep[name] = torch.ones(len(table), dtype=torch.bool)
            keep[name][new_ids[name]] = False

        groups: list[dict[str, Any]] = [
            {"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.learning_rate},
            *(
                {"params": [table], "lr": cfg.learning_rate_embeddings, "weight_decay": 0.0}
                for table in tables.values()
            ),
        ]
        if cfg.train_text_encoder:
            groups += [
                {"params": [p for n, p in encoder.named_parameters() if "lora_" in n], "lr": cfg.learning_rate_text}
                for encoder in encoders.values()
            ]
        peak = [g["lr"] for g in groups]
        opt = torch.optim.AdamW(groups, weight_decay=1e-2)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
        unet.train()
        for encoder in encoders.values():
            encoder.train()
        start, running = time.perf_counter(), 0.0
        saved: list[TrainedLoRA] = []
        progress = Progress(cfg.steps, log)  # a line at least every 5%
        log(
            f"training {cfg.steps} steps, batch {cfg.batch_size}, rank {cfg.rank}, {len(examples)} images, "
            f"tokens {' '.join(cfg.tokens)}" + (f", {len(prior)} prior images" if use_prior else "")
        )
        for step in range(1, cfg.steps + 1):
            for group, lr in zip(opt.param_groups, peak, strict=True):
                group["lr"] = lr * min(1.0, step / warmup)
            idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen)
            x0, batch_ids, batch_weights = latents[idx], {n: i[idx] for n, i in ids.items()}, weights[idx]
            if use_prior:
                pidx = torch.randint(len(prior_latents), (n_prior,), generator=gen)
                x0 = torch.cat([x0, prior_latents[pidx]])
                batch_ids = {n: torch.cat([i, prior_ids[n][pidx]]) for n, i in batch_ids.items()}
                batch_weights = torch.cat([batch_weights, torch.full((n_prior, *weights.shape[1:]), cfg.prior_weight)])
            x0 = x0.to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(x0),), generator=gen).to(device)
            with autocast:
                states, added = conditioning.encode(
                    family, encoders, {n: i.to(device) for n, i in batch_ids.items()}, cfg.resolution
                )
                pred = unet(noise_schedule.add_noise(x0, noise, t), t, states, added_cond_kwargs=added).sample
            if cfg.min_snr_gamma:
                per_sample = snr_weights(noise_schedule, t, cfg.min_snr_gamma).to(device)
                batch_weights = batch_weights.to(device) * per_sample[:, None, None, None]
            loss = ((pred.float() - noise.float()) ** 2 * batch_weights.to(device)).mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():
                for name, table in tables.items():
                    table[keep[name]] = original_rows[name][keep[name]]
            running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
            progress.step(step, loss=running)
            if step in kept_steps:
                saved.append(_snapshot(unet, encoders, tables, new_ids, cfg, running, start, step))
                if step < cfg.steps:
                    log(f"checkpoint {len(saved)} of {len(kept_steps)} kept at step {step}")
        return saved
    finally:
        _remove_peft_layers(unet, *encoders.values())
        unet.eval()
