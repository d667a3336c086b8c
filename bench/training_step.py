"""train_step_overhead: a step of our training loop / a bare PEFT step training the same parameters."""

from __future__ import annotations

import copy
import itertools
import resource
import time

import torch
import torch.nn.functional as F

from bench.results import Metric
from lora_core.base import checkpoints
from lora_core.tiny import tiny_world
from lora_core.training import preprocess, presets, trainer
from lora_core.training.dataset import InstanceData, InstanceImage


def _examples(n: int = 10) -> list[preprocess.Example]:
    images = tiny_world.concept_images("star", "purple", n, first_seed=0)
    data = InstanceData([InstanceImage(f"{i}.png", im) for i, im in enumerate(images)])
    return preprocess.prepare_examples(data, presets.get_preset("object"), 64, "<s0><s1>", log=lambda _: None)


def _config(steps: int) -> trainer.TrainingConfig:
    return trainer.TrainingConfig(
        steps=steps,
        batch_size=8,
        resolution=64,
        rank=8,
        learning_rate=1e-3,
        learning_rate_text=5e-4,
        learning_rate_embeddings=1e-2,
        train_text_encoder=True,
        train_resnets=True,
        tokens=("<s0>", "<s1>"),
        init_word="object",
        seed=0,
    )


def bare_peft_seconds_per_step(pipe, examples, cfg: trainer.TrainingConfig) -> float:
    """The same model work with nothing but PEFT: TE + UNet forward, MSE, backward, AdamW."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    unet, text_encoder, tokenizer = (
        copy.deepcopy(pipe.unet),
        copy.deepcopy(pipe.text_encoder),
        copy.deepcopy(pipe.tokenizer),
    )
    tokenizer.add_tokens(list(cfg.tokens))
    text_encoder.resize_token_embeddings(len(tokenizer))
    unet.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.rank,
            init_lora_weights="gaussian",
            target_modules=list(trainer.ATTENTION_TARGETS + trainer.RESNET_TARGETS),
        )
    )
    text_encoder.add_adapter(
        LoraConfig(
            r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian", target_modules=list(trainer.TEXT_TARGETS)
        )
    )
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    latents, _ = trainer.encode_examples(pipe.vae, examples, 1.0)
    ids = tokenizer(
        [e.caption for e in examples] * 2,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    params = [p for p in itertools.chain(unet.parameters(), text_encoder.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen)
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen)
        pred = unet(schedule.add_noise(latents[idx], noise, t), t, text_encoder(ids[idx])[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    return (time.perf_counter() - start) / cfg.steps


def measure(steps: int) -> list[Metric]:
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    examples = _examples()
    ours, bare = [], []
    for _ in range(3):  # interleaved rounds: both sides see the same machine state
        ours.append(trainer.train_lora(pipe, examples, _config(steps), log=lambda _: None).seconds / steps)
        bare.append(bare_peft_seconds_per_step(pipe, examples, _config(steps)))
    ours_s, bare_s = min(ours), min(bare)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = ours_s / bare_s
    return [
        Metric(
            "train_step_overhead",
            ratio,
            "x",
            baseline=bare_s * 1e3,
            ratio=ratio,
            limit=1.10,
            note=f"ours {ours_s * 1e3:.1f} ms/step vs bare PEFT {bare_s * 1e3:.1f} ms/step, tiny base, batch 8",
        ),
        Metric("train_step_ms_tiny", ours_s * 1e3, "ms", baseline=bare_s * 1e3, ratio=ratio),
        Metric("train_peak_rss_mb", peak_mb, "MB", note="peak RSS of the benchmark process while training"),
    ]
