"""The results file: machine, versions, date, and one entry per metric."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Metric:
    """One measured figure; ``limit`` is its goal (value <= limit), from which ``goal`` and ``met`` follow."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    limit: float | None = None

    def __post_init__(self) -> None:
        if self.limit is not None:
            self.goal = self.goal or f"<= {self.limit:g}{'' if self.unit == 'x' else ' ' + self.unit}"
            if self.met is None:
                self.met = self.value <= self.limit


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write(path: Path, metrics: list[Metric], mode: str) -> dict:
    import diffusers
    import peft
    import transformers

    for m in metrics:
        if not math.isfinite(m.value):
            raise ValueError(f"metric {m.name} is not finite: {m.value}")
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entries = [{**asdict(m), "date": now, "mode": mode} for m in metrics]
    doc = {
        "date": now,
        "mode": mode,
        "machine": machine(),
        "versions": {
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    if path.exists():  # a partial run (--only) keeps the other suites' figures measured on this same machine
        old = json.loads(path.read_text())
        if old.get("machine") == doc["machine"] and old.get("versions") == doc["versions"]:
            measured = {e["name"] for e in entries}
            entries = [e for e in old.get("metrics", []) if e["name"] not in measured] + entries
    doc["metrics"] = entries
    path.write_text(json.dumps(doc, indent=1))
    return doc


def table(metrics: list[Metric]) -> str:
    rows = [f"{'metric':28} {'value':>10} {'unit':6} {'baseline':>10} {'ratio':>7}  goal"]
    for m in metrics:
        base = "" if m.baseline is None else f"{m.baseline:10.4g}"
        ratio = "" if m.ratio is None else f"{m.ratio:7.3f}"
        status = "" if m.met is None else (" (met)" if m.met else " (NOT met)")
        rows.append(f"{m.name:28} {m.value:10.4g} {m.unit:6} {base:>10} {ratio:>7}  {m.goal}{status}")
    return "\n".join(rows)
