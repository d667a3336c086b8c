"""Cog predictor: a zip of photos -> one LoRA ``.safetensors`` file (and a grid of its scales).

Thin by design: inputs and their descriptions live here, the work in ``lora_core.training.training_job``.
"""

from __future__ import annotations

import shutil
from typing import Optional

from cog import BaseModel, BaseRunner, Input, Path
from pydantic import ValidationError

from lora_core import output_dirs
from lora_core.base import checkpoints, own_checkpoints, sampling
from lora_core.net import cog_uploads
from lora_core.training import training_job

MAX_SEED = 4294967295


def _log(line: str) -> None:
    print(line, flush=True)


class Output(BaseModel):
    lora: Path  # the recommended checkpoint: use it with the generation model (diffusers/PEFT names, tokens, metadata)
    lora_a1111: Path  # the same LoRA named for A1111 / ComfyUI / Civitai (trigger: its embedding name)
    embedding: Path  # the new tokens alone, <name>.safetensors: ComfyUI's embedding:<name>, A1111's textual inversion
    scales_grid: Path  # "a photo of <1>" at scales 0, 0.25, 0.5, 0.75, 1 on one seed, a row per checkpoint
    checkpoints: list[Path]  # every checkpoint in step order (each file's metadata holds its fidelity and bleed)
    report: Path  # report.json: each checkpoint's fidelity and bleed, and why the recommended one


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the deployment's default base once (LORA_STUDIO_DEFAULT_BASE); its trainings reuse the warm weights."""
        # base_model URLs: users' own checkpoints, under their own download limits and cache
        self.bases = checkpoints.WarmPipelineCache(own=own_checkpoints.OwnCheckpoints.from_env(_log))
        self.bases.get()
        self.outputs = output_dirs.OutputDirs("train-")  # the previous training's files go when the next starts

    def run(
        self,
        instance_data: Path = Input(
            description="A .zip of 3-100 photos (jpg, png, webp) of your subject. Optional "
            "caption files: a.txt beside a.jpg, using <1> for the subject."
        ),
        task: str = Input(
            default="face",
            choices=["face", "object", "style"],
            description="face: one person's face in every photo. object: an object or pet. "
            "style: a visual style to transfer.",
        ),
        base_model: Optional[str] = Input(
            default=None,
            max_length=2048,
            description="Base checkpoint the LoRA is trained for: a name (sd-1.5, realistic-vision-v1.3, inkpunk, "
            "gta5, vintedois, sdxl-1.0, realvis-xl-4.0, dreamshaper-xl-1.0, tiny, tiny-xl), or your own SD 1.x or "
            "SDXL checkpoint: the https:// URL of a single .safetensors file (as A1111 and Civitai share them) or a "
            "hub id (owner/name, or owner/name@revision: a branch, tag or commit). "
            "Empty: this deployment's default (sd-1.5 on GPUs, tiny on CPUs).",
        ),
        seed: Optional[int] = Input(
            default=None, ge=0, le=MAX_SEED, description="Random seed. Empty: random (recorded in the file and logs)."
        ),
        resolution: Optional[int] = Input(
            default=None, ge=32, le=1024, description="Training size in pixels. Empty: the base's native size."
        ),
        max_train_steps: Optional[int] = Input(
            default=None, ge=1, le=20000, description="Expert: training steps. Empty: the task's preset."
        ),
        learning_rate: Optional[float] = Input(
            default=None, ge=1e-6, le=0.1, description="Expert: UNet LoRA learning rate."
        ),
        learning_rate_text: Optional[float] = Input(
            default=None, ge=0, le=0.1, description="Expert: text-encoder LoRA learning rate."
        ),
        learning_rate_embeddings: Optional[float] = Input(
            default=None, ge=0, le=0.1, description="Expert: learning rate of the new tokens."
        ),
        lora_rank: Optional[int] = Input(default=None, ge=1, le=128, description="Expert: LoRA rank."),
        train_text_encoder: Optional[bool] = Input(default=None, description="Expert: also train a text-encoder LoRA."),
        caption_prefix: Optional[str] = Input(
            default=None,
            max_length=200,
            description="Expert: caption for every photo, with <1> for the subject, e.g. 'a photo of <1> in a garden'.",
        ),
        prior_images: Optional[int] = Input(
            default=None,
            ge=0,
            le=200,
            description="Expert: how many images the base draws for everyday prompts and trains on beside yours, so "
            "that prompts without <1> keep its look (prior preservation). 0: none. Empty: the base's preset.",
        ),
        grid_steps: Optional[int] = Input(
            default=None,
            ge=1,
            le=150,
            description="Expert: sampling steps of the scales grid and the report. Empty: the base's recommended "
            "number.",
        ),
        checkpoints: int = Input(
            default=4,
            ge=1,
            le=10,
            description="How many checkpoints to keep, evenly spaced, the last at the final step (1: only the last). "
            "Each is scored for fidelity to your photos and bleed into prompts without <1>; the lora output is the "
            "most faithful one that does not bleed, and every checkpoint stays downloadable.",
        ),
    ) -> Output:
        try:
            request = training_job.TrainingRequest(
                task=task,
                base_model=base_model,
                seed=seed,
                resolution=resolution,
                max_train_steps=max_train_steps,
                learning_rate=learning_rate,
                learning_rate_text=learning_rate_text,
                learning_rate_embeddings=learning_rate_embeddings,
                lora_rank=lora_rank,
                train_text_encoder=train_text_encoder,
                caption_prefix=caption_prefix,
                prior_images=prior_images,
                grid_steps=grid_steps,
                checkpoints=checkpoints,
            )
        except ValidationError as e:  # e.g. a resolution that is not a multiple of 8: one line, not pydantic's page
            raise sampling.SettingsError.of(e) from None
        pipe = self.bases.get(request.base_model)
        out_dir = Path(self.outputs.new())
        try:
            result = training_job.run_training(
                pipe,
                self.bases.base_hash,
                Path(instance_data),
                request,
                out_dir,
                log=_log,
                checkpoint=self.bases.checkpoint,
            )
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)  # a failed training leaves nothing behind
            raise
        files = {
            "lora": Path(result.lora),
            "lora_a1111": Path(result.lora_a1111),
            "embedding": Path(result.embedding),
            "scales_grid": Path(result.grid),
            "checkpoints": [Path(p) for p in result.checkpoints],
            "report": Path(result.report),
        }
        # uploaded here, streamed: Cog's server would put an object's files into its JSON as base64 (cog_uploads)
        return Output(**cog_uploads.deliver(files, log=_log))
