"""bench/results.png: one small bar chart per metric with a goal (the goal as a dashed line), then the rest."""

from __future__ import annotations

import math
from pathlib import Path


def write(doc: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in doc["metrics"] if m.get("limit") is not None]
    records = [m for m in doc["metrics"] if m.get("limit") is None and m["goal"]]
    shown = metrics + records
    cols = 4
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, shown, strict=False):
        limit = m.get("limit")
        colour = "#9aa5b1" if limit is None else ("#2f9e44" if m["met"] else "#e03131")
        bars = [("ours", m["value"], colour)]
        comparable = m.get("baseline") and m.get("ratio") and abs(m["value"] / m["baseline"] - m["ratio"]) < 1e-6
        if comparable and m["unit"] != "x":  # the baseline as a bar only where the value is the same kind of figure
            bars.insert(0, ("baseline", m["baseline"], "#ced4da"))
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars], width=0.6)
        if limit is not None:
            ax.axhline(limit, color="#343a40", linestyle="--", linewidth=1)
            ax.text(1.02, limit, "goal", transform=ax.get_yaxis_transform(), fontsize=7, va="center")
        ax.set_title(m["name"], fontsize=9)
        ax.set_ylabel(m["unit"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.text(
            0.5,
            0.95,
            f"{m['value']:.3g} {m['unit']}" + ("" if m["met"] is None else (" (met)" if m["met"] else " (NOT met)")),
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=8,
        )
        ax.set_ylim(0, max([b[1] for b in bars] + [limit or 0]) * 1.3 or 1)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    machine = doc["machine"]
    fig.suptitle(
        f"LoRA Studio benchmarks ({doc['mode']}, {doc['date'][:10]}): {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['memory_gb']} GB, GPU {machine['gpu'] or 'none'}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
