#!/usr/bin/env python3
# Reference timing for `hgdpo sample`: diffusers' StableDiffusionPipeline on the CPU, random weights of SD 1.5's shapes
# (U-Net of ../shared/bench/unet_configs.py SD15, SD's AutoencoderKL, a CLIP ViT-L/14-sized text encoder with the small
# test tokenizer), DPM-Solver++ 2M, classifier-free guidance (the two halves in one U-Net call), one image.
#
#   python bench/sample_torch.py --model DIR --make          # writes the random pipeline to DIR (fp32, ~4.3 GB) once
#   python bench/sample_torch.py --model DIR --steps 5 --size 512 --threads 2
#
# Prints one JSON line: encode_s (text encoder, prompt and ""), denoise_s (the sampler loop: every U-Net call),
# decode_s (VAE decode + postprocess), per_step_s, and s_per_image_<steps> / s_per_image_50 (encode + decode +
# per_step · 50: extrapolated from the measured steps).
import argparse
import json
import os
import resource
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "bench"))

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--make", action="store_true", help="write the random-weight pipeline to --model and exit")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--size", type=int, default=512)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--guidance", type=float, default=5.0)
p.add_argument("--prompt", default="a photo of a young woman, bust shot, smiling")
a = p.parse_args()
torch.set_num_threads(a.threads)

from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

if a.make:
    from unet_configs import SD15
    torch.manual_seed(0)
    tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "Tests", "TextEncoderTests", "Fixtures", "pipeline", "tokenizer"))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=768, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=1))
    unet = UNet2DConditionModel(**SD15)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512,
                        scaling_factor=0.18215)
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(a.model, safe_serialization=True)
    # hgdpo reads vocab.json / merges.txt (transformers 5 writes only tokenizer.json).
    import shutil
    shutil.rmtree(os.path.join(a.model, "tokenizer"))
    shutil.copytree(os.path.join(ROOT, "Tests", "TextEncoderTests", "Fixtures", "pipeline", "tokenizer"),
                    os.path.join(a.model, "tokenizer"))
    print(json.dumps({"made": a.model}))
    sys.exit(0)

pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
L = a.size // 8
latents = torch.randn((1, 4, L, L), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    t0 = time.perf_counter()
    pe, ne = pipe.encode_prompt(a.prompt, "cpu", 1, True, "")
    t1 = time.perf_counter()
    out = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, height=a.size, width=a.size, num_inference_steps=a.steps,
               guidance_scale=a.guidance, latents=latents, output_type="latent").images
    t2 = time.perf_counter()
    image = pipe.vae.decode(out / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")
    t3 = time.perf_counter()
encode, denoise, decode = t1 - t0, t2 - t1, t3 - t2
per_step = denoise / a.steps
print(json.dumps({"impl": "diffusers", "size": a.size, "steps": a.steps, "threads": a.threads, "encode_s": encode,
                  "denoise_s": denoise, "decode_s": decode, "per_step_s": per_step,
                  f"s_per_image_{a.steps}": encode + denoise + decode, "s_per_image_50": encode + decode + 50 * per_step,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
