#!/usr/bin/env python3
"""Checks that `hgdpo world make-model` writes a pixel-space pipeline whose parts transformers and diffusers load as
is, and that ours reads them the same way (a check to run by hand; `swift test` does not run it).

    /work/.venv-torch/bin/python Tests/parity/check_toy_pipeline.py [--hgdpo PATH]

  1. transformers' CLIPTokenizer reads tokenizer/ and gives the ids of `hgdpo probe text-encoder` for every grammar
     prompt shape (one token per word) and for text outside the grammar;
  2. transformers' CLIPTextModel loads text_encoder/ with no missing or unexpected weights and its last_hidden_state
     matches ours within 1e-4;
  3. diffusers' UNet2DConditionModel loads unet/ (3 in/out channels, 16/32/64) with no loading warnings, and
     DDPMScheduler reads scheduler/ (linear betas).
Prints one line per check and exits non-zero on the first failure.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = ["a person in a red shirt waving on a green field",
           "three people in yellow shirts with arms up on a city street",
           "two people in pink shirts sitting at night",
           "Zebra crossing, café!"]


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hgdpo")
    args = ap.parse_args()
    hgdpo = hgdpo_binary(args.hgdpo)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "toy")
        print("  " + run([hgdpo, "world", "make-model", "--out", folder, "--seed", "7"]).strip())
        check("no vae/ (pixel space)", not os.path.exists(os.path.join(folder, "vae")))

        tok = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        prompts_file = os.path.join(tmp, "prompts.txt")
        open(prompts_file, "w").write("\n".join(PROMPTS) + "\n")
        ours_file = os.path.join(tmp, "te.safetensors")
        run([hgdpo, "probe", "text-encoder", "--model", folder, "--prompts", prompts_file, "--out", ours_file, "--no-weighting"])
        ours = load_file(ours_file)
        ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        check("token ids equal transformers' CLIPTokenizer", torch.equal(ours["input_ids"].long(), ids),
              f"{ids.shape[1]} tokens, first prompt {ids[0].tolist()}")
        words = PROMPTS[1].split()
        check("one token per grammar word", tok.convert_ids_to_tokens(ids[1, 1:1 + len(words)].tolist()) == [w + "</w>" for w in words])

        text = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), output_loading_info=True)
        model, info = text
        check("text encoder loads with no missing/unexpected weights",
              not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), str(info))
        with torch.no_grad():
            ref = model.double()(ids).last_hidden_state
        err = (ours["last_hidden_state"].double() - ref).abs().max().item()
        check("last_hidden_state within 1e-4 of transformers", err <= 1e-4, f"max abs error {err:.3g}")

        unet, info = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), output_loading_info=True)
        check("U-Net loads with no missing/unexpected weights",
              not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), str(info))
        params = sum(p.numel() for p in unet.parameters())
        check("U-Net is pixel space, 16/32/64", unet.config.in_channels == 3 and list(unet.config.block_out_channels) == [16, 32, 64],
              f"{params} parameters")
        with torch.no_grad():
            eps = unet(torch.randn(2, 3, 32, 32), torch.tensor([10, 900]), encoder_hidden_states=ref.float()[:2]).sample
        check("U-Net output finite", bool(torch.isfinite(eps).all()), f"shape {list(eps.shape)}")
        sched = DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        check("scheduler: clip_sample (x̂₀ clipped to [-1, 1])", sched.config.clip_sample is True)
        check("scheduler: linear betas 1e-4 … 0.02", sched.config.beta_schedule == "linear"
              and abs(sched.betas[0].item() - 1e-4) < 1e-9 and abs(sched.betas[-1].item() - 0.02) < 1e-7)


if __name__ == "__main__":
    main()
