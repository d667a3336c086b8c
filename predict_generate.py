"""Cog predictor: a prompt naming LoRA concepts <1>, <2>… + their URLs and scales -> images.

Thin by design: inputs and their descriptions live here, the work in ``lora_core``.
"""

from __future__ import annotations

from typing import Optional, cast

from cog import BaseRunner, Input, Path, current_scope

from lora_core import image_files, output_dirs
from lora_core.base import checkpoints, own_checkpoints
from lora_core.lora import binding, generation_job
from lora_core.net import fetch

SCHEDULERS = ["DPMSolverMultistep", "DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "PNDM", "K_LMS"]
MAX_SEED = 4294967295


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the deployment's default base once (LORA_STUDIO_DEFAULT_BASE); it stays warm across predictions."""
        log = lambda line: print(line, flush=True)  # noqa: E731
        # base_model URLs: users' own checkpoints, under their own download limits and cache
        self.bases = checkpoints.WarmPipelineCache(own=own_checkpoints.OwnCheckpoints.from_env(log))
        self.bases.get()
        self.fetcher = fetch.Fetcher(fetch.FetchPolicy.from_env(), log=log)
        self.adapters = binding.BindingCache.from_env()
        self.outputs = output_dirs.OutputDirs("generate-")  # the previous prediction's images go when the next starts

    def run(
        self,
        prompt: str = Input(
            max_length=2000,
            description="What to draw. <1>, <2>… stand for the concepts of the 1st, 2nd… LoRA, "
            "e.g. 'a photo of <1> on a blue striped background'. A1111's "
            "<lora:2:0.7> also sets a LoRA's scale.",
        ),
        negative_prompt: str = Input(default="", max_length=2000, description="What to keep out of the image."),
        lora_urls: str = Input(
            default="",
            max_length=16384,
            description="LoRA file URLs (.safetensors), separated by '|', at most 8. "
            "Files trained here, diffusers/PEFT and kohya/A1111 files work.",
        ),
        lora_scales: str = Input(
            default="0.5",
            max_length=256,
            description="One scale for all LoRAs or one per URL, separated by "
            "'|'. 0 is the base model, 0.4-0.5 suits faces, 1 "
            "reproduces the training photos; -2 to 2.",
        ),
        base_model: Optional[str] = Input(
            default=None,
            max_length=2048,
            description="Base checkpoint to sample: a name (sd-1.5, realistic-vision-v1.3, inkpunk, gta5, vintedois, "
            "sdxl-1.0, realvis-xl-4.0, dreamshaper-xl-1.0, tiny, tiny-xl), or your own SD 1.x or SDXL "
            "checkpoint: the https:// URL of a single .safetensors file (as A1111 and Civitai share them) or a "
            "hub id (owner/name, or owner/name@revision: a branch, tag or commit). "
            "Empty: this deployment's default (sd-1.5 on GPUs, tiny on CPUs).",
        ),
        scheduler: str = Input(
            default="DPMSolverMultistep",
            choices=SCHEDULERS,
            description="Sampler: how noise is taken out step by step. DPMSolverMultistep does well in 20-30 steps.",
        ),
        num_inference_steps: Optional[int] = Input(
            default=None, ge=1, le=150, description="Denoising steps. Empty: the base model's recommended value."
        ),
        guidance_scale: Optional[float] = Input(
            default=None,
            ge=0,
            le=30,
            description="How strictly to follow the prompt. Empty: the base model's "
            "recommended value (3 for tiny, 7.5 for SD-1.5 models).",
        ),
        width: Optional[int] = Input(
            default=None,
            ge=16,
            le=1024,
            description="Width in pixels, a multiple of 8. Empty: the base model's native size.",
        ),
        height: Optional[int] = Input(
            default=None,
            ge=16,
            le=1024,
            description="Height in pixels, a multiple of 8. Empty: the base model's native size.",
        ),
        num_outputs: int = Input(default=1, ge=1, le=4, description="Number of images."),
        seed: Optional[int] = Input(
            default=None,
            ge=0,
            le=MAX_SEED,
            description="Random seed. Image i uses seed + i and is exactly the single "
            "image of the same input with seed + i. Empty: random (recorded in the prediction's provenance).",
        ),
        output_format: str = Input(default="png", choices=["png", "webp", "jpg"], description="Image file format."),
    ) -> list[Path]:
        generation = generation_job.run_generation(
            self.bases,
            self.fetcher,
            self.adapters,
            prompt=prompt,
            lora_urls=lora_urls,
            lora_scales=lora_scales,
            base_model=base_model,
            negative_prompt=negative_prompt,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            num_outputs=num_outputs,
            seed=seed,
            log=lambda line: print(line, flush=True),
        )
        # the seed drawn, the LoRA files by sha256, the base's hash, versions: the service keeps it for re-runs
        current_scope().record_metric("provenance", generation.provenance.model_dump(mode="json"))
        return [
            Path(p)
            for p in image_files.save_images(
                generation.images, self.outputs.new(), cast(image_files.OutputFormat, output_format)
            )
        ]
