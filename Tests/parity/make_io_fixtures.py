#!/usr/bin/env python3
"""Writes the committed safetensors fixtures for Tests/IOTests (run once; `swift test` never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/python Tests/parity/make_io_fixtures.py

Outputs in Tests/IOTests/Fixtures/:
  python_dtypes.safetensors   one tensor per dtype written by safetensors.torch.save_file. Values follow closed
                              forms (below, mirrored in SafeTensorsTests.swift) so Swift recomputes them; F16/BF16
                              tensors also come as F64 companions holding the values as torch rounded them; the
                              round_* tensors pin torch's F32 -> F16 / BF16 rounding on edge cases and random bits.
  tiny_unet/                  a random-weight diffusers UNet2DConditionModel, as small as diffusers allows:
                              config.json, diffusion_pytorch_model.safetensors, diffusion_pytorch_model.fp16.safetensors
                              (save_pretrained, safe_serialization=True, variant="fp16") and expected_inspect.json
                              ({name, dtype, shape} of the fp32 file in header order).
Reruns give identical files except for the order of python_dtypes' __metadata__ keys (a Rust HashMap's order).
"""
import json
import os
import shutil
import struct
import tempfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "IOTests", "Fixtures")


def closed_form(n):
    """k * 0.37 - 5 in float64, k = 0..n-1 (Swift: Double(k) * 0.37 - 5)."""
    return torch.arange(n, dtype=torch.float64) * 0.37 - 5


def rounding_inputs():
    """F32 edge cases for F16 / BF16 rounding, then random finite bit patterns."""
    special = [
        0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), -float("nan"),
        1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 1 + 2**-11, 1 + 3 * 2**-11,  # ties / near ties
        3.4028234663852886e38, -3.4028234663852886e38, 3.3895e38, 3.3961e38,  # BF16 overflow to inf
        65504.0, 65519.0, 65519.996, 65520.0, -65520.0, 1e6,  # F16 max / overflow
        2**-14, 2**-14 - 2**-25, 2**-24, 2**-25, 3 * 2**-25, 1.5 * 2**-24, 2**-26, -(2**-25),  # F16 subnormals
        2**-126, 2**-127, 1e-40, -1e-40, 1.4e-45, 1e-45 * 3,  # F32 subnormals (BF16 keeps them)
        0.1, 0.2, 0.3, 1.0 / 3.0, 3.14159265, -2.71828182, 1234.5678, -0.00012345,
    ]
    x = torch.tensor(special, dtype=torch.float32)
    g = torch.Generator().manual_seed(1234)
    bits = torch.randint(-(2**31), 2**31, (2048,), generator=g, dtype=torch.int64).to(torch.int32)
    rnd = bits.view(torch.float32).clone()
    rnd[torch.isnan(rnd)] = 0.0   # NaN payloads are not part of the contract
    return torch.cat([x, rnd])


def make_dtypes():
    k = lambda n: torch.arange(n, dtype=torch.int64)
    f16 = closed_form(35).reshape(5, 7).to(torch.float16)
    bf16 = (closed_form(35) * 1000).reshape(7, 5).to(torch.bfloat16)
    r = rounding_inputs()
    tensors = {
        "f64": closed_form(12).reshape(3, 4),
        "f32": closed_form(24).reshape(2, 3, 4).to(torch.float32),
        "f16": f16,
        "f16_as_f64": f16.to(torch.float64),
        "bf16": bf16,
        "bf16_as_f64": bf16.to(torch.float64),
        "i64": (k(6) * 123456789012 - 300000000000),
        "i64_extremes": torch.tensor([-(2**63), 2**63 - 1, -1, 0], dtype=torch.int64),
        "i32": (k(10) * 100003 - 500000).to(torch.int32).reshape(2, 5),
        "i16": (k(10) * 1001 - 5000).to(torch.int16),
        "i8": (k(16) * 13 - 100).to(torch.int8),
        "u8": ((k(16) * 17) % 256).to(torch.uint8).reshape(4, 4),
        "u16": (k(5) * 16000).to(torch.uint16),
        "u32": torch.tensor([0, 1, 4294967295], dtype=torch.int64).to(torch.uint32),
        "u64": torch.tensor([0, 2**63 - 1, 2**64 - 1], dtype=torch.uint64),
        "bool": (k(7) % 3 == 0),
        "scalar_f32": torch.tensor(3.25, dtype=torch.float32),
        "empty_f32": torch.zeros(0, dtype=torch.float32),
        "empty_i32": torch.zeros(3, 0, dtype=torch.int32),
        "round_f32": r,
        "round_f16": r.to(torch.float16),
        "round_bf16": r.to(torch.bfloat16),
    }
    metadata = {"format": "pt", "source": "make_io_fixtures.py", "note": "ünïcode \"quoted\" / back\\slash\ttab"}
    save_file(tensors, os.path.join(FIXTURES, "python_dtypes.safetensors"), metadata=metadata)


def header_entries(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))   # dicts keep the file's key order
    return [{"name": k, "dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items() if k != "__metadata__"]


def make_tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        block_out_channels=(4, 8), layers_per_block=1, norm_num_groups=2,
        cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    out = os.path.join(FIXTURES, "tiny_unet")
    os.makedirs(out, exist_ok=True)
    # Separate folders: save_pretrained cleans other weight files out of its target folder.
    with tempfile.TemporaryDirectory() as fp32_dir, tempfile.TemporaryDirectory() as fp16_dir:
        unet.save_pretrained(fp32_dir, safe_serialization=True)
        unet.to(torch.float16).save_pretrained(fp16_dir, safe_serialization=True, variant="fp16")
        shutil.copy(os.path.join(fp32_dir, "config.json"), os.path.join(out, "config.json"))
        shutil.copy(os.path.join(fp32_dir, "diffusion_pytorch_model.safetensors"), out)
        shutil.copy(os.path.join(fp16_dir, "diffusion_pytorch_model.fp16.safetensors"), out)
    entries = header_entries(os.path.join(out, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(out, "expected_inspect.json"), "w") as f:
        f.write("[\n" + ",\n".join(" " + json.dumps(e) for e in entries) + "\n]\n")   # one tensor a line


if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    make_dtypes()
    make_tiny_unet()
    total = 0
    for d, _, files in os.walk(FIXTURES):
        for name in files:
            p = os.path.join(d, name)
            total += os.path.getsize(p)
            print(f"{os.path.getsize(p):8d}  {os.path.relpath(p, ROOT)}")
    print(f"{total:8d}  total")
