"""``python -m bench [--quick]``: runs every benchmark, prints a table, writes bench/results.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import lora_swap, results, training_step

SUITES = {
    "training": lambda quick: training_step.measure(steps=30 if quick else 150),
    "lora": lambda quick: lora_swap.measure(repeats=5 if quick else 20),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few minutes on 2 cores)")
    parser.add_argument("--only", choices=list(SUITES), action="append", help="run only this suite (repeatable)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results.json"))
    args = parser.parse_args(argv)
    metrics = []
    for name in args.only or SUITES:  # one after the other: never two torch jobs at once
        metrics += SUITES[name](args.quick)
    results.write(Path(args.out), metrics, "quick" if args.quick else "full")
    print(results.table(metrics))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
