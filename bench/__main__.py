"""``python -m bench [--quick]`` (or ``lora-studio bench``): every benchmark, one after the other; ``--device
cuda``: the GPU's (``bench/device.py``).

Writes bench/results.json (machine, versions, date, one entry per metric with its baseline,
ratio and goal) and bench/results.png, and prints a table. Each figure is a ratio against a
baseline measured in the same run, on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its per-load reports drown the table

from bench import (
    device,
    load,
    lora_file,
    lora_swap,
    plot,
    results,
    sampling_batch,
    scale_out,
    sd15_training,
    service_api,
    threads,
    training_step,
)

SUITES = {
    "training": lambda quick: training_step.measure(steps=30 if quick else 150),
    "sd15": sd15_training.measure,
    "lora": lambda quick: lora_swap.measure(repeats=5 if quick else 20, quick=quick),
    "sampling": lambda quick: sampling_batch.measure(quick),
    "service": lambda quick: service_api.measure(quick),
    "scale": lambda quick: scale_out.measure(quick),
    "file": lambda quick: lora_file.measure(quick),
    "load": lambda quick: load.measure(quick),
    "threads": lambda quick: threads.measure(quick),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 5 minutes on 2 cores)")
    parser.add_argument("--only", choices=list(SUITES), action="append", help="run only this suite (repeatable)")
    parser.add_argument(
        "--device",
        help="measure the SD-1.5-sized path on this device instead (cuda: fp16 vs fp32, merged vs hooked LoRAs, "
        "mixed-precision training, peak memory) into results-<device>.json (bench/device.py)",
    )
    parser.add_argument("--base", default="sd15", choices=["sd15", "tiny"], help="--device's base (tiny: a check)")
    parser.add_argument("--out", help="results file (default bench/results.json, or results-<device>.json)")
    args = parser.parse_args(argv)
    metrics = []
    if args.device:
        metrics += device.measure(args.device, args.quick, args.base)
    for name in [] if args.device else args.only or SUITES:  # one after the other: never two torch jobs at once
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        metrics += SUITES[name](args.quick)
    here = Path(__file__).parent
    out = Path(args.out) if args.out else here / (f"results-{args.device}.json" if args.device else "results.json")
    doc = results.write(out, metrics, "quick" if args.quick else "full")
    if not args.device:  # the GPU machine has no matplotlib; its few figures are the table
        plot.write(doc, out.with_suffix(".png"))
    print(results.table(metrics))
    print(f"wrote {out}" + ("" if args.device else f" and {out.with_suffix('.png')}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
