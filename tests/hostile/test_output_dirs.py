"""A long-running predictor keeps a bounded number of predictions' output files on disk (it kept every one)."""

from __future__ import annotations

import shutil
import tempfile

from lora_core.output_dirs import OutputDirs


def test_a_predictor_keeps_only_its_last_few_predictions_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    outputs = OutputDirs("generate-", keep=3)
    folders = []
    for i in range(20):
        folder = outputs.new()
        assert not any(folder.iterdir())
        (folder / f"out-{i}.png").write_bytes(b"png")
        folders.append(folder)
    assert [p.name for p in tmp_path.iterdir()] == [outputs.root.name]  # one root in the temp dir
    assert sorted(outputs.root.iterdir()) == folders[-3:]  # holding only the latest predictions' folders
    assert not folders[0].exists() and (folders[-1] / "out-19.png").exists()


def test_a_root_deleted_from_under_it_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    outputs = OutputDirs("train-")
    outputs.new()
    shutil.rmtree(outputs.root)  # e.g. a temp-dir cleaner
    assert outputs.new().is_dir()


def test_the_running_workers_keep_a_bounded_number_of_output_folders(hardened, alice):
    from .conftest import GENERATE, timed

    for seed in range(6):
        result, _ = timed(alice, GENERATE, {"prompt": "a red circle", "num_inference_steps": 1, "seed": seed})
        assert result["status"] == "succeeded"
    (root,) = list(hardened.tmp_dir.glob("generate-*"))  # one output root for the worker's whole life
    assert 1 <= len(list(root.iterdir())) <= 4
