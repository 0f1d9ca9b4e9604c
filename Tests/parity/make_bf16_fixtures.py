#!/usr/bin/env python3
"""Writes the bf16 mixed-precision references for Tests/UNetTests/MixedPrecisionTests (run once after
make_unet_fixtures.py; `swift test` never needs Python).

    .venv-fixtures/bin/python Tests/parity/make_bf16_fixtures.py

For each of Tests/UNetTests/Fixtures/unet_conv and unet_linear (the random-weight U-Nets with their peft LoRA,
lora_peft.safetensors, and inputs io.safetensors), writes io_bf16.safetensors with, under three prefixes:

  bf16_weights.   the exact answer of hgdpo's bf16 mode on CPUs without AVX512-BF16: every conv / linear base
                  weight rounded to bf16 (`.to(torch.bfloat16)`, round to nearest even), then everything in float64
                  (LoRA A/B, norms, biases unrounded). hgdpo widens the bf16 weights to fp32 and calls sgemm, so it
                  should match this as closely as fp32 matches the fp64 reference.
  bf16_gemm.      the exact answer of hgdpo's AVX512-BF16 path: as bf16_weights, and the activation operand of
                  every base conv / linear GEMM rounded to bf16 as well (forward: the layer's input; backward: the
                  gradient of its output), float64 otherwise. The LoRA branch and attention stay unrounded, as in
                  hgdpo. (Forward pre-hooks and full backward pre-hooks on the base layers.)
  torch_bf16.     what PyTorch users get from diffusers' LoRA training scripts with --mixed_precision bf16: the
                  frozen U-Net cast to bfloat16, the LoRA parameters kept float32 (cast_training_params), forward
                  and backward under torch.autocast("cpu", dtype=torch.bfloat16). A yardstick, not a target.

Each prefix holds output (adapters off), output_lora_1 (LoRA scale 1), grad_sample and grad.<module>.lora_A.weight /
.lora_B.weight of loss = sum(output_lora_1 · loss_weights), as io.safetensors does for the exact fp32 model.
"""
import copy
import os

import torch

torch.set_num_threads(2)

from diffusers import UNet2DConditionModel  # noqa: E402
from peft import LoraConfig, set_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(TESTS, "UNetTests", "Fixtures")
LORA = dict(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
ADAPTER = "default"


def bf16(t):
    return t.float().to(torch.bfloat16).to(t.dtype)


def base_layers(unet):
    """The conv / linear layers whose weights hgdpo stores in bf16: every Conv2d and Linear except LoRA's A and B."""
    return [(n, m) for n, m in unet.named_modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and ".lora_" not in n]


def load(folder):
    unet = UNet2DConditionModel.from_pretrained(folder).eval()
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(**LORA), adapter_name=ADAPTER)
    result = set_peft_model_state_dict(unet, load_file(os.path.join(folder, "lora_peft.safetensors")), adapter_name=ADAPTER)
    assert not [k for k in result.missing_keys if ".lora_" in k] and not result.unexpected_keys, result
    return unet


def run(unet, io, dtype, autocast=False):
    """output (adapters off), output_lora_1, and the gradients of sum(output_lora_1 · loss_weights)."""
    out = {}
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else torch.enable_grad
    lora = {n: p for n, p in unet.named_parameters() if ".lora_" in n}
    for p in lora.values():
        p.requires_grad_(True)
        p.grad = None
    with torch.no_grad(), ctx():
        unet.disable_adapters()
        out["output"] = unet(io["sample"].to(dtype), io["timestep"],
                             encoder_hidden_states=io["encoder_hidden_states"].to(dtype)).sample.float()
        unet.enable_adapters()
        for p in lora.values():   # enable_adapters marks the adapters trainable again; keep the base frozen
            p.requires_grad_(True)
    sample = io["sample"].to(dtype).requires_grad_(True)
    with ctx():
        y = unet(sample, io["timestep"], encoder_hidden_states=io["encoder_hidden_states"].to(dtype)).sample
    (y.to(torch.float64) * io["loss_weights"].double()).sum().backward()
    out["output_lora_1"] = y.detach().float()
    out["grad_sample"] = sample.grad.float()
    for n, p in lora.items():
        out["grad." + n.replace(f".{ADAPTER}.", ".")] = p.grad.float()
    return out


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def lora_grads(d):
    return torch.cat([v.flatten() for k, v in sorted(d.items()) if k.startswith("grad.")])


def make(name):
    folder = os.path.join(FIXTURES, f"unet_{name}")
    io = load_file(os.path.join(folder, "io.safetensors"))
    unet = load(folder)
    results = {}

    # bf16 weights, float64 arithmetic.
    m = copy.deepcopy(unet)
    with torch.no_grad():
        for _, layer in base_layers(m):
            layer.weight.copy_(bf16(layer.weight))
    m = m.double()
    results["bf16_weights"] = run(m, io, torch.float64)

    # ... and bf16 activation operands of the base GEMMs, forward and backward.
    handles = []
    for _, layer in base_layers(m):
        handles.append(layer.register_forward_pre_hook(lambda mod, args: tuple(bf16(a) for a in args)))
        handles.append(layer.register_full_backward_pre_hook(
            lambda mod, grad_output: tuple(None if g is None else bf16(g) for g in grad_output)))
    results["bf16_gemm"] = run(m, io, torch.float64)
    for h in handles:
        h.remove()

    # PyTorch's own bf16 mixed precision as diffusers' LoRA scripts set it up.
    t = copy.deepcopy(unet).to(torch.bfloat16)
    for n, p in t.named_parameters():
        if ".lora_" in n:
            p.data = p.data.float()
    results["torch_bf16"] = run(t, io, torch.float32, autocast=True)

    exact = {"output": io["output"], "output_lora_1": io["output_lora_1"], "grad_sample": io["grad_sample"]}
    exact.update({k: v for k, v in io.items() if k.startswith("grad.")})
    for prefix, r in results.items():
        print(f"unet_{name} {prefix:13s} vs fp32 exact: output {rel(r['output'], exact['output']):.2e}, "
              f"LoRA 1 {rel(r['output_lora_1'], exact['output_lora_1']):.2e}, "
              f"LoRA grads {rel(lora_grads(r), lora_grads(exact)):.2e}, grad_sample {rel(r['grad_sample'], exact['grad_sample']):.2e}")
    out = {f"{prefix}.{k}": v.contiguous() for prefix, r in results.items() for k, v in r.items()}
    path = os.path.join(folder, "io_bf16.safetensors")
    save_file(out, path, metadata={"generator": "Tests/parity/make_bf16_fixtures.py", "torch": torch.__version__})
    print(f"  {path}: {os.path.getsize(path) / 1e3:.1f} kB")


if __name__ == "__main__":
    for name in ("conv", "linear"):
        make(name)
