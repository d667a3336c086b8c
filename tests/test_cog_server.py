"""Both predictors behind Cog's own HTTP server (coglet), with the committed schemas: what a GPU image runs."""

import base64
import io
import json
import shutil
import zipfile

import pytest
from test_cog_schema import ROOT, _request, cog_server

from conftest import zip_images
from lora_core.tiny import tiny_world
from lora_core.tools import cog_schema
from service_harness import progress_steps


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


@pytest.mark.medium
def test_the_generation_model_validates_and_runs():
    with cog_server(ROOT, "predict_generate.py:Predictor") as port:
        status, body = _request(port, "/predictions", {"input": {"prompt": "a red circle", "seed": 1}})
        assert (status, body["status"]) == (200, "succeeded"), body
        assert len(body["output"]) == 1 and body["output"][0].startswith("data:image/png;base64,")
        status, body = _request(port, "/predictions", {"input": {"prompt": "a red circle", "num_outputs": 9}})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "input", "num_outputs"]
        status, body = _request(port, "/predictions", {"input": {"prompt": "x", "scheduler": "Heun"}})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "input", "scheduler"]
        # a bad LoRA URL fails that prediction with a sentence; the server stays up
        status, body = _request(port, "/predictions", {"input": {"prompt": "<1>", "lora_urls": "ftp://x/y"}})
        assert body["status"] == "failed" and "ftp" in body["error"]
        assert _request(port, "/health-check")[1]["status"] in ("READY", "BUSY")


@pytest.mark.slow
def test_the_training_model_validates_and_runs(tmp_path):
    """The training model's worker runs in its own folder, holding that model's schema as .cog/openapi_schema.json."""
    run_dir = tmp_path / "lora-training"
    (run_dir / ".cog").mkdir(parents=True)
    shutil.copy(cog_schema.schema_file(ROOT, "cog-train.yaml"), run_dir / ".cog" / "openapi_schema.json")
    zip_path = zip_images(tmp_path / "stars.zip", tiny_world.concept_images("star", "purple", 5, first_seed=0))
    with cog_server(run_dir, f"{ROOT / 'predict_train.py'}:Predictor") as port:
        status, body = _request(
            port,
            "/predictions",
            {"input": {"instance_data": data_uri(zip_path.read_bytes(), "application/zip"), "task": "painting"}},
        )
        assert status == 422 and body["detail"][0]["loc"] == ["body", "input", "task"]
        status, body = _request(
            port,
            "/predictions",
            {
                "input": {
                    "instance_data": data_uri(zip_path.read_bytes(), "application/zip"),
                    "task": "object",
                    "seed": 2,
                    "max_train_steps": 5,
                    "checkpoints": 1,
                    "grid_steps": 2,
                }
            },
        )
        assert (status, body["status"]) == (200, "succeeded"), body.get("error") or body.get("logs", "")[-2000:]
        assert (100, 5, 5) in progress_steps(body["logs"])
        lora = base64.b64decode(body["output"]["lora"].split(",", 1)[1])
        header = json.loads(lora[8 : 8 + int.from_bytes(lora[:8], "little")])
        assert header["__metadata__"]["lora_studio.task"] == "object"
        # a zip with no images fails that training and says why
        empty = io.BytesIO()
        with zipfile.ZipFile(empty, "w") as z:
            z.writestr("notes.txt", "hello")
        status, body = _request(
            port,
            "/predictions",
            {"input": {"instance_data": data_uri(empty.getvalue(), "application/zip"), "task": "object"}},
        )
        assert body["status"] == "failed" and "image" in body["error"].lower()
