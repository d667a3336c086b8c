import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service_harness import progress_steps


def lora_studio(*args, cwd):
    """The installed console script, as a user runs it (from another directory)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "lora-studio"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.medium
def test_generate_writes_images_and_records_the_settings(tmp_path):
    out = lora_studio(
        "generate",
        "--prompt",
        "a yellow square",
        "--num-outputs",
        "2",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "imgs"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["settings"]["seed"] == 3 and result["settings"]["guidance_scale"] == 3.0
    assert [Image.open(p).size for p in result["outputs"]] == [(64, 64), (64, 64)]


def test_errors_are_one_readable_line_and_exit_2(tmp_path):
    out = lora_studio("generate", "--prompt", "x", "--base-model", "nope", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: Unknown base model 'nope'")


@pytest.mark.slow
def test_train_on_the_example_zip_writes_the_lora_its_a1111_twin_and_the_grid(tmp_path):
    example = Path(__file__).resolve().parent.parent / "examples" / "purple-stars.zip"
    out = lora_studio(
        "train",
        str(example),
        "--task",
        "object",
        "--steps",
        "5",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "lora"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.rindex("{\n") :])
    assert all(Path(result[k]).stat().st_size > 0 for k in ("lora", "lora_a1111", "scales_grid"))
    assert (100, 5, 5) in progress_steps(out.stdout)
