#!/usr/bin/env python3
# Reference timing for `hgdpo pool`: diffusers' StableDiffusionPipeline on the CPU making N images of one prompt in one
# call (num_images_per_prompt=N: the N latents and both CFG halves in each U-Net call, as hgdpo pool's --batch N),
# on the random SD 1.5-shaped pipeline of bench/sample_torch.py (--make writes it), DPM-Solver++, CFG 5.
#
#   python bench/pool_torch.py --model DIR --images 2 --steps 2 --size 512 --threads 2 [--dtype bf16]
#
# Prints one JSON line: encode_s, denoise_s, decode_s, per_step_s, images_per_s_measured and images_per_s_50
# (N / (encode + 50 · per_step + decode): extrapolated to 50 steps), peak_rss_mb.
import argparse
import json
import resource
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--images", type=int, default=2)
p.add_argument("--steps", type=int, default=2)
p.add_argument("--size", type=int, default=512)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
p.add_argument("--prompt", default="a photo of a young woman, bust shot, smiling")
a = p.parse_args()
torch.set_num_threads(a.threads)

from diffusers import StableDiffusionPipeline  # noqa: E402

dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False, torch_dtype=dtype)
pipe.set_progress_bar_config(disable=True)
with torch.no_grad():
    t0 = time.perf_counter()
    pe, ne = pipe.encode_prompt(a.prompt, "cpu", a.images, True, "")
    t1 = time.perf_counter()
    out = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, height=a.size, width=a.size, num_inference_steps=a.steps,
               guidance_scale=5.0, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    t2 = time.perf_counter()
    image = pipe.vae.decode(out / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="pil")
    t3 = time.perf_counter()
encode, denoise, decode = t1 - t0, t2 - t1, t3 - t2
per_step = denoise / a.steps
print(json.dumps({"impl": "diffusers", "dtype": a.dtype, "images": a.images, "size": a.size, "steps": a.steps,
                  "threads": a.threads, "encode_s": encode, "denoise_s": denoise, "decode_s": decode,
                  "per_step_s": per_step, "images_per_s_measured": a.images / (t3 - t0),
                  "images_per_s_50": a.images / (encode + decode + 50 * per_step),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
