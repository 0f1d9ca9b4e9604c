#!/usr/bin/env python3
"""Writes the committed fixtures of Tests/LatentEncodingTests (run once; `swift test` never needs Python).

    /work/main/.venv-fixtures/bin/python Tests/parity/make_encode_fixtures.py

Everything is seeded; a rerun rewrites the same files.

Outputs in Tests/LatentEncodingTests/Fixtures/:

  image_37x23.png, image_20x30.png, image_9x7.png
      Random RGB PNGs (written by PIL): a landscape, a portrait and a tiny one (enlarged by every target).

  resize.safetensors
      For each image NAME and target (W, H) in TARGETS:
        NAME.input                  (3, h, w) the PNG as the VAE takes it: x / 255 · 2 − 1, float32
        NAME.WxH.resized_torch      torch.nn.functional.interpolate(input, size=cover(w, h, W, H), mode="bilinear",
                                    antialias=True, align_corners=False): torchvision's Resize on tensors
        NAME.WxH.resized_pil        PIL Image.resize(cover(...), BILINEAR) of the uint8 image, then x / 255 · 2 − 1:
                                    torchvision's Resize on PIL images (what diffusers' training scripts run)
        NAME.WxH.center_torch       resized_torch then torchvision's center_crop to H x W
        NAME.WxH.center_pil         resized_pil then the same crop
      cover(w, h, W, H) is torchvision's Resize output size for a square target (the short side to the target,
      the long side int(target · long / short)), generalised to H x W targets: the limiting side at the target,
      the other int(target_side · other / side). center_crop offsets are int(round((size − crop) / 2)).

  vae_encode.safetensors
      The VAE of Tests/VAETests/Fixtures/vae_tiny (diffusers AutoencoderKL, scaling_factor 0.3, 4x downsampling)
      on center_torch of image_37x23.png at 24 x 16 and image_20x30.png at 24 x 16 (a batch of 2, (2, 3, 16, 24)):
        sample       the batch
        latent_mean  vae.encode(sample).latent_dist.mode() · scaling_factor, computed in float64 from the float32
                     weights and inputs
        latent_mean_bf16_weights   the same with every Conv2d weight rounded to bf16 (hgdpo's --mixed-precision bf16
                     rounds exactly those; on AVX512-BF16 CPUs it also rounds the activations entering them)
"""
import copy
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from diffusers import AutoencoderKL

torch.set_num_threads(2)

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(TESTS, "LatentEncodingTests", "Fixtures")
VAE = os.path.join(TESTS, "VAETests", "Fixtures", "vae_tiny")

IMAGES = {"image_37x23": (37, 23), "image_20x30": (20, 30), "image_9x7": (9, 7)}   # name: (w, h)
TARGETS = [(16, 16), (24, 16), (8, 24), (32, 32)]                                  # (W, H)


def cover(w, h, W, H):
    if H * w >= W * h:
        return max(W, int(H * w / h)), H
    return W, max(H, int(W * h / w))


def center_crop(x, W, H):
    h, w = x.shape[-2:]
    top, left = int(round((h - H) / 2.0)), int(round((w - W) / 2.0))
    return x[..., top:top + H, left:left + W].contiguous()


def normalized(u8):
    return torch.from_numpy(np.asarray(u8, dtype=np.float32).transpose(2, 0, 1).copy()) / 255.0 * 2 - 1


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    rng = np.random.default_rng(20261206)
    tensors = {}
    prepared = {}
    for name, (w, h) in IMAGES.items():
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pil = Image.fromarray(pixels, "RGB")
        pil.save(os.path.join(OUT, name + ".png"))
        x = normalized(pixels)
        tensors[f"{name}.input"] = x
        for W, H in TARGETS:
            cw, ch = cover(w, h, W, H)
            t = F.interpolate(x[None], size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)[0]
            p = normalized(pil.resize((cw, ch), Image.BILINEAR))
            key = f"{name}.{W}x{H}"
            tensors[key + ".resized_torch"] = t.contiguous()
            tensors[key + ".resized_pil"] = p
            tensors[key + ".center_torch"] = center_crop(t, W, H)
            tensors[key + ".center_pil"] = center_crop(p, W, H)
            prepared[key] = tensors[key + ".center_torch"]
            d = (t - p).abs().max().item()
            print(f"{key}: cover {cw}x{ch}, torch vs PIL max abs diff {d:.4f} ({d * 127.5:.2f} of 255)")
    save_file(tensors, os.path.join(OUT, "resize.safetensors"))

    vae = AutoencoderKL.from_pretrained(VAE).double().eval()
    batch = torch.stack([prepared["image_37x23.24x16"], prepared["image_20x30.24x16"]])
    with torch.no_grad():
        latent = vae.encode(batch.double()).latent_dist.mode() * vae.config.scaling_factor
    # bf16 mixed precision as hgdpo does it: every Conv2d weight rounded to bf16 (torch's .to(bfloat16)), the rest
    # (GroupNorms, the attention's Linear layers, biases, activations) unrounded; computed in float64.
    bf16 = copy.deepcopy(vae)
    for m in bf16.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.float().to(torch.bfloat16).double()
    with torch.no_grad():
        latent_bf16 = bf16.encode(batch.double()).latent_dist.mode() * vae.config.scaling_factor
    print("bf16 conv weights: latent rel. change", ((latent_bf16 - latent).norm() / latent.norm()).item())
    save_file({"sample": batch, "latent_mean": latent.float().contiguous(),
               "latent_mean_bf16_weights": latent_bf16.float().contiguous()}, os.path.join(OUT, "vae_encode.safetensors"))
    print("vae_encode: latent", tuple(latent.shape), "std", latent.std().item())


if __name__ == "__main__":
    main()
