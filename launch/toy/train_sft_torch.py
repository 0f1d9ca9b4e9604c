#!/usr/bin/env python3
"""Full-parameter SFT of the toy world's U-Net with diffusers (a stopgap, see launch/toy/build-model.sh).

`hgdpo train --train unet --objective sft` (issue 15, item 3) is the intended trainer; it was not in main when the
shipped model was built, and LoRA-only SFT cannot train a random U-Net (LoRA reaches only the attention projections).
This script trains every U-Net weight with the objective hgdpo's `--objective sft` uses: the noise MSE of the winners
(epsilon prediction, DDPMScheduler.add_noise, timesteps uniform in [0, T)). Pixel space: latents are the image in
[-1, 1]. The text encoder stays frozen. Writes MODEL_OUT/unet/ (diffusers layout, fp32 safetensors) and copies the
rest of the pipeline from --model.

Usage: train_sft_torch.py --model DIR --data TRIPLET_DIR --out DIR [--steps 1000] [--batch 64] [--lr 1e-3] [--seed 0]
"""
import argparse, json, math, os, shutil, sys, time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=int, default=100)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)

    lines = [json.loads(l) for l in open(os.path.join(a.data, "triplets.jsonl")) if l.strip()]
    prompts = sorted({l["prompt"] for l in lines})
    tok = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder").eval()
    with torch.no_grad():
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        emb = te(ids).last_hidden_state  # (P, L, D)
    index = {q: i for i, q in enumerate(prompts)}
    imgs = np.stack([np.asarray(Image.open(os.path.join(a.data, l["winner"])).convert("RGB"), dtype=np.float32)
                     for l in lines])
    x0_all = torch.from_numpy(imgs).permute(0, 3, 1, 2) / 127.5 - 1.0
    cond_idx = torch.tensor([index[l["prompt"]] for l in lines])
    print(f"sft: {len(lines)} winners, {len(prompts)} prompts, images {tuple(x0_all.shape[1:])}", flush=True)

    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet")
    unet.train()
    init = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema = {k: v.clone() for k, v in init.items()}
    sched = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    T = sched.config.num_train_timesteps
    opt = torch.optim.AdamW(unet.parameters(), lr=a.lr, weight_decay=0.0)
    lr_at = lambda s: a.lr * min(1.0, (s + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * s / a.steps))

    def save(step):
        out = a.out
        if not os.path.exists(os.path.join(out, "model_index.json")):
            shutil.copytree(a.model, out, dirs_exist_ok=True)
        live = {k: v.clone() for k, v in unet.state_dict().items()}
        # Bias-corrected EMA (as Adam's moments): EMA_n = d^n·θ_0 + (1 − d)·Σ d^(n−i)·θ_i, so the random init is removed.
        w = a.ema ** step
        unet.load_state_dict({k: (v - w * init[k]) / (1 - w) if v.is_floating_point() else v for k, v in ema.items()})
        unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
        unet.load_state_dict(live)
        with open(os.path.join(out, "unet", "sft.json"), "w") as f:
            json.dump({"trainer": "launch/toy/train_sft_torch.py", "step": step, "steps": a.steps, "batch": a.batch,
                       "lr": a.lr, "ema": a.ema, "debiased": True, "seed": a.seed, "winners": len(lines)}, f, indent=1)

    t0 = time.time(); run = 0.0
    for step in range(a.steps):
        for g in opt.param_groups: g["lr"] = lr_at(step)
        b = torch.from_numpy(rng.integers(0, len(lines), a.batch))
        x0 = x0_all[b]
        if rng.random() < 0.5:  # the world is left-right symmetric (waving side, places)
            x0 = x0.flip(-1)
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (a.batch,))
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=emb[cond_idx[b]]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                if v.dtype.is_floating_point: ema[k].mul_(a.ema).add_(v, alpha=1 - a.ema)
                else: ema[k].copy_(v)
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if step % 10 == 0 or step == a.steps - 1:
            print(f"sft step {step + 1}/{a.steps} loss {loss.item():.4f} (avg {run:.4f}) lr {lr_at(step):.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % a.save_every == 0 or step == a.steps - 1:
            save(step + 1)
    print(f"sft: done, {a.out}/unet", flush=True)


if __name__ == "__main__":
    sys.exit(main())
