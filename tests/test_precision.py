"""Half precision on the tiny base: the GPU images' path (float16 base, float32 training under autocast) run here
in bfloat16, which CPUs compute, so the dtype logic is not first run by a user on a GPU."""

import numpy as np
import pytest
import torch

from conftest import pipe_weights, purple_stars
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, patching, prompts
from lora_core.training import presets, trainer
from lora_core.training.preprocess import Example

pytestmark = pytest.mark.medium


@pytest.fixture(scope="module")
def half_pipe():
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, prompt: str) -> np.ndarray:
    defaults = checkpoints.get_checkpoint("tiny").defaults
    request = sampling.resolve_request(defaults, prompt=prompt, seed=3, num_inference_steps=8)
    return np.asarray(sampling.sample(pipe, request)[0], np.int16)


def test_a_bfloat16_base_trains_float32_lora_parameters_and_stays_pristine(half_pipe):
    preset = presets.get_preset("object")
    examples = [
        Example(f"star{i}", image.resize((64, 64)), None, preset.caption_template.format(tokens="<s0><s1>"))
        for i, image in enumerate(purple_stars(4))
    ]
    cfg = trainer.TrainingConfig(
        steps=6,
        batch_size=2,
        resolution=64,
        rank=4,
        learning_rate=1e-3,
        learning_rate_text=1e-4,
        learning_rate_embeddings=1e-3,
        train_text_encoder=True,
        tokens=("<s0>", "<s1>"),
        init_word="object",
        seed=0,
    )
    before = pipe_weights(half_pipe)
    trained = trainer.train_lora(half_pipe, examples, cfg, log=lambda _: None)
    tensors = {**trained.unet, **{k: v for state in trained.text_encoders.values() for k, v in state.items()}}
    # trained in float32 (the optimiser's updates would vanish in a half-precision parameter), and they moved
    assert {t.dtype for t in tensors.values()} | {t.dtype for t in trained.embeddings.values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in tensors.values()) and np.isfinite(trained.final_loss)
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in trained.unet.items())
    # the warm base: still bfloat16, bit for bit what it was, and no training layers left in it
    after = pipe_weights(half_pipe)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {t.dtype for t in after.values()} == {torch.bfloat16}


def test_a_bfloat16_base_samples_with_merged_loras_and_is_restored(half_pipe):
    gen = torch.Generator().manual_seed(0)
    table = binding.module_table(half_pipe)
    tensors = {}
    for path, shape in table.shapes.items():
        if path.endswith(("to_q", "to_v", "q_proj")):
            tensors[f"{path}.lora_A.weight"] = torch.randn(4, *shape[1:], generator=gen) * 0.3
            tensors[f"{path}.lora_B.weight"] = torch.randn(shape[0], 4, generator=gen) * 0.3
    adapter = binding.bind(half_pipe, tensors, {})
    assert {layer.up.dtype for layer in adapter.layers.values()} == {torch.bfloat16}  # merged in the base's dtype
    before, base = pipe_weights(half_pipe), draw(half_pipe, "a red circle")
    with patching.applied(half_pipe, [adapter], [1.0]) as texts:
        changed = draw(half_pipe, prompts.expand("a red circle", texts))
    assert np.abs(changed - base).mean() > 2
    after = pipe_weights(half_pipe)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("token_embedding.weight"))
    assert np.array_equal(draw(half_pipe, "a red circle"), base)


def test_a_pipeline_moved_to_another_dtype_after_a_lora_is_patched_in_its_new_weights():
    """The merge buffers are kept per layer; a base converted since (another dtype or device) starts them over
    instead of pointing its layers back at the old tensors."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    path, shape = next((p, s) for p, s in binding.module_table(pipe).shapes.items() if p.endswith("to_q"))
    tensors = {
        f"{path}.lora_A.weight": torch.randn(4, shape[1], generator=gen),
        f"{path}.lora_B.weight": torch.randn(shape[0], 4, generator=gen),
    }
    module = pipe.unet.get_submodule(path.split(".", 1)[1])
    with patching.applied(pipe, [binding.bind(pipe, tensors, {})], [1.0]):
        pass
    pipe.to(dtype=torch.bfloat16)
    original = module.weight.detach().clone()
    with patching.applied(pipe, [binding.bind(pipe, tensors, {})], [1.0]):
        assert module.weight.dtype == torch.bfloat16 and not torch.equal(module.weight, original)
    assert module.weight.dtype == torch.bfloat16 and torch.equal(module.weight, original)


def test_restoring_points_each_layer_back_at_its_original_tensor(half_pipe):
    """No copy on the way out: the layers' own tensors are never written, so the restore costs nothing."""
    gen = torch.Generator().manual_seed(2)
    path, shape = next((p, s) for p, s in binding.module_table(half_pipe).shapes.items() if p.endswith("to_k"))
    module = half_pipe.unet.get_submodule(path.split(".", 1)[1])
    tensors = {
        f"{path}.lora_A.weight": torch.randn(4, shape[1], generator=gen),
        f"{path}.lora_B.weight": torch.randn(shape[0], 4, generator=gen),
    }
    storage, original = module.weight.data_ptr(), module.weight.detach().clone()
    with patching.applied(half_pipe, [binding.bind(half_pipe, tensors, {})], [0.5]):
        assert module.weight.data_ptr() != storage
    assert module.weight.data_ptr() == storage and torch.equal(module.weight, original)
