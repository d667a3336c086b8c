"""Builds the embedded tiny SDXL base (``weights/tiny-sdxl``) from the tiny SD one, on CPU, in minutes (issue 20).

A real ``StableDiffusionXLPipeline`` (``tiny_sdxl``'s architecture) on the same world, the same VAE, tokenizer and
noise schedule as ``weights/tiny-sd``. Training it from scratch would repeat the tiny SD build's 42 minutes of
stages 1-3; instead it starts from what tiny SD already knows:

1. **distil** the text encoders: two fresh SDXL-shaped encoders (24 and 40 wide) learn to give, side by side, what
   tiny SD's 64-wide encoder gives for the world's captions (their penultimate states, as SDXL reads them), half of
   them with words swapped for any token of the vocabulary. The UNet's cross-attention then finds the context it
   was trained on, for every word: distilled on the captions alone, words they never use kept their random vectors,
   and "a photo of object" drew purple stars, the held-out concept the learning tests train (palette distance 0.05
   to them; tiny SD's orange shapes: 1.0);
2. **the UNet** starts as tiny SD's: every tensor has a twin of the same shape but ``proj_in``/``proj_out`` (a 1x1
   convolution there, linear here: the same numbers) and the new ``add_embedding``, whose last layer starts at zero
   so the pooled prompt and size numbers add nothing until training finds them useful;
3. UNet and both encoders train **jointly** on the world's latents (tiny SD's VAE, posterior means) with the
   conditioning the LoRA trainer uses (``training.conditioning``), as tiny SD's stage 3 does (Min-SNR-5, EMA).

Each stage resumes from its checkpoint in ``work_dir``; the same settings and the same tiny SD give the same files.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lora_core.catalog import families
from lora_core.tiny import tiny_base, tiny_sdxl, tiny_world
from lora_core.training import conditioning


@dataclass(frozen=True)
class XLBuildConfig:
    """Everything that decides the weights, besides the tiny SD base they start from."""

    seed: int = 0
    n_images: int = 24_000  # tiny SD's world: the same pictures and captions (held-out pairs stay unseen)
    distil_steps: int = 3_000
    distil_swap: float = 0.2  # in half the captions, the share of words swapped for any token
    distil_batch: int = 128
    distil_lr: float = 2e-3
    unet_steps: int = 4_000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    unet_final_lr_fraction: float = 0.04
    warmup_steps: int = 100
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    threads: int = 2

    @classmethod
    def quick(cls) -> XLBuildConfig:
        """A few steps of everything: keeps the script working in tests, not a usable model."""
        return cls(
            n_images=64,
            distil_steps=3,
            distil_batch=8,
            unet_steps=3,
            unet_batch=4,
            warmup_steps=1,
            checkpoint_every=2,
            threads=torch.get_num_threads(),
        )


def warm_unet(sd_unet) -> torch.nn.Module:
    """The tiny SDXL UNet holding tiny SD's weights: 1x1 projections become linear ones, ``add_embedding`` is new
    and adds zero. Refuses a UNet with any other difference (a tiny SD of another shape)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**tiny_sdxl.UNET_CONFIG)
    shapes = {k: v.shape for k, v in unet.state_dict().items()}
    weights = {k: v.reshape(shapes[k]) if k in shapes else v for k, v in sd_unet.state_dict().items()}
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if unexpected or not all(k.startswith("add_embedding.") for k in missing):
        raise RuntimeError(f"tiny SD's UNet differs in {sorted(unexpected or missing)[:3]}: not tiny SDXL's start")
    torch.nn.init.zeros_(unet.add_embedding.linear_2.weight)
    torch.nn.init.zeros_(unet.add_embedding.linear_2.bias)
    return unet


def swap_words(ids: torch.Tensor, special: list[int], vocab_size: int, share: float, gen: torch.Generator):
    """``ids`` with, in half the rows, about ``share`` of the words (tokens but the special ones) swapped for any
    other token of the vocabulary: prompts say words the captions never do."""
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special])
    rows = torch.rand(len(ids), 1, generator=gen) < 0.5
    swap = rows & ~torch.isin(ids, torch.tensor(special)) & (torch.rand(ids.shape, generator=gen) < share)
    out = ids.clone()
    out[swap] = ordinary[torch.randint(len(ordinary), (int(swap.sum()),), generator=gen)]
    return out


def distil_encoders(
    teacher, encoders: dict[str, torch.nn.Module], token_ids: torch.Tensor, cfg: XLBuildConfig, work_dir: Path, log
) -> None:
    """Stage 1: the encoders' penultimate states side by side learn the teacher's last hidden state, per token, on
    captions and on captions with words swapped (``swap_words``)."""
    done = work_dir / "distil.safetensors"
    if done.exists():
        weights = load_file(done)
        for name, encoder in encoders.items():
            prefix = f"{name}."
            encoder.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
        return
    teacher.eval().requires_grad_(False)
    special = sorted({teacher.config.bos_token_id, teacher.config.eos_token_id, teacher.config.pad_token_id})
    params = [p for e in encoders.values() for p in e.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.distil_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    t0 = time.time()
    for step in range(cfg.distil_steps):
        for group in opt.param_groups:
            group["lr"] = cfg.distil_lr * tiny_base._lr_factor(step, cfg.distil_steps, 50, 0.05)
        ids = token_ids[torch.randint(len(token_ids), (cfg.distil_batch,), generator=gen)]
        ids = swap_words(ids, special, teacher.config.vocab_size, cfg.distil_swap, gen)
        with torch.no_grad():
            target = teacher(ids)[0]
        states = torch.cat([e(ids, output_hidden_states=True).hidden_states[-2] for e in encoders.values()], dim=-1)
        loss = F.mse_loss(states, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.distil_steps:
            rate = (step + 1) / (time.time() - t0)
            log(f"distil: step {step + 1}/{cfg.distil_steps} loss {loss.item():.4f} ({rate:.2f} steps/s)")
    for e in encoders.values():
        e.eval()
    weights = {f"{name}.{k}": v for name, e in encoders.items() for k, v in e.state_dict().items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, done)


def build_tiny_sdxl(
    tiny_sd: Path, out_dir: Path, work_dir: Path, cfg: XLBuildConfig = XLBuildConfig(), log: tiny_base.Log = print
) -> Path:
    """Writes a ``StableDiffusionXLPipeline`` folder at ``out_dir``, trained from the tiny SD folder ``tiny_sd``.
    Torch uses ``cfg.threads`` meanwhile; the process's own count comes back after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _build(tiny_sd, out_dir, work_dir, cfg, log)
    finally:
        torch.set_num_threads(previous)


def _build(tiny_sd: Path, out_dir: Path, work_dir: Path, cfg: XLBuildConfig, log: tiny_base.Log) -> Path:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    work_dir.mkdir(parents=True, exist_ok=True)
    config_file = work_dir / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()) != asdict(cfg):
        raise RuntimeError(f"{work_dir} holds a build with another configuration; remove it or choose another")
    config_file.write_text(json.dumps(asdict(cfg), indent=1))
    started = time.time()
    sd = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    tokenizer = sd.tokenizer

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts, padding="max_length", max_length=tiny_base.MAX_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids

    world, captions = tiny_world.sample_world(cfg.n_images, cfg.seed)
    log(f"world: {len(world)} images, e.g. {captions[0]!r}")
    latents = tiny_base.encode_latents(sd.vae, world, work_dir / "latents.safetensors", log)
    latents = latents * sd.vae.config.scaling_factor
    token_ids = ids(captions)

    torch.manual_seed(cfg.seed)
    special = dict(vocab_size=len(tokenizer), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)
    encoders = {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**tiny_sdxl.text_encoder_config(**special, second=False))),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig(**tiny_sdxl.text_encoder_config(**special, second=True))
        ),
    }
    distil_encoders(sd.text_encoder, encoders, torch.cat([token_ids, ids([""])]), cfg, work_dir, log)
    unet = warm_unet(sd.unet)

    family = families.FAMILIES["sdxl"]
    resolution = tiny_world.SIZE

    def condition(batch: torch.Tensor):
        return conditioning.encode(family, encoders, dict.fromkeys(encoders, batch), resolution)

    stage = tiny_base.UnetStage.of(cfg)
    tiny_base.train_unet(unet, encoders, condition, latents, token_ids, ids([""])[0], stage, work_dir, log)

    pipe = StableDiffusionXLPipeline(
        vae=sd.vae,
        text_encoder=encoders["text_encoder"],
        text_encoder_2=encoders["text_encoder_2"],
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=sd.scheduler,
        force_zeros_for_empty_prompt=False,  # trained with the empty caption encoded, as SD 1.x samples it
        add_watermarker=False,
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for part in ("tokenizer", "tokenizer_2"):  # tiny SD's files as they are, the classic CLIP files included
        shutil.rmtree(out_dir / part)
        shutil.copytree(tiny_sd / "tokenizer", out_dir / part)
    info = {
        "config": asdict(cfg),
        "started_from": str(tiny_sd),
        "held_out": tiny_world.HELD_OUT,
        "build_seconds": round(time.time() - started),
        "scaling_factor": sd.vae.config.scaling_factor,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {out_dir} in {info['build_seconds']} s")
    return out_dir
