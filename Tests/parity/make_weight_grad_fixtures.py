#!/usr/bin/env python3
"""Writes the full-parameter gradient fixtures for Tests/UNetTests (run once; `swift test` never needs Python).

    /work/.venv-torch/bin/python Tests/parity/make_weight_grad_fixtures.py    (or Tests/parity/setup_venv.sh's venv)

`hgdpo train --train unet` trains every U-Net parameter. This checks its parameter gradients against autograd on the
two random-weight U-Nets of make_unet_fixtures.py (unet_conv: conv proj_in/proj_out; unet_linear: linear ones, two
layers per block, non-square latent), without LoRA, on their io.safetensors inputs:

    loss = sum(unet(sample, timestep, encoder_hidden_states).sample · loss_weights)

computed in float64 from the float32 weights and inputs (as make_unet_fixtures.py; get_timestep_embedding stays
float32, as in diffusers). The objective's own gradient d loss / d ε_pred (sft, dpo, hgdpo) is checked apart in
Tests/TrainingTests (make_dpo_fixtures.py); the trainer chains the two.

Output Tests/UNetTests/Fixtures/unet_<name>/weight_grads.safetensors, float32: grad.<state-dict key> for every
1-D parameter (every norm's weight and bias, every bias) and for the matrices in MATRICES (a conv, a 1x1 shortcut,
the resamplers, the time embedding's linears, a time_emb_proj, proj_in/proj_out, attention and feed-forward
projections, conv_in, conv_out): every kind of parameter and every code path of the backward, kept under 1 MB.
"""
import os

import torch

torch.set_num_threads(2)

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "UNetTests", "Fixtures")
T = "down_blocks.0.attentions.0"
MATRICES = [
    "conv_in.weight", "time_embedding.linear_1.weight", "time_embedding.linear_2.weight",
    "down_blocks.0.resnets.0.conv1.weight", "down_blocks.0.resnets.0.conv2.weight",
    "down_blocks.0.resnets.0.time_emb_proj.weight", "down_blocks.1.resnets.0.conv_shortcut.weight",
    "down_blocks.0.downsamplers.0.conv.weight", "up_blocks.0.upsamplers.0.conv.weight",
    f"{T}.proj_in.weight", f"{T}.proj_out.weight",
    f"{T}.transformer_blocks.0.attn1.to_q.weight", f"{T}.transformer_blocks.0.attn1.to_out.0.weight",
    f"{T}.transformer_blocks.0.attn2.to_k.weight", f"{T}.transformer_blocks.0.attn2.to_v.weight",
    f"{T}.transformer_blocks.0.ff.net.0.proj.weight", f"{T}.transformer_blocks.0.ff.net.2.weight",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight", "up_blocks.1.resnets.0.conv1.weight",
    "conv_out.weight",
]


def main():
    for name in ["conv", "linear"]:
        folder = os.path.join(FIXTURES, f"unet_{name}")
        io = load_file(os.path.join(folder, "io.safetensors"))
        unet = UNet2DConditionModel.from_pretrained(folder).double()
        out = unet(io["sample"].double(), io["timestep"], encoder_hidden_states=io["encoder_hidden_states"].double()).sample
        (out * io["loss_weights"].double()).sum().backward()
        grads = {}
        for key, p in unet.named_parameters():
            if p.dim() == 1 or key in MATRICES:
                grads["grad." + key] = p.grad.float().contiguous()
        missing = [k for k in MATRICES if "grad." + k not in grads]
        assert not missing, missing
        path = os.path.join(folder, "weight_grads.safetensors")
        save_file(grads, path, metadata={"loss": "sum(output * loss_weights), no LoRA"})
        print(f"unet_{name}: {len(grads)} gradients, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
