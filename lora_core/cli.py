"""The ``lora-studio`` command: each subcommand calls one function of ``lora_core``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path


def _generate(args: argparse.Namespace) -> None:
    from . import checkpoints, image_files, sampling

    checkpoint = checkpoints.get_checkpoint(args.base_model)
    request = sampling.resolve_request(
        checkpoint.defaults, prompt=args.prompt, negative_prompt=args.negative_prompt, scheduler=args.scheduler,
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale, width=args.width, height=args.height,
        num_outputs=args.num_outputs, seed=args.seed)
    images = sampling.sample(checkpoints.WarmPipelineCache().get(args.base_model), request)
    paths = image_files.save_images(images, Path(args.out), args.output_format, stem=f"seed{request.seed}")
    print(json.dumps({"settings": request.model_dump(), "outputs": [str(p) for p in paths]}, indent=1))


def _train(args: argparse.Namespace) -> None:
    from . import checkpoints, training_job

    request = training_job.TrainingRequest(task=args.task, base_model=args.base_model, seed=args.seed,
                                           max_train_steps=args.steps)
    cache = checkpoints.WarmPipelineCache()
    pipe = cache.get(args.base_model)
    result = training_job.run_training(pipe, cache.base_hash, Path(args.zip), request, Path(args.out),
                                       log=functools.partial(print, flush=True))
    print(json.dumps({"lora": str(result.lora), "lora_a1111": str(result.lora_a1111),
                      "scales_grid": str(result.grid)}, indent=1))


def _build_tiny_base(args: argparse.Namespace) -> None:
    from .tiny_base import BuildConfig, build_tiny_base

    cfg = BuildConfig.quick() if args.quick else BuildConfig(seed=args.seed)
    build_tiny_base(Path(args.out), Path(args.work_dir), cfg, log=functools.partial(print, flush=True))


def _export_single_file(args: argparse.Namespace) -> None:
    from . import checkpoints
    from .single_file import export_single_file

    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint(args.base_model))
    print(export_single_file(pipe, Path(args.out)))


def _tiny_report(args: argparse.Namespace) -> None:
    from .tiny_report import write_report

    print(json.dumps(write_report(Path(args.out)), indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-studio", description="LoRA training and generation on Cog.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="sample a base checkpoint into image files")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--scheduler", default="DPMSolverMultistep")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--num-outputs", type=int, default=1)
    p.add_argument("--seed", type=int)
    p.add_argument("--output-format", default="png", choices=["png", "webp", "jpg"])
    p.add_argument("--out", default="outputs")
    p.set_defaults(func=_generate)

    p = sub.add_parser("train", help="train a LoRA from a zip of photos (what predict_train.py does)")
    p.add_argument("zip")
    p.add_argument("--task", default="face", choices=["face", "object", "style"])
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="override the task preset's step count")
    p.add_argument("--out", default="outputs/train")
    p.set_defaults(func=_train)

    p = sub.add_parser("build-tiny-base", help="train the embedded tiny base model (tens of minutes on CPU)")
    p.add_argument("--out", default="weights/tiny-sd")
    p.add_argument("--work-dir", default=".build/tiny-sd-work", help="checkpoints; rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps only: checks the script, not a usable model")
    p.set_defaults(func=_build_tiny_base)

    p = sub.add_parser("export-single-file", help="write a base as one original-layout .safetensors file")
    p.add_argument("--base-model", default="tiny")
    p.add_argument("out")
    p.set_defaults(func=_export_single_file)

    p = sub.add_parser("tiny-report", help="colour and shape tests of the tiny base, and the README grid")
    p.add_argument("--out", default="docs/tiny-grid.png")
    p.set_defaults(func=_tiny_report)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
