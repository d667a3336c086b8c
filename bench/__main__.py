"""``python -m bench [--quick]`` (or ``lora-studio bench``): every benchmark, one after the other.

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
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    metrics = []
    for name in args.only or SUITES:  # one after the other: never two torch jobs at once
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        metrics += SUITES[name](args.quick)
    out = Path(args.out)
    doc = results.write(out, metrics, "quick" if args.quick else "full")
    plot.write(doc, out.with_suffix(".png"))
    print(results.table(metrics))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
