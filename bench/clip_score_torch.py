#!/usr/bin/env python3
# Reference timing for hgdpo's CLIP scorer (`hgdpo score --scorer NAME=clip:DIR`): transformers' CLIPModel at the
# ViT-H/14 shape of PickScore_v1 / laion CLIP-ViT-H-14 (vision 1280 wide, 32 layers, patch 14, 224 px; text 1024
# wide, 24 layers; projection 1024), random weights, CLIPImageProcessor's PIL path, as PickScore's code scores:
# one prompt against N images (512x512 PNGs), exp(logit_scale) · cosine.
#
#   python bench/clip_score_torch.py --make DIR        # the model folder DIR/clip and a pool DIR/pool of 8 PNGs
#   python bench/clip_score_torch.py --dir DIR --images 8 --batch 8 --threads 2
#
# Prints one JSON line: score_s (preprocessing + text + image towers, model loading excluded) and images_per_s.
import argparse
import json
import os
import shutil
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
p = argparse.ArgumentParser()
p.add_argument("--make", metavar="DIR")
p.add_argument("--dir")
p.add_argument("--images", type=int, default=8)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)

from transformers import CLIPConfig, CLIPModel, CLIPTokenizer  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

PROMPT = "a photo of a young woman, bust shot, smiling"
if a.make:
    clip_dir, pool = os.path.join(a.make, "clip"), os.path.join(a.make, "pool")
    tok_src = os.path.join(ROOT, "Tests", "TextEncoderTests", "Fixtures", "pipeline", "tokenizer")
    tok = CLIPTokenizer.from_pretrained(tok_src)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, hidden_act="gelu", bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=1),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="gelu"),
        projection_dim=1024)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(clip_dir)
    for name in os.listdir(tok_src):
        shutil.copy(os.path.join(tok_src, name), clip_dir)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(clip_dir)
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(pool, "images"), exist_ok=True)
    with open(os.path.join(pool, "pool.jsonl"), "w") as f:
        for k in range(a.images):
            path = f"images/{k:03d}.png"
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(os.path.join(pool, path))
            f.write(json.dumps({"prompt_index": 0, "prompt": PROMPT, "image_index": k, "seed": k, "path": path}) + "\n")
    print(json.dumps({"made": a.make}))
    raise SystemExit

clip_dir, pool = os.path.join(a.dir, "clip"), os.path.join(a.dir, "pool")
model = CLIPModel.from_pretrained(clip_dir).eval()
processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
paths = [os.path.join(pool, f"images/{k:03d}.png") for k in range(a.images)]
with torch.no_grad():
    t0 = time.perf_counter()
    images = [Image.open(p).convert("RGB") for p in paths]
    ids = tokenizer(PROMPT, padding=True, truncation=True, max_length=77, return_tensors="pt").input_ids
    text = model.get_text_features(input_ids=ids)
    text = getattr(text, "pooler_output", text)
    text = text / text.norm(dim=-1, keepdim=True)
    scores = []
    for s in range(0, len(images), a.batch):
        pixels = processor(images=images[s:s + a.batch], return_tensors="pt")["pixel_values"]
        emb = model.get_image_features(pixel_values=pixels)
        emb = getattr(emb, "pooler_output", emb)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        scores += (model.logit_scale.exp() * emb @ text.T)[:, 0].tolist()
    t1 = time.perf_counter()
print(json.dumps({"impl": "transformers", "images": a.images, "batch": a.batch, "threads": a.threads,
                  "score_s": t1 - t0, "images_per_s": a.images / (t1 - t0), "first_scores": scores[:2]}))
