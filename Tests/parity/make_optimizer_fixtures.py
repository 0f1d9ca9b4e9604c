#!/usr/bin/env python3
"""Writes the optimizer fixtures for Tests/TrainingTests (run once; `swift test` never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/pip install 'bitsandbytes==0.50.*'
    .venv-fixtures/bin/python Tests/parity/make_optimizer_fixtures.py

Outputs in Tests/TrainingTests/Fixtures/:
  adam8bit.safetensors  bitsandbytes' 8-bit Adam on the CPU (block-wise dynamic quantization, block 256,
                        min_8bit_size 4096) over three tensors laid out in one flat buffer, as hgdpo's LoRA is:
                        5000 elements (8-bit state, 19 full blocks and a tail block of 136; its elements 256..511
                        always get zero gradient, as LoRA A does while B is zero, so that block's absmax stays 0),
                        300 (fp32 state: fewer than 4096 elements) and 4096 (8-bit, exactly the threshold).
                        Ten random gradient steps, shared by two runs: `adam` = bnb.optim.Adam8bit, weight_decay 0;
                        `adamw` = bnb.optim.AdamW8bit, weight_decay 0.01. After every step each run stores the
                        params, the quantized states and absmax (state1 / state2 / absmax1 / absmax2, the
                        quantized tensors concatenated in segment order) and the fp32 states of the small tensor
                        (exp_avg / exp_avg_sq), plus the two dynamic maps (create_dynamic_map signed / unsigned).
  adamw.safetensors     torch.optim.AdamW (single-tensor path, foreach=False) on 5000 parameters, ten steps: params
                        after every step and both moments after the last.

lr is float32(1e-3) held as a double: Optimizer.update takes a Float learning rate, and the bnb / torch kernels
compute -lr / (1 - beta1^t) etc. in double from the value they are given, so both sides must see the same double.
Everything else (betas, eps, weight decay) is passed as the same doubles in Swift.

The quantized states are a pure function of the gradients, so they are machine-independent. The params are not
quite: the update divides by torch.sqrt(v), which on x86 calls MKL's vsSqrt (HA), not correctly rounded and seeded
by the CPU's rsqrtps; on the machine these were made (AMD EPYC, torch CPU capability AVX2) 14-20% of float32 square
roots differ from the correctly rounded one by 1 ulp. Reruns on the same kind of machine give identical tensors (the
order of the __metadata__ keys can change: a Rust HashMap's order).
"""
import math
import os

import bitsandbytes as bnb
import bitsandbytes.functional as F
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "TrainingTests", "Fixtures")

LR = float(np.float32(1e-3))
BETAS = (0.9, 0.999)
EPS = 1e-8
STEPS = 10
SIZES = [5000, 300, 4096]
MIN_8BIT = 4096
ZERO_GRAD = (0, 256, 512)  # (tensor, begin, end): elements that always get a zero gradient


def gradient_stream(gen):
    """STEPS gradients per tensor: normal times a log-normal spread (magnitudes ~1e-3..1e2), one scale per step."""
    steps = []
    for s in range(STEPS):
        scale = float(np.exp(np.random.default_rng(s).normal()))
        gs = [torch.randn(n, generator=gen) * torch.exp(torch.randn(n, generator=gen) * 1.5) * scale for n in SIZES]
        t, b, e = ZERO_GRAD
        gs[t][b:e] = 0
        steps.append(gs)
    return steps


def run_bnb(cls, weight_decay, params0, grads):
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = cls(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=weight_decay, min_8bit_size=MIN_8BIT)
    out = {k: [] for k in ("params", "state1", "state2", "absmax1", "absmax2", "exp_avg", "exp_avg_sq")}
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        out["params"].append(torch.cat([p.detach().clone() for p in params]))
        q = [opt.state[p] for p in params if opt.state[p]["state1"].dtype == torch.uint8]
        f = [opt.state[p] for p in params if opt.state[p]["state1"].dtype == torch.float32]
        assert len(q) == 2 and len(f) == 1
        for k in ("state1", "state2", "absmax1", "absmax2"):
            out[k].append(torch.cat([s[k].clone() for s in q]))
        out["exp_avg"].append(torch.cat([s["state1"].clone() for s in f]))
        out["exp_avg_sq"].append(torch.cat([s["state2"].clone() for s in f]))
        assert all(opt.state[p]["step"] == len(out["params"]) for p in params)
    return {k: torch.stack(v).contiguous() for k, v in out.items()}


def make_adam8bit():
    gen = torch.Generator().manual_seed(8)
    params0 = [torch.randn(n, generator=gen) for n in SIZES]
    grads = gradient_stream(gen)
    offsets = np.cumsum([0] + SIZES[:-1]).tolist()
    tensors = {
        "params0": torch.cat(params0),
        "grads": torch.stack([torch.cat(gs) for gs in grads]),
        "segments": torch.tensor([[o, n] for o, n in zip(offsets, SIZES)], dtype=torch.int64),
        "qmap_signed": F.create_dynamic_map(signed=True),
        "qmap_unsigned": F.create_dynamic_map(signed=False),
    }
    runs = {"adam": (bnb.optim.Adam8bit, 0.0), "adamw": (bnb.optim.AdamW8bit, 0.01)}
    metadata = {"lr": repr(LR), "beta1": repr(BETAS[0]), "beta2": repr(BETAS[1]), "eps": repr(EPS),
                "steps": str(STEPS), "block_size": "256", "min_8bit_size": str(MIN_8BIT),
                "bitsandbytes": bnb.__version__, "torch": torch.__version__,
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, (cls, wd) in runs.items():
        metadata[f"{name}.weight_decay"] = repr(wd)
        for k, v in run_bnb(cls, wd, params0, grads).items():
            tensors[f"{name}.{k}"] = v
    path = os.path.join(FIXTURES, "adam8bit.safetensors")
    save_file(tensors, path, metadata=metadata)
    return path


def make_adamw():
    gen = torch.Generator().manual_seed(9)
    n = 5000
    p = torch.nn.Parameter(torch.randn(n, generator=gen))
    params0 = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=LR, betas=BETAS, eps=EPS, weight_decay=0.01, foreach=False)
    grads, params = [], []
    for _ in range(STEPS):
        g = torch.randn(n, generator=gen) * torch.exp(torch.randn(n, generator=gen) * 1.5)
        grads.append(g)
        p.grad = g.clone()
        opt.step()
        params.append(p.detach().clone())
    st = opt.state[p]
    tensors = {"params0": params0, "grads": torch.stack(grads), "params": torch.stack(params),
               "exp_avg": st["exp_avg"].clone(), "exp_avg_sq": st["exp_avg_sq"].clone()}
    metadata = {"lr": repr(LR), "beta1": repr(BETAS[0]), "beta2": repr(BETAS[1]), "eps": repr(EPS),
                "weight_decay": "0.01", "steps": str(STEPS), "torch": torch.__version__}
    path = os.path.join(FIXTURES, "adamw.safetensors")
    save_file(tensors, path, metadata=metadata)
    return path


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.makedirs(FIXTURES, exist_ok=True)
    for path in (make_adam8bit(), make_adamw()):
        print(f"{path}: {os.path.getsize(path)} bytes")
