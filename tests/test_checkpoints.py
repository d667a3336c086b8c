"""The registry: named bases, clear errors, single-file loading offline, one warm pipeline."""

import pickle

import numpy as np
import pytest
import torch

from lora_core.base import checkpoints, placement, sampling
from lora_core.base.single_file import export_single_file
from lora_core.env_settings import EnvSettingsError

TINY_DIR = checkpoints.weights_dir() / "tiny-sd"


class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _pixels(pipe, prompt="a blue circle"):
    request = sampling.resolve_request(checkpoints.get_checkpoint("tiny").defaults, prompt=prompt, seed=7)
    return np.asarray(sampling.sample(pipe, request)[0])


@pytest.fixture(scope="module")
def single_file_root(tmp_path_factory, tiny_pipe):
    """A weights folder where `realistic-vision-v1.3` is a single-file export of tiny, configs from `sd-1.5`."""
    root = tmp_path_factory.mktemp("weights")
    (root / "sd-1.5").symlink_to(TINY_DIR, target_is_directory=True)
    (root / "tiny-sd").symlink_to(TINY_DIR, target_is_directory=True)
    export_single_file(tiny_pipe, root / checkpoints.get_checkpoint("realistic-vision-v1.3").path)
    return root


def test_registry_names_the_tiny_default_and_the_sd15_family(monkeypatch):
    monkeypatch.delenv("LORA_STUDIO_DEFAULT_BASE", raising=False)
    assert placement.default_base() == "tiny"
    for name in ("tiny", "sd-1.5", "realistic-vision-v1.3", "inkpunk", "gta5", "vintedois"):
        assert checkpoints.get_checkpoint(name).family == "sd-1"
    tiny = checkpoints.get_checkpoint("tiny")
    assert (tiny.defaults.width, tiny.defaults.guidance_scale) == (64, 3.0)


def test_unknown_name_lists_the_choices():
    with pytest.raises(checkpoints.CheckpointError, match="Unknown base model 'sd-9'.*tiny.*sd-1.5"):
        checkpoints.get_checkpoint("sd-9")


def test_missing_weights_say_how_to_fetch_them(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not installed.*Envvi/Inkpunk-Diffusion.*never download"):
        checkpoints.load_pipeline(checkpoints.get_checkpoint("inkpunk"), root=tmp_path)


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors"])
def test_pickled_single_files_are_refused_before_loading(tmp_path, name):
    (tmp_path / "sd-1.5").symlink_to(TINY_DIR, target_is_directory=True)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFileWhenUnpickled(str(marker)), protocol=2)
    path = tmp_path / name
    path.write_bytes(payload)
    checkpoint = checkpoints.get_checkpoint("realistic-vision-v1.3").model_copy(update={"path": name})
    with pytest.raises(checkpoints.CheckpointError, match="pickle"):
        checkpoints.load_pipeline(checkpoint, root=tmp_path)
    assert not marker.exists()


def test_single_file_export_loads_offline_and_is_exact(tiny_pipe, single_file_root):
    checkpoint = checkpoints.get_checkpoint("realistic-vision-v1.3")
    loaded = checkpoints.load_pipeline(checkpoint, root=single_file_root)
    loaded.set_progress_bar_config(disable=True)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(tiny_pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert set(a) <= set(b), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert np.array_equal(_pixels(tiny_pipe), _pixels(loaded))


def test_warm_cache_keeps_one_pipeline_and_reloads_on_switch(single_file_root):
    cache = checkpoints.WarmPipelineCache(root=single_file_root)
    first = cache.get("tiny")
    assert cache.get("tiny") is first
    other = cache.get("realistic-vision-v1.3")
    assert other is not first and cache.name == "realistic-vision-v1.3"
    assert cache.get("tiny") is not first  # switched back: a fresh load, nothing kept beside it


def test_the_device_is_the_gpu_when_there_is_one_or_what_LORA_STUDIO_DEVICE_says(monkeypatch):
    """A Cog image on a GPU host samples and trains on the GPU without any setting; here there is none."""
    monkeypatch.delenv("LORA_STUDIO_DEVICE", raising=False)
    assert placement.device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LORA_STUDIO_DEVICE", "cpu")
    assert placement.device() == "cpu"
    assert checkpoints.WarmPipelineCache().get("tiny").unet.device.type == "cpu"
    if not torch.cuda.is_available():
        monkeypatch.setenv("LORA_STUDIO_DEVICE", "cuda")
        with pytest.raises(placement.PlacementError, match="sees no CUDA GPU"):
            placement.device()


def test_precision_is_float16_on_gpus_float32_on_cpus_unless_the_deployment_says(monkeypatch):
    monkeypatch.delenv("LORA_STUDIO_DTYPE", raising=False)
    assert (placement.dtype("cuda"), placement.dtype("cuda:1"), placement.dtype("cpu")) == (
        torch.float16,
        torch.float16,
        torch.float32,
    )
    monkeypatch.setenv("LORA_STUDIO_DTYPE", "bfloat16")
    assert placement.dtype("cuda") == placement.dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("LORA_STUDIO_DEVICE", "cpu")
    warm = checkpoints.WarmPipelineCache().get("tiny")
    assert {p.dtype for c in ("unet", "text_encoder", "vae") for p in getattr(warm, c).parameters()} == {torch.bfloat16}
    monkeypatch.setenv("LORA_STUDIO_DTYPE", "half")
    with pytest.raises(EnvSettingsError, match="LORA_STUDIO_DTYPE: .*'float16', 'bfloat16' or 'float32'"):
        placement.dtype("cpu")
    monkeypatch.setenv("LORA_STUDIO_DTYPE", "")
    monkeypatch.setenv("LORA_STUDIO_DEFAULT_BASE", "sd-15")
    with pytest.raises(EnvSettingsError, match="LORA_STUDIO_DEFAULT_BASE: .*choose one of tiny, tiny-xl, sd-1.5"):
        placement.default_base()
