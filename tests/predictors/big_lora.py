"""``predict_train.Predictor`` as Cog serves it, its inputs, checks and output delivery unchanged, with the
training replaced by one that writes a LoRA file of ``BIG_LORA_BYTES`` (seed ``BIG_LORA_SEED``): the tiny base
cannot make a file of the size an SD-1.5 or SDXL LoRA at a high rank has (hundreds of MB), and this is about how
such a file travels, not how it is made."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]  # payload.py and predict_train.py (Cog imports this by path)

import payload  # noqa: E402

import predict_train  # noqa: E402
from lora_core import output_dirs  # noqa: E402
from lora_core.training import training_job  # noqa: E402


def write_big_outputs(pipe, base_hash, instance_data, request, out_dir, log, checkpoint=None):
    size, seed = int(os.environ["BIG_LORA_BYTES"]), int(os.environ.get("BIG_LORA_SEED", "0"))
    lora = Path(out_dir) / "lora.safetensors"
    with lora.open("wb") as f:
        for chunk in payload.safetensors(size, seed):
            f.write(chunk)
    a1111, grid = Path(out_dir) / "lora_a1111.safetensors", Path(out_dir) / "scales_grid.png"
    a1111.write_bytes(b"".join(payload.blocks(3 * payload.BLOCK + 5, seed + 1)))
    grid.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    embedding = Path(out_dir) / "object0.safetensors"
    embedding.write_bytes(b"".join(payload.blocks(5, seed + 3)))
    report, checkpoint = Path(out_dir) / "report.json", Path(out_dir) / "checkpoint.safetensors"
    report.write_text("{}")
    checkpoint.write_bytes(b"".join(payload.blocks(2 * payload.BLOCK + 7, seed + 2)))  # the big one is `lora`
    log(f"wrote {size} bytes")
    return training_job.TrainingResult(
        lora=lora,
        lora_a1111=a1111,
        embedding=embedding,
        grid=grid,
        metadata={},
        checkpoints=[checkpoint],
        report=report,
    )


class _NoBase:
    base_hash = "none"
    checkpoint = None

    def get(self, name: str) -> None:
        return None


class Predictor(predict_train.Predictor):
    def setup(self) -> None:
        self.bases = _NoBase()
        self.outputs = output_dirs.OutputDirs("big-lora-")
        training_job.run_training = write_big_outputs  # this stand-in's process only
