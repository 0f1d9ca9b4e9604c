#!/usr/bin/env python3
"""Writes the committed parity fixtures of Tests/ScoringTests (run once; `swift test` never needs Python).

    /work/.venv-torch/bin/python Tests/parity/make_scoring_fixtures.py

References: transformers 5 CLIPModel and CLIPImageProcessor (its PIL backend, CLIPImageProcessorPil: the slow
processor of transformers 4 that PickScore's and HPS v2's code ran with), open_clip 3 CLIP, and the LAION
improved-aesthetic-predictor MLP, all float32 on the CPU with random weights. Seeded: a rerun writes the same files.

open_clip imports torchvision for its preprocessing transforms only; torchvision wheels for this torch (2.13 CPU) do
not load here, so a stub module stands in for torchvision while open_clip is imported. The model code (CLIP,
VisionTransformer, TextTransformer) is open_clip's own and uses only torch.

Outputs in Tests/ScoringTests/Fixtures/:
  clip/           a random transformers CLIPModel folder (save_pretrained): text hidden 32, 2 layers, 4 heads, gelu,
                  the small BPE vocabulary of the sampling fixtures (eos 3013); vision hidden 32, 2 layers, 4 heads,
                  image 32, patch 8, quick_gelu; projection 16; logit_scale log(100) as PickScore; the processor's
                  preprocessor_config.json (shortest_edge 32, crop 32, bicubic).
  openclip/       config.json + tokenizer + preprocessor of the same shape (gelu in both towers, as open_clip's
                  ViT-H-14) and open_clip_model.safetensors: a random open_clip CLIP state dict.
  aesthetic.safetensors  an improved-aesthetic-predictor-shaped MLP 16→24→12→8→4→1 (layers.0/2/4/6/7).
  photo.png, portrait.png, small.png  RGB PNGs of 61x47, 40x64 and 20x24 (smooth colour fields with noise and
                  edges), preprocessed by the processor (downscaling on both axes, and upscaling).
  expected.safetensors
      pixel_values.{photo,portrait,small}  (1, 3, 32, 32) CLIPImageProcessorPil output of each PNG
      input_ids                 (2, 77) the prompts "a photo of a cat", "a red car" (padding max_length)
      hf.image_features (3, 16), hf.text_features (2, 16)   get_image_features / get_text_features
      hf.logits_per_image (3, 2)                           CLIPModel(...).logits_per_image
      oc.image_features (3, 16), oc.text_features (2, 16), oc.logits_per_image (3, 2)   open_clip encode_image /
                                encode_text and logit_scale.exp() · cosine
      aesthetic.scores (3,)     the MLP on the L2-normalised hf image features
"""
import importlib.machinery
import json
import math
import os
import shutil
import sys
import types

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "ScoringTests", "Fixtures")
TOKENIZER = os.path.join(ROOT, "SamplingTests", "Fixtures", "pipeline", "tokenizer")


def stub_torchvision():
    class Dummy:
        BICUBIC = BILINEAR = NEAREST = "stub"

        def __init__(self, *a, **k):
            pass

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    for n in ["Normalize", "Compose", "RandomResizedCrop", "InterpolationMode", "ToTensor", "Resize", "CenterCrop",
              "ColorJitter", "Grayscale", "RandomHorizontalFlip", "RandomGrayscale"]:
        setattr(tvt, n, Dummy)
    misc.FrozenBatchNorm2d = Dummy
    tv.transforms, tvt.functional, tv.ops, ops.misc, tv.__version__ = tvt, tvf, ops, misc, "0"
    for m in (tv, tvt, tvf, ops, misc):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
        sys.modules[m.__name__] = m


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "logit_scale" in name:
                p.fill_(math.log(100.0))
            elif ("norm" in name or "ln_" in name or "layrnorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_png(path, w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / (3 + c) + y / (5 - c)) for c in range(3)], -1)
    img[h // 3: h // 2, :, :] = [250, 20, 60]        # a hard edge
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB").save(path)


def copy_tokenizer(folder):
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(TOKENIZER, name), os.path.join(folder, name))


def main():
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    text = dict(vocab_size=3014, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, hidden_act="gelu", bos_token_id=3012, eos_token_id=3013, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8, hidden_act="quick_gelu")
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = CLIPModel(config).eval()
    randomize(model, 1)
    clip_dir = os.path.join(OUT, "clip")
    os.makedirs(clip_dir, exist_ok=True)
    model.save_pretrained(clip_dir)
    copy_tokenizer(clip_dir)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(clip_dir)

    expected = {}
    pixels = []
    for name, (w, h, seed) in {"photo": (61, 47, 1), "portrait": (40, 64, 2), "small": (20, 24, 3)}.items():
        path = os.path.join(OUT, name + ".png")
        make_png(path, w, h, seed)
        pv = processor(images=Image.open(path), return_tensors="pt")["pixel_values"]
        expected[f"pixel_values.{name}"] = pv
        pixels.append(pv)
    pixels = torch.cat(pixels)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    ids = tokenizer(["a photo of a cat", "a red car"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    expected["input_ids"] = ids.to(torch.int64)
    with torch.no_grad():
        imf = model.get_image_features(pixel_values=pixels)
        txf = model.get_text_features(input_ids=ids)
        imf = getattr(imf, "pooler_output", imf)
        txf = getattr(txf, "pooler_output", txf)
        out = model(input_ids=ids, pixel_values=pixels)
    expected["hf.image_features"] = imf
    expected["hf.text_features"] = txf
    expected["hf.logits_per_image"] = out.logits_per_image

    # The aesthetic MLP (improved-aesthetic-predictor's nn.Sequential, smaller widths).
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Dropout(0.2), torch.nn.Linear(24, 12), torch.nn.Dropout(0.2),
                              torch.nn.Linear(12, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1)).eval()
    randomize(mlp, 2)
    save_file({"layers." + k: v.contiguous() for k, v in mlp.state_dict().items()}, os.path.join(OUT, "aesthetic.safetensors"))
    with torch.no_grad():
        expected["aesthetic.scores"] = mlp(imf / imf.norm(dim=-1, keepdim=True))[:, 0]

    # open_clip: the same shapes in open_clip's layout (gelu in both towers, as ViT-H-14).
    stub_torchvision()
    from open_clip.model import CLIP as OpenCLIP
    oc = OpenCLIP(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8, mlp_ratio=2.0),
                  text_cfg=dict(context_length=77, vocab_size=3014, width=32, heads=4, layers=2, mlp_ratio=2.0)).eval()
    randomize(oc, 3)
    oc_dir = os.path.join(OUT, "openclip")
    os.makedirs(oc_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, os.path.join(oc_dir, "open_clip_model.safetensors"))
    oc_config = CLIPConfig(text_config=dict(text, hidden_act="gelu"), vision_config=dict(vision, hidden_act="gelu"), projection_dim=16)
    oc_config.save_pretrained(oc_dir)
    copy_tokenizer(oc_dir)
    processor.save_pretrained(oc_dir)
    with torch.no_grad():
        oimf = oc.encode_image(pixels)
        otxf = oc.encode_text(ids)
        a = oimf / oimf.norm(dim=-1, keepdim=True)
        b = otxf / otxf.norm(dim=-1, keepdim=True)
        expected["oc.image_features"] = oimf
        expected["oc.text_features"] = otxf
        expected["oc.logits_per_image"] = oc.logit_scale.exp() * a @ b.T

    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
    for k, v in expected.items():
        print(k, tuple(v.shape))


if __name__ == "__main__":
    main()
