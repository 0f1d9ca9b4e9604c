# FLOPs of one HG-DPO training step per preference pair on the SD1.5 U-Net, counted by torch's FlopCounterMode on
# the meta device (shapes only: nothing is computed or allocated), for the communication projection in
# BENCHMARKS.md (issue 6). A pair costs, as hgdpo train runs it (Sources/Training/Step.swift):
#   policy forward over winner and loser (2 samples), reference forward over both (2 samples, no grad), and the
#   backward of the policy forward with frozen base weights: input gradients through every layer plus the LoRA's
#   (rank 8) weight gradients, counted here with the LoRA of hgdpo (to_q, to_k, to_v, to_out.0 of every attention).
# Usage: .venv-fixtures/bin/python bench/step_flops.py [H W]     (latent height and width, default 88 128 = 704x1024)
import sys
import torch
from torch.utils.flop_counter import FlopCounterMode
from diffusers import UNet2DConditionModel
sys.path.insert(0, "/work/shared/bench")
from unet_configs import SD15

H, W = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) == 3 else (88, 128)
R = 8

with torch.device("meta"):
    unet = UNet2DConditionModel(**SD15)
unet.requires_grad_(False)
# LoRA as peft adds it: y = W x + B (A x), A (r, in), B (out, r); only A and B train.
lora_params = 0
targets = [(n, m) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
           and (n.split(".")[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0"))]

class LoRALinear(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.a = torch.nn.Parameter(torch.zeros(R, base.in_features, device="meta"))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, R, device="meta"))
    def forward(self, x):
        return self.base(x) + (x @ self.a.t()) @ self.b.t()

for n, m in targets:
    parent = unet.get_submodule(n.rsplit(".", 1)[0])
    setattr(parent, n.rsplit(".", 1)[1], LoRALinear(m))
    lora_params += R * (m.in_features + m.out_features)

def sample(b):
    return (torch.empty(b, 4, H, W, device="meta"), torch.full((b,), 500, device="meta"),
            torch.empty(b, 77, 768, device="meta"))

with FlopCounterMode(display=False) as fwd:
    with torch.no_grad():
        unet(*sample(1))
with FlopCounterMode(display=False) as train:
    x, t, c = sample(2)
    unet(x, t, c).sample.sum().backward()
forward1 = fwd.get_total_flops()
policy_fb = train.get_total_flops()             # forward + backward, 2 samples
pair = policy_fb + 2 * forward1                 # + reference forward over the 2 samples
print(f"SD1.5 U-Net, latent {H}x{W} (image {8 * H}x{8 * W}), LoRA rank {R}: {lora_params:,} LoRA parameters")
print(f"forward, 1 sample: {forward1 / 1e12:.3f} TFLOP")
print(f"policy forward+backward, 2 samples (frozen weights, LoRA grads): {policy_fb / 1e12:.3f} TFLOP")
print(f"one preference pair (policy fwd+bwd + reference fwd, 4 samples): {pair / 1e12:.3f} TFLOP")
