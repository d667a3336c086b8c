"""The ``lora-studio`` command: each subcommand calls one function of ``lora_core``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path


def _generate(args: argparse.Namespace) -> None:
    """What the generation predictor does, from the command line: the same job, so the same pixels."""
    from lora_core import image_files
    from lora_core.lora import binding, generation_job
    from lora_core.net import fetch

    # Local paths are this user's own files: allowed here (never on a server), given to the fetcher as file:// URLs.
    urls = "|".join(
        u if "://" in u or u.startswith("data:") else Path(u).resolve().as_uri()
        for u in args.lora_urls.split("|")
        if u.strip()
    )
    fetcher = fetch.Fetcher(
        fetch.FetchPolicy.from_env().model_copy(update={"allow_file_urls": True}),
        log=functools.partial(print, file=sys.stderr, flush=True),
    )
    generation = generation_job.run_generation(
        _bases(),
        fetcher,
        binding.BindingCache.from_env(),
        prompt=args.prompt,
        lora_urls=urls,
        lora_scales=args.lora_scales,
        base_model=_base_model(args.base_model),
        negative_prompt=args.negative_prompt,
        scheduler=args.scheduler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
        num_outputs=args.num_outputs,
        seed=args.seed,
        log=functools.partial(print, file=sys.stderr, flush=True),
    )
    seed = generation.settings.seed
    paths = image_files.save_images(generation.images, Path(args.out), args.output_format, stem=f"seed{seed}")
    print(json.dumps({"settings": generation.settings.model_dump(), "outputs": [str(p) for p in paths]}, indent=1))


def _base_model(given: str | None) -> str | None:
    """A local ``.safetensors`` path is this user's own checkpoint, given to the fetcher as a file:// URL."""
    if given and given.endswith(".safetensors") and "://" not in given:
        return Path(given).resolve().as_uri()
    return given


_BASE_HELP = "a registry name, a checkpoint URL or a local .safetensors; empty: LORA_STUDIO_DEFAULT_BASE or tiny"


def _bases():
    """The CLI's warm base: registry names, and checkpoint URLs and local files (allowed here, never on a server)."""
    from lora_core.base import checkpoints, own_checkpoints
    from lora_core.net import fetch

    log = functools.partial(print, file=sys.stderr, flush=True)
    policy = fetch.FetchPolicy.for_checkpoints().model_copy(update={"allow_file_urls": True})
    return checkpoints.WarmPipelineCache(own=own_checkpoints.OwnCheckpoints(fetch.Fetcher(policy, log=log), log=log))


def _train(args: argparse.Namespace) -> None:
    from lora_core.training import training_job

    request = training_job.TrainingRequest(
        task=args.task,
        base_model=_base_model(args.base_model),
        seed=args.seed,
        max_train_steps=args.steps,
        checkpoints=args.checkpoints,
    )
    cache = _bases()
    pipe = cache.get(request.base_model)
    result = training_job.run_training(
        pipe,
        cache.base_hash,
        Path(args.zip),
        request,
        Path(args.out),
        log=functools.partial(print, flush=True),
        checkpoint=cache.checkpoint,
    )
    print(
        json.dumps(
            {
                "lora": str(result.lora),
                "lora_a1111": str(result.lora_a1111),
                "embedding": str(result.embedding),
                "scales_grid": str(result.grid),
                "checkpoints": [str(p) for p in result.checkpoints],
                "report": str(result.report),
            },
            indent=1,
        )
    )


def _build_tiny_base(args: argparse.Namespace) -> None:
    from lora_core.tiny.tiny_base import BuildConfig, build_tiny_base

    cfg = BuildConfig.quick() if args.quick else BuildConfig(seed=args.seed)
    if args.world_only:
        cfg = cfg.world_only()
    world_base = Path(args.from_world_base) if args.from_world_base else None
    build_tiny_base(Path(args.out), Path(args.work_dir), cfg, functools.partial(print, flush=True), world_base)


def _build_tiny_sdxl(args: argparse.Namespace) -> None:
    from lora_core.tiny.tiny_sdxl_build import XLBuildConfig, build_tiny_sdxl

    cfg = XLBuildConfig.quick() if args.quick else XLBuildConfig(seed=args.seed)
    log = functools.partial(print, flush=True)
    build_tiny_sdxl(Path(args.tiny_sd), Path(args.out), Path(args.work_dir), cfg, log)


def _export_single_file(args: argparse.Namespace) -> None:
    from lora_core.base import checkpoints, placement
    from lora_core.base.single_file import export_single_file

    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint(args.base_model or placement.default_base()))
    print(export_single_file(pipe, Path(args.out)))


def _schema(args: argparse.Namespace) -> int:
    from lora_core.tools import cog_schema

    root = Path.cwd()
    configs = args.config or [c for c in cog_schema.CONFIGS if (root / c).is_file()] or ["cog.yaml"]
    if args.out and len(configs) > 1:
        raise ValueError("--out needs one --config")
    stale = 0
    for config in configs:
        predict_ref, train_ref = cog_schema.cog_yaml_refs(root, config)
        out = Path(args.out) if args.out else cog_schema.schema_file(root, config)
        if not args.check:
            print(cog_schema.write_schema(root, predict_ref, train_ref, out=out))
            continue
        expected = cog_schema.openapi_json(predict_ref, train_ref, root).encode()
        if out.is_file() and out.read_bytes() == expected:
            print(f"{out}: up to date")
            continue
        stale += 1
        state = "out of date" if out.is_file() else "missing"
        print(f"{out}: {state} for {config}'s predictors; run `lora-studio schema` to regenerate", file=sys.stderr)
    return 1 if stale else 0


def _tiny_report(args: argparse.Namespace) -> None:
    from lora_core.tiny.tiny_report import write_report

    print(json.dumps(write_report(Path(args.out), args.base_model), indent=1))
    if args.presets:
        import tempfile

        from lora_core.tiny.preset_learning import preset_report

        out = Path(args.presets)
        with tempfile.TemporaryDirectory() as work:  # zips and LoRAs: only the figures are kept
            figures = preset_report(Path(work))
        out.write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps(figures, indent=1))


def _weights_fetch(args: argparse.Namespace) -> None:
    from lora_core.base.weights_fetch import FetchOptions, fetch_checkpoint

    options = FetchOptions.from_env(
        endpoint=args.endpoint,
        revision=args.revision,
        variant=args.variant,
        file=args.file,
        source=args.source,
        connections=args.connections,
    )
    summary = fetch_checkpoint(
        args.name, options, Path(args.dest) if args.dest else None, log=functools.partial(print, flush=True)
    )
    print(summary.text(), flush=True)


def _bench(argv: list[str]) -> int:
    """``python -m bench`` under its own argument parser (bench/ lives beside lora_core/)."""
    from lora_core.service.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / "__main__.py").is_file():
        print("error: the benchmarks run from a source checkout (bench/ beside lora_core/), not an installed wheel")
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from bench.__main__ import main as bench_main

    return bench_main(argv)


def _serve(args: argparse.Namespace) -> None:
    from lora_core.service import server
    from lora_core.service.app import create_app
    from lora_core.service.config import ServiceConfig

    config = ServiceConfig.from_env(host=args.host, port=args.port, data_dir=args.data_dir)
    if args.no_workers:  # the API and pages only: `lora-studio worker` agents run the predictions
        from lora_core.service.config import WorkerSetting
        from lora_core.service.models import MODELS

        config = config.model_copy(update={"workers": {name: WorkerSetting(count=0) for name in MODELS}})
    print(
        f"LoRA Studio on {config.public_url} (data in {config.data_dir}, database "
        f"{config.database_url.split('://')[0]}, files {config.storage_url.split('://')[0]})",
        flush=True,
    )
    app = create_app(config)
    server.run(app, config, args.log_level, drain=app.state.service.pool.drain, drain_s=args.drain_s)


def _worker(args: argparse.Namespace) -> None:
    from lora_core.service.workers import agent_server

    raise SystemExit(
        agent_server.run(
            args.model, cog_url=args.cog_url, port=args.port, host=args.host, name=args.name, drain_s=args.drain_s
        )
    )


def _migrate(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    engine = _tokens_engine(args)  # connecting migrates to the newest schema (one process at a time on PostgreSQL)
    with engine.connect() as c:
        print(f"database at schema {c.execute(sa.text('SELECT version_num FROM alembic_version')).scalar()}")


def _tokens_engine(args: argparse.Namespace):
    from lora_core.service.config import ServiceConfig
    from lora_core.service.storage import db

    return db.connect(ServiceConfig.from_env(data_dir=args.data_dir).database_url)


def _token_create(args: argparse.Namespace) -> None:
    from lora_core.service.auth import tokens

    print(tokens.create(_tokens_engine(args), args.owner))


def _token_list(args: argparse.Namespace) -> None:
    from lora_core.service.auth import tokens

    for row in tokens.listing(_tokens_engine(args), args.owner):
        print(f"{row['id']}  {row['owner']:<20} {row['hint'] or '?'}…  created {row['created_at']:%Y-%m-%d %H:%M} UTC")


def _token_revoke(args: argparse.Namespace) -> None:
    from lora_core.service.auth import tokens

    gone = tokens.revoke(_tokens_engine(args), token_id=args.id, token=args.token, owner=args.owner)
    if not gone:
        raise ValueError("no such token")
    print(f"revoked {gone} token{'s' if gone != 1 else ''}: refused from now on by every service process")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="lora-studio", description="LoRA training and generation on Cog.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser(
        "generate",
        help="sample a base checkpoint, with LoRAs if given, into image files (what predict_generate.py does)",
    )
    p.add_argument("--prompt", required=True, help="<1>, <2>... name the concepts of the 1st, 2nd... LoRA")
    p.add_argument("--lora-urls", default="", help="LoRA files (URLs or local paths), separated by '|'")
    p.add_argument("--lora-scales", default="0.5", help="one scale for all LoRAs or one per LoRA, separated by '|'")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--base-model", help=_BASE_HELP)
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
    p.add_argument("--base-model", help=_BASE_HELP)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="override the task preset's step count")
    p.add_argument("--checkpoints", type=int, default=4, help="checkpoints kept and scored (1: only the last)")
    p.add_argument("--out", default="outputs/train")
    p.set_defaults(func=_train)

    p = sub.add_parser("build-tiny-base", help="train the embedded tiny base model (tens of minutes on CPU)")
    p.add_argument("--out", default="weights/tiny-sd")
    p.add_argument("--work-dir", default=".build/tiny-sd-work", help="checkpoints; rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps only: checks the script, not a usable model")
    p.add_argument("--world-only", action="store_true", help="stages 1-3 only: a world base for --from-world-base")
    p.add_argument(
        "--from-world-base",
        metavar="DIR",
        help="run stage 4 (any colour) alone, from a base whose world stages (1-3) were built with the same settings",
    )
    p.set_defaults(func=_build_tiny_base)

    p = sub.add_parser("build-tiny-sdxl", help="train the embedded tiny SDXL base from the tiny SD one (minutes)")
    p.add_argument("--tiny-sd", default="weights/tiny-sd", help="the tiny SD base it starts from")
    p.add_argument("--out", default="weights/tiny-sdxl")
    p.add_argument("--work-dir", default=".build/tiny-sdxl-work", help="checkpoints; rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps only: checks the script, not a usable model")
    p.set_defaults(func=_build_tiny_sdxl)

    p = sub.add_parser("export-single-file", help="write a base as one original-layout .safetensors file")
    p.add_argument("--base-model", help="empty: LORA_STUDIO_DEFAULT_BASE or tiny")
    p.add_argument("out")
    p.set_defaults(func=_export_single_file)

    p = sub.add_parser("tiny-report", help="colour and shape tests of the tiny base, and the README grid")
    p.add_argument("--base-model", default="tiny", choices=["tiny", "tiny-xl"], help="which embedded base")
    p.add_argument("--out", default="docs/tiny-grid.png")
    p.add_argument(
        "--presets",
        metavar="JSON",
        help="also train each preset on its photos and write how far it moves the base towards them "
        "(minutes; e.g. docs/preset-learning.json)",
    )
    p.set_defaults(func=_tiny_report)

    p = sub.add_parser(
        "schema",
        help="write .cog/openapi_schema.json for cog.yaml's predictors (coglet validates "
        "inputs against it), as `cog build` would",
    )
    p.add_argument(
        "--config",
        action="append",
        help="a Cog config (repeatable; default: cog.yaml and cog-train.yaml, whichever exist)",
    )
    p.add_argument(
        "--out",
        help="where to write it (default: .cog/openapi_schema.json for cog.yaml, "
        ".cog/openapi_schema-<stem>.json for others)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the file differs from what the predictors' signatures give (for CI)",
    )
    p.set_defaults(func=_schema)

    p = sub.add_parser("weights", help="base checkpoints in weights/ (fetched when the image is built)")
    weights = p.add_subparsers(required=True, metavar="ACTION")
    p = weights.add_parser("fetch", help="download a registry base checkpoint from the Hugging Face hub")
    p.add_argument("name", help="a base model of the registry (lora_core/checkpoints.py)")
    p.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    p.add_argument("--revision", default="main", help="branch, tag or commit of the hub repository")
    p.add_argument("--variant", help="e.g. fp16: take those weight files where the repository has them")
    p.add_argument("--file", help="single-file checkpoints: which top-level .safetensors to take")
    p.add_argument("--source", help="hub repository id to fetch instead of the registry's (NAME becomes weights/NAME)")
    p.add_argument("--connections", type=int, default=4, help="files downloaded at once")
    p.add_argument("--dest", help="weights folder (default: $LORA_STUDIO_WEIGHTS or weights/)")
    p.set_defaults(func=_weights_fetch)

    p = sub.add_parser("serve", help="the Replicate-style service: API, web pages and Cog workers")
    p.add_argument("--host", default=None, help="default: $LORA_STUDIO_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $LORA_STUDIO_PORT or 8000")
    p.add_argument("--data-dir", help="SQLite database and files (default: $LORA_STUDIO_DATA_DIR or .data/)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-workers", action="store_true", help="API and pages only: `lora-studio worker` runs the work")
    p.add_argument(
        "--drain-s",
        type=float,
        default=600,
        help="on SIGTERM / Ctrl-C, how long running predictions may finish (a second signal stops at once)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "worker",
        help="one worker agent: takes its model's predictions from the shared database and runs them on a Cog server",
    )
    p.add_argument("--model", required=True, help="owner/name, e.g. lora-studio/lora")
    p.add_argument("--cog-url", help="a Cog server already running (a GPU container); default: start one here")
    p.add_argument("--port", type=int, default=5100, help="where the Cog server reaches this agent (default 5100)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--name", help="its name in the queue and its URLs (default: the model's name and the hostname)")
    p.add_argument("--drain-s", type=float, default=3600, help="on SIGTERM, how long the current prediction may run")
    p.set_defaults(func=_worker)

    p = sub.add_parser("migrate", help="bring the database to the newest schema (serve and worker also do on start)")
    p.add_argument("--data-dir", help="as for serve; DATABASE_URL wins")
    p.set_defaults(func=_migrate)

    sub.add_parser("bench", help="the benchmarks (bench/: `lora-studio bench --help`)")

    p = sub.add_parser("token", help="API tokens of the service")
    token = p.add_subparsers(required=True, metavar="ACTION")
    p = token.add_parser("create", help="print a new API token for an owner (only its hash is stored)")
    p.add_argument("--owner", required=True)
    p.add_argument("--data-dir", help="as for serve; DATABASE_URL wins")
    p.set_defaults(func=_token_create)
    p = token.add_parser("list", help="the tokens (id, owner, first characters, created), never the tokens themselves")
    p.add_argument("--owner")
    p.add_argument("--data-dir", help="as for serve; DATABASE_URL wins")
    p.set_defaults(func=_token_list)
    p = token.add_parser("revoke", help="revoke a token (by id, the token itself, or all of an owner's): at once")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="a token id from `token list`")
    which.add_argument("--token", help="the token itself")
    which.add_argument("--owner", help="every token of this owner")
    p.add_argument("--data-dir", help="as for serve; DATABASE_URL wins")
    p.set_defaults(func=_token_revoke)

    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
