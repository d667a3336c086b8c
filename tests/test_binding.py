"""Binding, caching and patching mechanics on the tiny base (LoRA quality is tested in test_generate_loras)."""

import numpy as np
import pytest
import torch

from conftest import pipe_weights
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, patching, prompts, token_slots
from lora_core.lora.lora_file import LoRAFileError


@pytest.fixture(scope="module")
def pipe():
    """Its own pipeline: patching adds slot tokens to the warm one, which the session's shared pipe must not see."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_lora(pipe, seed=0, rank=4):
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for path, shape in binding.module_table(pipe).shapes.items():
        if path.endswith(("to_q", "to_v", "q_proj", "conv1")):
            tensors[f"{path}.lora_A.weight"] = torch.randn(rank, *shape[1:], generator=gen) * 0.3
            tensors[f"{path}.lora_B.weight"] = (
                torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=gen) * 0.3
            )
    tensors["emb_params"] = torch.randn(2, 64, generator=gen)
    return tensors, {"lora_studio.init_word": "object"}


def draw(pipe, prompt, seed=0):
    defaults = checkpoints.get_checkpoint("tiny").defaults
    return np.asarray(sampling.sample(pipe, sampling.resolve_request(defaults, prompt=prompt, seed=seed))[0], np.int16)


def hooked(pipe):
    return sum(len(m._forward_hooks) for c in ("unet", "text_encoder") for m in getattr(pipe, c).modules())


def test_a_failure_inside_the_block_still_restores_the_base_bit_for_bit(pipe):
    adapter = binding.bind(pipe, *random_lora(pipe))
    base, before = draw(pipe, "a red circle"), pipe_weights(pipe)
    with pytest.raises(RuntimeError, match="sampling broke"):
        with patching.applied(pipe, [adapter], [1.0]) as texts:
            inside = pipe_weights(pipe)
            changed = {name.rsplit(".", 1)[0] for name in before if not torch.equal(before[name], inside[name])}
            assert changed >= set(adapter.layers) and hooked(pipe) == 0  # merged into the weights, no hooks
            assert not np.array_equal(draw(pipe, "a red circle"), base)
            raise RuntimeError("sampling broke")
    after = pipe_weights(pipe)
    assert all(torch.equal(before[name], after[name]) for name in before if not name.endswith("token_embedding.weight"))
    assert np.array_equal(draw(pipe, "a red circle"), base)
    # the slot rows were zeroed: naming a slot outside a prediction reads nothing of the last one
    _, ids = token_slots.reserve(pipe, 2)
    assert not pipe.text_encoder.get_input_embeddings().weight[ids["text_encoder"]].any()
    assert texts == [token_slots.SLOT.format(0) + token_slots.SLOT.format(1)]


def test_a_block_that_never_finished_restoring_is_restored_by_the_next(pipe):
    """A cancel can land inside the restore itself: whatever is still merged goes back at the next prediction."""
    adapter = binding.bind(pipe, *random_lora(pipe, seed=3))
    before = pipe_weights(pipe)
    interrupted = patching.applied(pipe, [adapter], [1.0])
    interrupted.__enter__()  # merged, and its restore never runs
    assert not all(torch.equal(before[n], w) for n, w in pipe_weights(pipe).items())
    with patching.applied(pipe, [], []):
        inside = pipe_weights(pipe)
    assert all(torch.equal(before[n], inside[n]) for n in before if not n.endswith("token_embedding.weight"))


def test_the_next_batch_with_the_same_loras_and_scales_merges_nothing(pipe, monkeypatch):
    """A buffer keeps what it holds: only another LoRA, another scale, or a write to the LoRA's tensors or to the
    buffer since, merges again; the images and the base are the same either way."""
    a, b = (binding.bind(pipe, *random_lora(pipe, seed)) for seed in (5, 6))
    merges: list[int] = []
    merge = patching.merge
    monkeypatch.setattr(patching, "merge", lambda *args: merges.append(1) or merge(*args))

    def merged_layers(adapters, scales):
        merges.clear()
        with patching.applied(pipe, adapters, scales):
            image = draw(pipe, "a photo of a red circle")
        return len(merges), image

    before = pipe_weights(pipe)
    layers = sum(
        patching.mergeable(
            getattr(pipe, path.split(".", 1)[0]).get_submodule(path.split(".", 1)[1]), [(x.down, x.up, 1)]
        )
        for path, x in a.layers.items()
    )
    count, first = merged_layers([a], [0.5])
    assert count == layers > 0
    count, again = merged_layers([a], [0.5])
    assert count == 0 and np.array_equal(again, first)
    assert merged_layers([a], [0.6])[0] == layers
    assert merged_layers([a, b], [0.6, 0.5])[0] == len(set(a.layers) | set(b.layers))
    assert merged_layers([b, a], [0.5, 0.6])[0] > 0  # the order of the sum is part of what a buffer holds
    assert merged_layers([a], [0.5])[0] == layers
    path, layer = next(iter(a.layers.items()))
    layer.up.mul_(1.0)  # an in-place write to a LoRA tensor, even one that changes nothing
    assert merged_layers([a], [0.5])[0] == 1
    unet_layer = pipe.unet.get_submodule(next(p for p in a.layers if p.startswith("unet.")).split(".", 1)[1])
    with patching.applied(pipe, [a], [0.5]), torch.no_grad():
        unet_layer.weight.add_(0)  # a write through the merged parameter lands in the buffer
    assert merged_layers([a], [0.5])[0] == 1
    with torch.no_grad():
        unet_layer.weight.add_(0)  # a write to the original weight between predictions: merged again from it
    assert merged_layers([a], [0.5])[0] == 1
    count, last = merged_layers([a], [0.5])
    assert count == 0 and np.array_equal(last, first)
    after = pipe_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before if not n.endswith("token_embedding.weight"))


def test_a_merged_layer_computes_what_the_lora_layer_does():
    """W + s*up@down against PEFT's/kohya's computation (W x + s * up(down(x))), for a linear layer and for a
    convolution (the down-projection with the layer's kernel, stride and padding; a 1x1 up-projection)."""
    gen = torch.Generator().manual_seed(0)
    linear, conv = torch.nn.Linear(32, 48), torch.nn.Conv2d(16, 24, 3, stride=2, padding=1)
    cases = [
        (linear, torch.randn(5, 32, generator=gen), [(torch.randn(4, 32), torch.randn(48, 4), 0.7)]),
        (
            conv,
            torch.randn(2, 16, 9, 9, generator=gen),
            [
                (torch.randn(4, 16, 3, 3), torch.randn(24, 4, 1, 1), 0.5),
                (torch.randn(2, 16, 3, 3), torch.randn(24, 2, 1, 1), -1.5),
            ],
        ),
    ]
    for module, x, deltas in cases:
        assert patching.mergeable(module, deltas)
        hook = patching._conv_hook if isinstance(module, torch.nn.Conv2d) else patching._linear_hook
        with torch.no_grad():
            expected = hook(deltas, module, (x,), module(x))
            patching.merge(module.weight, module.weight.clone(), deltas)
            assert torch.allclose(module(x), expected, atol=1e-4), (module(x) - expected).abs().max()


def test_layers_that_cannot_be_merged_keep_the_hook():
    grouped = torch.nn.Conv2d(16, 24, 3, groups=2)
    assert not patching.mergeable(grouped, [(torch.randn(4, 8, 3, 3), torch.randn(24, 4, 1, 1), 1.0)])
    plain = torch.nn.Conv2d(16, 24, 3)
    assert not patching.mergeable(plain, [(torch.randn(4, 16, 3, 3), torch.randn(24, 4, 3, 3), 1.0)])


def test_the_same_lora_twice_acts_like_double_the_scale(pipe):
    """Two applications sum their deltas, as two adapters do in PEFT: 0.5 + 0.5 == 1.0 for the layers."""
    tensors, _ = random_lora(pipe)
    tensors.pop("emb_params")
    adapter = binding.bind(pipe, tensors, {})
    with patching.applied(pipe, [adapter], [1.0]):
        once = draw(pipe, "a blue square")
    with patching.applied(pipe, [adapter, adapter], [0.5, 0.5]):
        twice = draw(pipe, "a blue square")
    assert np.abs(once - twice).max() <= 2


def test_the_cache_keeps_recent_adapters_within_its_byte_bound(pipe):
    made = []

    def make(seed):
        def bind():
            made.append(seed)
            return binding.bind(pipe, *random_lora(pipe, seed))

        return bind

    one = binding.bind(pipe, *random_lora(pipe))
    cache = binding.BindingCache(max_bytes=int(2.5 * one.nbytes))
    for seed in (1, 2, 1, 3, 1, 2):
        cache.get(f"sha{seed}", "tiny", make(seed))
    # 1 and 2 bound; 1 hit; 3 evicts 2 (least recent); 1 hit; 2 bound again (evicts 3)
    assert made == [1, 2, 3, 2] and cache.hits == 2 and len(cache) == 2


def test_a_lora_for_another_base_names_both(pipe):
    tensors = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 320),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(320, 4),
    }
    meta = {"lora_studio.base_family": "sd-1", "lora_studio.base_model": "sd-1.5"}
    with pytest.raises(
        LoRAFileError,
        match=r"made for SD 1.x \(trained on sd-1.5\), and the base is base model "
        r"'tiny' \(SD 1.x, UNet channels \(32, 64, 64\), text width 64\)",
    ):
        binding.bind(pipe, tensors, meta, base_label="base model 'tiny'")


def test_prompt_expansion_uses_the_slots(pipe):
    a, b = (binding.bind(pipe, *random_lora(pipe, seed)) for seed in (0, 1))
    with patching.applied(pipe, [a, b], [0.5, 0.0]) as texts:
        expanded = prompts.expand("a photo of <1> and <2>", texts)
    assert expanded == f"a photo of {token_slots.SLOT.format(0)}{token_slots.SLOT.format(1)} and object"
