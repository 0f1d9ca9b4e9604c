#!/usr/bin/env python3
"""Checks that `hgdpo make-model` writes a Stable Diffusion pipeline diffusers and transformers load as is, and that
ours reads it the same way (a check to run by hand; `swift test` does not run it).

    /work/main/.venv-fixtures/bin/python Tests/parity/check_make_model.py [--configs tiny,small,sd15] [--hgdpo PATH]

For each shape it runs `hgdpo make-model` into a temporary folder, then:
  1. StableDiffusionPipeline.from_pretrained(folder) loads every component with no missing or unexpected weights
     (diffusers' and transformers' loading reports are checked) and the classes model_index.json names;
  2. the pipeline samples a few DDIM steps at a small size (fixed generator) and the image is finite, and the
     latents stay in a sane range (the random weights are scaled as the libraries initialise them);
  3. tokenizer ids and last_hidden_state of `hgdpo probe text-encoder` (no weighting) match transformers'
     CLIPTokenizer + CLIPTextModel (ids exactly, hidden states within 1e-4);
  4. `hgdpo probe vae-encode --mode mean` matches diffusers' AutoencoderKL.encode(...).latent_dist.mode() ·
     scaling_factor within 1e-4 on a random image.
Prints one line per check and exits non-zero on the first failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["a photo of a young woman smiling, bust shot", "Portrait: old man (grey beard), café!", ""]


def hgdpo_binary(given):
    if given:
        return given
    for build in ("release", "debug"):
        p = os.path.join(ROOT, ".build", build, "hgdpo")
        if os.path.exists(p):
            return p
    sys.exit("no hgdpo binary: swift build first, or pass --hgdpo")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def check(label, ok, detail=""):
    print(f"  {'ok  ' if ok else 'FAIL'} {label}{': ' + detail if detail else ''}")
    if not ok:
        sys.exit(1)


class LogCapture:
    """Collects warnings diffusers/transformers print while loading (missing/unexpected keys, newly initialised)."""

    def __init__(self):
        import logging
        self.records = []
        handler = logging.Handler()
        handler.emit = lambda record: self.records.append(record.getMessage())
        self.handler = handler
        for lib in (diffusers_logging, transformers_logging):
            lib.set_verbosity_warning()
            lib.get_logger().addHandler(handler)

    def suspicious(self):
        words = ("missing", "unexpected", "newly initialized", "not initialized", "not used", "mismatch")
        return [m for m in self.records if any(w in m.lower() for w in words)]


def check_config(name, hgdpo, tmp, size):
    print(f"== make-model --config {name}")
    folder = os.path.join(tmp, name)
    print("  " + run([hgdpo, "make-model", "--shape", name, "--out", folder, "--seed", "7"]).strip())

    logs = LogCapture()
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        check(f"{component} is a {index[component][1]}", type(getattr(pipe, component)).__name__ == index[component][1])
    check("no missing/unexpected weights reported while loading", not logs.suspicious(), "; ".join(logs.suspicious())[:500])
    te_sd = pipe.text_encoder.state_dict()
    raw = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
    same = all(torch.equal(te_sd[k.removeprefix("text_model.")] if k.removeprefix("text_model.") in te_sd else te_sd[k], v)
               for k, v in raw.items())
    check("text encoder weights loaded as written", same)

    # 2. A short sample through the whole pipeline.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = pipe(PROMPTS[0], height=size, width=size, num_inference_steps=3, guidance_scale=5.0, generator=g,
                   output_type="latent")
        latents = out.images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    lat_std, img_absmax = latents.std().item(), image.abs().max().item()
    check("sampled latents and decoded image are finite", bool(torch.isfinite(latents).all() and torch.isfinite(image).all()),
          f"latent std {lat_std:.3g}, image max |x| {img_absmax:.3g}")
    check("latents in a sane range", 1e-3 < lat_std < 1e3, f"std {lat_std:.3g}")

    # 3. Tokenizer and text encoder against ours.
    prompts_file = os.path.join(tmp, "prompts.txt")
    open(prompts_file, "w").write("\n".join(PROMPTS[:2]) + "\n")
    ours_file = os.path.join(tmp, f"te-{name}.safetensors")
    run([hgdpo, "probe", "text-encoder", "--model", folder, "--prompts", prompts_file, "--out", ours_file, "--no-weighting"])
    ours = load_file(ours_file)
    ids = pipe.tokenizer(PROMPTS[:2], padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    check("token ids equal transformers' CLIPTokenizer", torch.equal(ours["input_ids"].long(), ids),
          f"first ids {ids[0, :8].tolist()}")
    with torch.no_grad():
        ref = pipe.text_encoder.double()(ids).last_hidden_state
    err = (ours["last_hidden_state"].double() - ref).abs().max().item()
    check("last_hidden_state within 1e-4 of transformers", err <= 1e-4, f"max abs error {err:.3g}, ref std {ref.std().item():.3g}")

    # 4. VAE encode against ours.
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vin, vout = os.path.join(tmp, f"vin-{name}.safetensors"), os.path.join(tmp, f"vout-{name}.safetensors")
    save_file({"sample": image}, vin)
    run([hgdpo, "probe", "vae-encode", "--model", folder, "--input", vin, "--out", vout, "--mode", "mean"])
    with torch.no_grad():
        ref = pipe.vae.double().encode(image.double()).latent_dist.mode() * pipe.vae.config.scaling_factor
    err = (load_file(vout)["latent"].double() - ref).abs().max().item()
    check("VAE encode (mean) within 1e-4 of diffusers", err <= 1e-4, f"max abs error {err:.3g}, latent std {ref.std().item():.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--hgdpo")
    ap.add_argument("--size", type=int, default=64, help="image size of the sampling check")
    args = ap.parse_args()
    hgdpo = hgdpo_binary(args.hgdpo)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            check_config(name, hgdpo, tmp, args.size)
    print("check_make_model: all checks passed")


if __name__ == "__main__":
    main()
