#!/usr/bin/env python3
"""Writes the committed text-to-image parity fixtures for Tests/SamplingTests (run once; `swift test` never needs
Python).

    /work/main/.venv-fixtures/bin/python Tests/parity/make_sampling_fixtures.py

Reference: diffusers 0.42 StableDiffusionPipeline (transformers 5 CLIPTextModel / CLIPTokenizer, peft LoRA), float32
on the CPU, as a user runs it. Everything is seeded; a rerun rewrites the same files.

Outputs in Tests/SamplingTests/Fixtures/:

  pipeline/         a random-weight StableDiffusionPipeline saved by save_pretrained (safety checker and feature
                    extractor None): tokenizer/ (the small CLIP-layout BPE vocabulary of the text-encoder fixtures,
                    Tests/TextEncoderTests/Fixtures/pipeline/tokenizer, made by clip_vocab.py), text_encoder/
                    (CLIPTextModel, hidden 16, 2 layers, quick_gelu), unet/ (UNet2DConditionModel, blocks (16, 32),
                    CrossAttnDownBlock2D + DownBlock2D, cross_attention_dim 16), vae/ (AutoencoderKL, 4 blocks
                    (8, 8, 16, 16): factor 8, scaling_factor 0.18215), scheduler/ (DPMSolverMultistepScheduler,
                    dpmsolver++ order 2, SD 1.5's scaled_linear betas 0.00085–0.012).
  lora.safetensors  a peft LoRA (r 4, alpha 8, gaussian A, lora_B set to 0.3·N(0,1)) on to_q/to_k/to_v/to_out.0,
                    saved by StableDiffusionPipeline.save_lora_weights (diffusers' format).
  runs.safetensors  per run NAME: NAME.latents_in (2, 4, 8, 6) (the `latents=` given to the pipeline, N(0, 1)),
                    NAME.latents_out (the final latents, before the VAE), NAME.images (2, 3, 64, 48) in [0, 1]
                    (output_type="np", transposed to NCHW). The metadata `runs` (JSON) gives per run: prompts,
                    negative_prompts, steps, guidance, height, width, scheduler, lora_scale (null = no LoRA), lan.
      cfg           DPM-Solver++ 10 steps, guidance 5, negative prompts ["", "blurry, low quality"].
      lora          the same with lora.safetensors loaded by pipe.load_lora_weights at scale 0.5
                    (cross_attention_kwargs={"scale": 0.5}).
      lan           the LoRA at 0.5 with latent adaptive normalization (HG-DPO Eq. 7), implemented below from the
                    paper: two trajectories from the same latents, the LoRA model's and the base model's (the same
                    U-Net with the LoRA at scale 0), each with its own scheduler; after every step the LoRA
                    trajectory's latent gets, per image and channel, the mean and std over H·W of the base latent.
                    The loop is the pipeline's own (encode_prompt, scale_model_input, CFG, scheduler.step); it is
                    checked to reproduce the `lora` run exactly when LAN is off.
      euler_nocfg   EulerDiscreteScheduler.from_config (init_noise_sigma ≈ 14.6, scaled model inputs), guidance 1
                    (no classifier-free guidance, one U-Net call per step), 10 steps.
      odd_size      as cfg at 72x56 (latents 9x7, (2, 4, 9, 7)): the U-Net's upsampler is resized to the 9x7 skip
                    (diffusers' forward_upsample_size) since 9x7 does not halve exactly.
"""
import copy
import json
import os
import shutil
import tempfile
import zlib

import torch

torch.set_num_threads(2)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       StableDiffusionPipeline, UNet2DConditionModel)
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "SamplingTests", "Fixtures")
TOKENIZER = os.path.join(ROOT, "Tests", "TextEncoderTests", "Fixtures", "pipeline", "tokenizer")

PROMPTS = ["a photo of a young woman, bust shot, smiling", "three people in the forest, sunset, orange suits"]
NEGATIVES = ["", "blurry, low quality"]
HEIGHT, WIDTH = 64, 48
STEPS = 10
LORA = dict(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def generator(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def build_pipeline(folder):
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(zlib.crc32(b"sampling/text_encoder"))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu",
                                      projection_dim=16, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=1)).eval()
    torch.manual_seed(zlib.crc32(b"sampling/unet"))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4).eval()
    torch.manual_seed(zlib.crc32(b"sampling/vae"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 16, 16], layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.18215).eval()
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", algorithm_type="dpmsolver++", solver_order=2,
                                            steps_offset=1)
    for m in (te, unet, vae):
        m.requires_grad_(False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; commit the vocab.json / merges.txt / config files it was made from
    # (what SD 1.5 ships and hgdpo reads).
    shutil.rmtree(os.path.join(folder, "tokenizer"))
    shutil.copytree(TOKENIZER, os.path.join(folder, "tokenizer"))
    # Load back, so the runs use exactly what is committed.
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lora(pipe, path):
    """A peft LoRA on the U-Net with non-zero B, saved in diffusers' format; the adapter is then removed again."""
    unet = pipe.unet
    unet.add_adapter(LoraConfig(**LORA))
    g = generator("sampling/lora")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_sd = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    config = unet.peft_config["default"]
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
                                                  unet_lora_adapter_metadata=metadata, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "pytorch_lora_weights.safetensors"), path)
    unet.delete_adapters("default")


def run_pipeline(pipe, latents, guidance, lora_scale=None, height=HEIGHT, width=WIDTH):
    final = {}

    def keep(p, i, t, kw):
        final["latents"] = kw["latents"].detach().clone()
        return kw

    kwargs = {} if lora_scale is None else {"cross_attention_kwargs": {"scale": lora_scale}}
    with torch.no_grad():
        out = pipe(PROMPTS, negative_prompt=NEGATIVES, height=height, width=width, num_inference_steps=STEPS,
                   guidance_scale=guidance, latents=latents.clone(), output_type="np", callback_on_step_end=keep,
                   callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    images = torch.from_numpy(out.images).permute(0, 3, 1, 2).contiguous()
    return final["latents"], images


def lan(x, ref):
    """HG-DPO Eq. 7: x's per-(image, channel) mean and std over H, W replaced by ref's (population std, float64)."""
    x64, r64 = x.double(), ref.double()
    mt, st = x64.mean(dim=(2, 3), keepdim=True), x64.std(dim=(2, 3), keepdim=True, unbiased=False)
    ms, ss = r64.mean(dim=(2, 3), keepdim=True), r64.std(dim=(2, 3), keepdim=True, unbiased=False)
    return ((x64 - mt) / st * ss + ms).float()


def run_loop(pipe, latents, guidance, lora_scale, use_lan):
    """The pipeline's denoising loop written out, with an optional LAN against the base (LoRA scale 0) trajectory."""
    with torch.no_grad():
        pe, ne = pipe.encode_prompt(PROMPTS, "cpu", 1, True, NEGATIVES)
        emb = torch.cat([ne, pe])
        sched_t, sched_b = copy.deepcopy(pipe.scheduler), copy.deepcopy(pipe.scheduler)
        sched_t.set_timesteps(STEPS)
        sched_b.set_timesteps(STEPS)
        x_t = latents.clone() * sched_t.init_noise_sigma
        x_b = latents.clone() * sched_b.init_noise_sigma

        def eps(x, sched, t, scale):
            inp = sched.scale_model_input(torch.cat([x] * 2), t)
            out = pipe.unet(inp, t, encoder_hidden_states=emb, cross_attention_kwargs={"scale": scale},
                            return_dict=False)[0]
            u, c = out.chunk(2)
            return u + guidance * (c - u)

        for t in sched_t.timesteps:
            x_t = sched_t.step(eps(x_t, sched_t, t, lora_scale), t, x_t, return_dict=False)[0]
            if use_lan:
                x_b = sched_b.step(eps(x_b, sched_b, t, 0.0), t, x_b, return_dict=False)[0]
                x_t = lan(x_t, x_b)
        image = pipe.vae.decode(x_t / pipe.vae.config.scaling_factor, return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type="pt")
    return x_t, image


def main():
    assert diffusers.__version__.startswith("0.42"), diffusers.__version__
    assert transformers.__version__.startswith("5."), transformers.__version__
    os.makedirs(FIXTURES, exist_ok=True)
    pipe = build_pipeline(os.path.join(FIXTURES, "pipeline"))
    lora_path = os.path.join(FIXTURES, "lora.safetensors")
    make_lora(pipe, lora_path)

    g = generator("sampling/latents")
    tensors, runs = {}, {}

    def record(name, latents, out, images, height=HEIGHT, width=WIDTH, **params):
        tensors[f"{name}.latents_in"] = latents.clone().contiguous()
        tensors[f"{name}.latents_out"] = out.float().contiguous()
        tensors[f"{name}.images"] = images.float().contiguous()
        runs[name] = dict(prompts=PROMPTS, negative_prompts=NEGATIVES, steps=STEPS, height=height, width=width, **params)
        print(f"{name}: latents_out range [{out.min():.3f}, {out.max():.3f}] std {out.std():.3f}; images mean "
              f"{images.mean():.3f}, fraction clipped {((images == 0) | (images == 1)).float().mean():.3f}")

    latents = torch.randn((2, 4, HEIGHT // 8, WIDTH // 8), generator=g)
    out, images = run_pipeline(pipe, latents, 5.0)
    record("cfg", latents, out, images, guidance=5.0, scheduler="DPMSolverMultistepScheduler", lora_scale=None, lan=False)

    pipe.load_lora_weights(lora_path)
    latents = torch.randn((2, 4, HEIGHT // 8, WIDTH // 8), generator=g)
    out, images = run_pipeline(pipe, latents, 5.0, lora_scale=0.5)
    record("lora", latents, out, images, guidance=5.0, scheduler="DPMSolverMultistepScheduler", lora_scale=0.5, lan=False)
    # The written-out loop is the pipeline's: without LAN it gives the `lora` run.
    loop_out, loop_images = run_loop(pipe, latents, 5.0, 0.5, use_lan=False)
    assert (loop_out - out).abs().max() < 1e-6 and (loop_images - images).abs().max() < 1e-6, \
        ((loop_out - out).abs().max(), (loop_images - images).abs().max())
    lan_out, lan_images = run_loop(pipe, latents, 5.0, 0.5, use_lan=True)
    print(f"lan: max |latents - lora run's| {(lan_out - out).abs().max():.3g}")
    record("lan", latents, lan_out, lan_images, guidance=5.0, scheduler="DPMSolverMultistepScheduler", lora_scale=0.5,
           lan=True)
    pipe.unload_lora_weights()

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn((2, 4, HEIGHT // 8, WIDTH // 8), generator=g)
    out, images = run_pipeline(pipe, latents, 1.0)
    record("euler_nocfg", latents, out, images, guidance=1.0, scheduler="EulerDiscreteScheduler", lora_scale=None,
           lan=False)

    # 72x56 images: 9x7 latents do not halve exactly at the U-Net's downsampler (5x4), so diffusers resizes the
    # upsampler's output to the skip's 9x7 (forward_upsample_size, nearest with scale 5/9, 4/7).
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn((2, 4, 9, 7), generator=g)
    out, images = run_pipeline(pipe, latents, 5.0, height=72, width=56)
    record("odd_size", latents, out, images, height=72, width=56, guidance=5.0, scheduler="DPMSolverMultistepScheduler",
           lora_scale=None, lan=False)

    save_file(tensors, os.path.join(FIXTURES, "runs.safetensors"), metadata={"runs": json.dumps(runs, sort_keys=True)})
    total = 0
    for root, _, files in os.walk(FIXTURES):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    for root, _, files in sorted(os.walk(FIXTURES)):
        for f in sorted(files):
            path = os.path.join(root, f)
            total += os.path.getsize(path)
            print(f"{os.path.relpath(path, FIXTURES):60s} {os.path.getsize(path):>9d}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
