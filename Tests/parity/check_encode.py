#!/usr/bin/env python3
"""Checks a whole `hgdpo encode` run against diffusers and transformers (a check to run by hand; the committed
fixtures for `swift test` come from make_encode_fixtures.py).

    /work/main/.venv-fixtures/bin/python Tests/parity/check_encode.py [--hgdpo PATH] [--shape tiny]

It makes a random pipeline (`hgdpo make-model`) and 8 triplets of random 80x64 images, with one loser replaced by a
48x72 portrait (`hgdpo make-triplets`), encodes them at 64x64 and 128x64 (`--latent-mode mean --dtype F32
--no-weighting`, center crops, `--resize pil` and `torch`), and recomputes every row in PyTorch the way diffusers'
training scripts do (torchvision's Resize written out: PIL's resize, or torch's antialiased interpolate for tensors):
    x = center_crop(normalize(PIL image.resize(cover size, BILINEAR)))                          (--resize pil)
    x = center_crop(interpolate(normalize(PIL image), cover size, bilinear, antialias=True))    (--resize torch)
    winner/loser = vae.encode(x).latent_dist.mode() · scaling_factor            (float64)
    context      = text_encoder(tokenizer(prompt, max_length padding).input_ids).last_hidden_state
Prints the max abs errors and fails above 1e-4.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def cover(w, h, W, H):
    if H * w >= W * h:
        return max(W, int(H * w / h)), H
    return W, max(H, int(W * h / w))


def to_tensor(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()) / 255.0 * 2 - 1


def prepare(path, W, H, method):
    image = Image.open(path).convert("RGB")
    cw, ch = cover(image.width, image.height, W, H)
    if method == "pil":   # torchvision's Resize on a PIL image, then ToTensor and Normalize([0.5], [0.5])
        x = to_tensor(image.resize((cw, ch), Image.BILINEAR))
    else:                 # torchvision's Resize on a tensor
        x = F.interpolate(to_tensor(image)[None], size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = int(round((ch - H) / 2.0)), int(round((cw - W) / 2.0))
    return x[:, top:top + H, left:left + W]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hgdpo", default=os.path.join(ROOT, ".build", "debug", "hgdpo"))
    ap.add_argument("--shape", default="tiny")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, data = os.path.join(tmp, "model"), os.path.join(tmp, "data")
        run([args.hgdpo, "make-model", "--shape", args.shape, "--out", model, "--seed", "5"])
        run([args.hgdpo, "make-triplets", "--count", "8", "--width", "80", "--height", "64", "--out", data])
        rng = np.random.default_rng(3)
        Image.fromarray(rng.integers(0, 256, size=(72, 48, 3), dtype=np.uint8)).save(os.path.join(data, "images", "3-loser.png"))
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae").double().eval()
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").double().eval()
        triplets = [json.loads(line) for line in open(os.path.join(data, "triplets.jsonl"))]
        worst = 0.0
        for W, H, method in [(64, 64, "pil"), (128, 64, "pil"), (64, 64, "torch"), (128, 64, "torch")]:
            cache = os.path.join(tmp, f"cache-{W}x{H}-{method}")
            run([args.hgdpo, "encode", "--model", model, "--data", data, "--out", cache, "--width", str(W), "--height", str(H),
                 "--latent-mode", "mean", "--dtype", "F32", "--no-weighting", "--shard-size", "5", "--batch", "3",
                 "--resize", method])
            index = json.load(open(os.path.join(cache, "index.json")))
            rows = {"winner": [], "loser": [], "encoder_hidden_states": []}
            ids = []
            for shard in index["shards"]:
                with safe_open(os.path.join(cache, shard["file"]), "pt") as f:
                    ids += json.loads(f.metadata()["ids"])
                    for k in rows:
                        rows[k].append(f.get_tensor(k))
            rows = {k: torch.cat(v).double() for k, v in rows.items()}
            assert ids == [t["id"] for t in triplets], "row order"
            with torch.no_grad():
                for role in ("winner", "loser"):
                    x = torch.stack([prepare(os.path.join(data, t[role]), W, H, method) for t in triplets]).double()
                    ref = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
                    err = (rows[role] - ref).abs().max().item()
                    print(f"{W}x{H} {method} {role}: max abs error {err:.3g} (latent std {ref.std().item():.3g})")
                    worst = max(worst, err)
                ids_t = tokenizer([t["prompt"] for t in triplets], padding="max_length", max_length=tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids
                ref = text_encoder(ids_t).last_hidden_state
                err = (rows["encoder_hidden_states"] - ref).abs().max().item()
                print(f"{W}x{H} {method} encoder_hidden_states: max abs error {err:.3g} (std {ref.std().item():.3g})")
                worst = max(worst, err)
        if worst > 1e-4:
            sys.exit(f"check_encode: FAILED, max abs error {worst:.3g} > 1e-4")
        print(f"check_encode: ok, max abs error {worst:.3g}")


if __name__ == "__main__":
    main()
