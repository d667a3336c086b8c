"""``python -m bench --device …`` runs on a CPU before it first runs on a GPU: the same code (bfloat16 as the half
type), on the tiny base, 2 steps; every figure finite, written to results-<device>.json apart from the CPU ones."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.medium

ROOT = Path(__file__).resolve().parent.parent


def test_the_device_benchmark_runs_and_names_every_figure(tmp_path):
    out = tmp_path / "results-cpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--device", "cpu", "--base", "tiny", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    metrics = {m["name"]: m for m in doc["metrics"]}
    assert set(metrics) == {
        "image_s_tiny_cpu_fp32",
        "image_s_tiny_cpu_bf16",
        "merged_vs_hooks_tiny_cpu",
        "loras_vs_bare_tiny_cpu",
        "image_peak_mb_tiny_cpu_bf16",
        "train_step_s_tiny_cpu_mixed",
        "train_peak_mb_tiny_cpu_mixed",
    }
    assert all(math.isfinite(m["value"]) and m["value"] > 0 for m in metrics.values())
    assert metrics["image_peak_mb_tiny_cpu_bf16"]["baseline"] > 100  # the process with a base loaded, in MB
    assert "gpu" in doc["machine"]


# what a lent GPU machine has (../shared/NOTES-libraries.md), with what those packages pull in
DEVICE_HAS = (
    "torch torchgen functorch transformers peft safetensors huggingface_hub accelerate PIL pillow.libs requests "
    "numpy numpy.libs filelock sympy mpmath networkx jinja2 markupsafe fsspec typing_extensions.py packaging yaml "
    "_yaml regex tokenizers tqdm psutil urllib3 idna certifi charset_normalizer hf_xet httpx2 httpcore2 h11 anyio "
    "sniffio click shellingham typer rich pygments markdown_it mdurl annotated_doc truststore"
).split()
PACKED = {"diffusers", "pydantic", "pydantic_core", "pydantic_settings", "python_dotenv", "typing_inspection"}
PACKED |= {"annotated_types", "importlib_metadata", "zipp"}


def test_the_device_pack_lets_a_machine_without_diffusers_or_pydantic_run_it(tmp_path):
    """bench/device_pack.sh packs what the GPU machine lacks; a Python that sees only that machine's packages
    (``-S``: no site-packages, the path holding links to those alone) then runs the benchmark with the pack."""
    pack = subprocess.run(
        ["bash", "bench/device_pack.sh", f"{sys.version_info.major}.{sys.version_info.minor}"],
        cwd=ROOT,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pack.returncode == 0, pack.stderr[-3000:]
    site_packages = Path(next(p for p in sys.path if p.endswith("site-packages")))
    device = tmp_path / "device-site"
    device.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name.split("-")[0].lower() if entry.name.endswith(".dist-info") else entry.name
        if (entry.name in DEVICE_HAS or entry.name.endswith(".dist-info")) and name not in PACKED:
            (device / entry.name).symlink_to(entry)
    bare = {**os.environ, "PYTHONPATH": f"{device}{os.pathsep}{ROOT}"}
    lacks = subprocess.run([sys.executable, "-S", "-c", "import diffusers"], env=bare, capture_output=True)
    assert lacks.returncode != 0  # the emulated machine has no diffusers of its own
    out = tmp_path / "results-cpu.json"
    args = ["-m", "bench", "--device", "cpu", "--base", "tiny", "--quick", "--out", str(out)]
    run = subprocess.run([sys.executable, "-S", *args], cwd=ROOT, env=bare, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(json.loads(out.read_text())["metrics"]) == 7
