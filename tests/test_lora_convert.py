import pytest
import torch

from lora_core.lora.lora_convert import to_kohya


def test_kohya_names_alpha_and_bundled_embedding():
    ours = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(8, 64),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 8),
        "unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.ones(8, 32, 3, 3),
        "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.ones(32, 8, 1, 1),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(8, 64),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 8),
        "emb_params": torch.ones(2, 64),
    }
    kohya = to_kohya(ours, "object1")
    q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya[f"{q}.lora_down.weight"].shape == (8, 64) and kohya[f"{q}.lora_up.weight"].shape == (64, 8)
    assert float(kohya[f"{q}.alpha"]) == 8.0 and float(kohya[f"{te}.alpha"]) == 8.0
    assert kohya["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (8, 32, 3, 3)
    assert kohya["bundle_emb.object1.string_to_param.*"].shape == (2, 64)
    assert len(kohya) == 7 + 3  # every tensor, plus one alpha per module


def test_unknown_tensors_are_an_error_not_silently_dropped():
    with pytest.raises(ValueError, match="unexpected tensor"):
        to_kohya({"vae.decoder.weight": torch.ones(1)})
