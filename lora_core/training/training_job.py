"""One training prediction, start to finish: zip -> examples -> checkpoints -> report -> LoRA files -> grid.

The predictor only declares inputs; this module resolves them against the task preset
and the base checkpoint, runs the steps in order and says what it did in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lora_core import image_files
from lora_core.base import checkpoints, own_checkpoints, placement, sampling
from lora_core.lora import binding, lora_convert, lora_file, patching, prompts
from lora_core.training import checkpoint_report, dataset, preprocess, presets, prior_images, trainer

GRID_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)


class TrainingRequest(BaseModel):
    """The user's choices; None means "the preset's value for this base"."""

    model_config = ConfigDict(frozen=True)
    task: presets.TaskName = "face"
    # a registry name, a checkpoint URL or a hub id; None too: LORA_STUDIO_DEFAULT_BASE
    base_model: str = Field(default_factory=placement.default_base, max_length=checkpoints.BASE_MODEL_MAX_CHARS)
    seed: int | None = Field(None, ge=0, le=sampling.MAX_SEED)
    resolution: int | None = Field(None, ge=32, le=1024, multiple_of=8)
    max_train_steps: int | None = Field(None, ge=1, le=20_000)
    learning_rate: float | None = Field(None, ge=1e-6, le=1e-1)  # 0 would train nothing: the API refuses it
    learning_rate_text: float | None = Field(None, ge=0, le=1e-1)
    learning_rate_embeddings: float | None = Field(None, ge=0, le=1e-1)
    lora_rank: int | None = Field(None, ge=1, le=128)
    train_text_encoder: bool | None = None
    caption_prefix: str | None = Field(None, max_length=200)
    prior_images: int | None = Field(None, ge=0, le=200)
    grid_steps: int | None = Field(None, ge=1, le=150)
    checkpoints: int = Field(4, ge=1, le=10)

    @field_validator("base_model", mode="before")
    @classmethod
    def _default_base(cls, name: str | None) -> str:
        """An empty ``base_model`` (the predictors' and the CLI's) is the deployment's default, resolved here once."""
        return name or placement.default_base()


@dataclass
class TrainingResult:
    lora: Path  # the recommended checkpoint, our file: diffusers/PEFT names + embeddings + metadata
    lora_a1111: Path  # the same LoRA under kohya/A1111 names, for A1111, ComfyUI, Civitai
    embedding: Path  # the new tokens alone (``<name>.safetensors``): ComfyUI's ``embedding:<name>``
    grid: Path  # checkpoints (rows) x scales (columns)
    metadata: dict[str, str]
    checkpoints: list[Path]  # every checkpoint, in step order (our files, each with its scores)
    report: Path  # checkpoint_report.TrainingReport as JSON


def resolve_config(
    request: TrainingRequest, checkpoint: checkpoints.Checkpoint
) -> tuple[trainer.TrainingConfig, presets.TaskPreset]:
    preset = presets.get_preset(request.task)
    if request.caption_prefix:
        template = request.caption_prefix
        template = template.replace("<1>", "{tokens}") if "<1>" in template else f"{template} {{tokens}}"
        preset = preset.model_copy(update={"caption_template": template})

    def pick(given, preset_value):
        return preset_value if given is None else given

    scale = checkpoint.train_lr_scale
    cfg = trainer.TrainingConfig(
        steps=pick(request.max_train_steps, preset.max_train_steps),
        batch_size=checkpoint.train_batch_size,
        resolution=pick(request.resolution, checkpoint.defaults.width),
        rank=pick(request.lora_rank, preset.lora_rank),
        learning_rate=pick(request.learning_rate, preset.learning_rate * scale),
        learning_rate_text=pick(request.learning_rate_text, preset.learning_rate_text * scale),
        learning_rate_embeddings=pick(request.learning_rate_embeddings, preset.learning_rate_embeddings * scale),
        train_text_encoder=pick(request.train_text_encoder, preset.train_text_encoder),
        train_resnets=checkpoint.train_resnets,
        tokens=tuple(f"<s{i}>" for i in range(preset.num_tokens)),
        init_word=preset.init_word,
        seed=sampling.random_seed() if request.seed is None else request.seed,
        mask_floor=preset.mask_floor if preset.mask_loss else 1.0,
        prior_weight=preset.prior_weight,
        min_snr_gamma=pick(checkpoint.train_min_snr_gamma, preset.min_snr_gamma),
        prior_images=pick(request.prior_images, checkpoint.prior_images),
    )
    return cfg, preset


def run_training(
    pipe,
    base_hash: str,
    zip_path: Path,
    request: TrainingRequest,
    out_dir: Path,
    log: Callable[[str], None] = print,
    checkpoint: checkpoints.Checkpoint | None = None,
) -> TrainingResult:
    """``checkpoint`` is ``pipe``'s (a user's own one comes resolved); None: the registry's ``request.base_model``."""
    checkpoint = checkpoint or checkpoints.get_checkpoint(request.base_model)
    cfg, preset = resolve_config(request, checkpoint)
    log(f"task {preset.name}: {preset.description}; seed {cfg.seed}")
    data = dataset.read_instance_zip(zip_path, log=log)
    examples = preprocess.prepare_examples(data, preset, cfg.resolution, "".join(cfg.tokens), log=log)
    log(f"caption example: {examples[0].caption!r}")
    use_prior = cfg.prior_weight > 0 and cfg.prior_images > 0
    prior = (
        prior_images.prior_examples(pipe, checkpoint, cfg.resolution, base_hash, cfg.prior_images, log=log)
        if use_prior
        else []
    )
    if prior:
        log(
            f"{len(prior)} prior images of the base ({len(checkpoint.prior_prompts)} prompts), "
            "so that prompts without the new tokens keep the base's look"
        )
    save_at = trainer.checkpoint_steps(cfg.steps, request.checkpoints)
    trained = trainer.train_checkpoints(pipe, examples, cfg, save_at, log=log, prior=prior)
    log(f"trained {cfg.steps} steps in {trained[-1].seconds:.0f}s")

    prompt = preset.caption_template.format(tokens="<1>")
    metadata = lora_file.lora_metadata(
        base_model=own_checkpoints.recorded_name(checkpoint),  # no signed URL's token; a hub id's commit
        base_family=checkpoint.family,
        base_hash=base_hash,
        task=preset.name,
        rank=cfg.rank,
        alpha=cfg.alpha,
        tokens=list(cfg.tokens),
        init_word=cfg.init_word,
        resolution=cfg.resolution,
        steps=cfg.steps,
        seed=cfg.seed,
        extra={
            "lora_studio.caption_template": preset.caption_template,
            "lora_studio.training_config": cfg.model_dump_json(),
            "ss_min_snr_gamma": str(cfg.min_snr_gamma or None),  # as kohya writes it (None: off)
        },
    )
    packed = [lora_file.pack_trained(t.unet, t.text_encoders, t.embeddings, checkpoint.family_spec) for t in trained]
    candidates = [
        checkpoint_report.Candidate(t.step, binding.bind(pipe, tensors, metadata), t.final_loss)
        for t, tensors in zip(trained, packed, strict=True)
    ]
    report = checkpoint_report.evaluate(
        pipe,
        checkpoint,
        candidates,
        [e.image for e in examples],
        prompt,
        cfg.seed,
        cfg.resolution,
        request.grid_steps,
        log=log,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    report_path.write_text(report.model_dump_json(indent=1))

    files = []
    for score, tensors in zip(report.checkpoints, packed, strict=True):
        recommended = score.step == report.recommended_step
        meta = {
            **metadata,
            "lora_studio.steps": str(score.step),
            "lora_studio.checkpoint": f"{report.checkpoints.index(score) + 1} of {len(report.checkpoints)}",
            "lora_studio.fidelity": f"{score.fidelity:.3f}",
            "lora_studio.bleed": f"{score.bleed:.2f}",
            "lora_studio.recommended": "true" if recommended else "false",
            "lora_studio.bleed_bound": str(report.bleed_bound),
            "lora_studio.base_fidelity": f"{report.base.fidelity:.3f}",
        }
        name = f"lora-{preset.name}-{cfg.seed}-step{score.step:05d}.safetensors"
        files.append(lora_file.write_lora(out_dir / name, tensors, meta))
        if recommended:
            chosen, chosen_meta, chosen_tensors = files[-1], meta, tensors
    log(
        f"wrote {len(files)} checkpoint(s) ({files[-1].stat().st_size / 1e6:.2f} MB each); the lora output is "
        f"the one at step {report.recommended_step}"
    )
    embedding_name = f"{preset.name}{cfg.seed}"
    a1111_path = lora_file.write_lora(
        out_dir / f"lora-{preset.name}-{cfg.seed}-a1111.safetensors",
        lora_convert.to_kohya(chosen_tensors, embedding_name, checkpoint.family_spec, dict(pipe.unet.config)),
        {**chosen_meta, "lora_studio.key_format": "kohya", "modelspec.trigger_phrase": embedding_name},
    )

    embedding_path = lora_file.write_lora(
        out_dir / f"{embedding_name}.safetensors",
        *lora_file.embedding_file(chosen_tensors, chosen_meta, checkpoint.family_spec, embedding_name),
    )

    grid_path = out_dir / "scales.png"
    labels = [f"step {c.step}" + (" (recommended)" if c.step == report.recommended_step else "") for c in candidates]
    grid = scale_grid(
        pipe, [c.lora for c in candidates], prompt, checkpoint, cfg.seed, cfg.resolution, request.grid_steps, labels
    )
    grid.save(grid_path)
    log(
        f"sample grid: {prompt!r} at scales {', '.join(map(str, GRID_SCALES))}, seed {cfg.seed}; one row per "
        f"checkpoint (steps {', '.join(str(c.step) for c in candidates)})"
    )
    return TrainingResult(chosen, a1111_path, embedding_path, grid_path, chosen_meta, files, report_path)


def scale_grid(
    pipe,
    loras: list[binding.BoundLoRA],
    prompt: str,
    checkpoint: checkpoints.Checkpoint,
    seed: int,
    size: int,
    steps: int | None = None,
    labels: list[str] | None = None,
) -> Image.Image:
    """A row per LoRA (a training's checkpoints), same seed, each at GRID_SCALES, at the size it trained: shows
    which checkpoint and scale to pick. Scale 0 is the base whatever the LoRA, so it is drawn once.
    ``steps``: sampling steps (None: the base's recommended number); ``labels``: one per row, when more than one.
    """
    base: Image.Image | None = None
    rows = []
    for lora in loras:
        row = []
        for scale in GRID_SCALES:
            if scale == 0 and base is not None:
                row.append(base)
                continue
            with patching.applied(pipe, [lora], [scale]) as texts:
                request = sampling.resolve_request(
                    checkpoint.defaults,
                    prompt=prompts.expand(prompt, texts),
                    seed=seed,
                    width=size,
                    height=size,
                    num_inference_steps=steps,
                )
                row.append(sampling.sample(pipe, request)[0])
            if scale == 0:
                base = row[-1]
        rows.append(row)
    return image_files.grid(
        rows, scale=1 if rows[0][0].width >= 256 else 4, labels=labels if labels and len(rows) > 1 else None
    )
