"""Cog predictor: sample a base checkpoint (LoRAs arrive with the generation issue).

Thin by design: inputs and their descriptions live here, the work in ``lora_core``.
"""

from __future__ import annotations

import tempfile
from typing import Optional

from cog import BaseRunner, Input, Path

from lora_core import checkpoints, image_files, sampling


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Load the default base once; it stays warm across predictions."""
        self.bases = checkpoints.WarmPipelineCache()
        self.bases.get(checkpoints.DEFAULT_CHECKPOINT)

    def run(
        self,
        prompt: str = Input(description="What to draw, e.g. 'a photo of a red circle on a blue striped background'."),
        negative_prompt: str = Input(default="", description="What to keep out of the image."),
        base_model: str = Input(default=checkpoints.DEFAULT_CHECKPOINT, choices=list(checkpoints.REGISTRY),
                                description="Base checkpoint to sample."),
        scheduler: str = Input(default="DPMSolverMultistep", choices=list(sampling.SCHEDULER_NAMES),
                               description="Sampler."),
        num_inference_steps: Optional[int] = Input(default=None, ge=1, le=150,
                                                   description="Denoising steps. Empty: the base model's recommended value."),
        guidance_scale: Optional[float] = Input(default=None, ge=0, le=30,
                                                description="How strictly to follow the prompt. Empty: the base model's "
                                                            "recommended value (3 for tiny, 7.5 for SD-1.5 models)."),
        width: Optional[int] = Input(default=None, ge=16, le=1024,
                                     description="Width in pixels, a multiple of 8. Empty: the base model's native size."),
        height: Optional[int] = Input(default=None, ge=16, le=1024,
                                      description="Height in pixels, a multiple of 8. Empty: the base model's native size."),
        num_outputs: int = Input(default=1, ge=1, le=4, description="Number of images."),
        seed: Optional[int] = Input(default=None, ge=0, le=sampling.MAX_SEED,
                                    description="Random seed; image i uses seed + i. Empty: random (shown in the logs)."),
        output_format: str = Input(default="png", choices=["png", "webp", "jpg"], description="Image file format."),
    ) -> list[Path]:
        checkpoint = checkpoints.get_checkpoint(base_model)
        request = sampling.resolve_request(
            checkpoint.defaults, prompt=prompt, negative_prompt=negative_prompt, scheduler=scheduler,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, width=width, height=height,
            num_outputs=num_outputs, seed=seed)
        print(f"settings: {request.model_dump_json()}")
        images = sampling.sample(self.bases.get(base_model), request)
        out_dir = Path(tempfile.mkdtemp(prefix="generate-"))
        return [Path(p) for p in image_files.save_images(images, out_dir, output_format)]
