#!/usr/bin/env python3
"""Writes the committed AutoencoderKL parity fixtures for Tests/VAETests (run once; `swift test` never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/python Tests/parity/make_vae_fixtures.py

Everything is seeded; a rerun rewrites every file byte for byte. Stored tensors are float32; the reference outputs
are computed by diffusers in float64 from those float32 values (weights and inputs are exactly representable), so
the Swift float32 implementation is compared with the exact answer, not with PyTorch's float32 rounding.

Outputs in Tests/VAETests/Fixtures/vae_tiny/:

  config.json, diffusion_pytorch_model.safetensors
      A random-weight AutoencoderKL (save_pretrained, safe_serialization): block_out_channels [16, 32, 32] (three
      levels: the latent is 1/4 of the image), layers_per_block 2 (encoder blocks have 2 resnets, decoder blocks 3),
      norm_num_groups 8, latent_channels 4, sample_size 32 (so the default tiles are 32 px / 8 latent px),
      scaling_factor 0.3 (not the default, so a Swift side that ignores the config shows). Every parameter gets
      += 0.05·N(0,1) after diffusers' init, so GroupNorm weights are not 1 and biases not 0.

  io.safetensors
      sample            (2, 3, 64, 48) uniform in [-1, 1): a non-square batch
      moments           encoder → quant_conv output (2, 8, 16, 12), i.e. DiagonalGaussianDistribution.parameters
      latent_mean       posterior.mode() · scaling_factor (what `encode(mode: .mean)` returns)
      noise             (2, 4, 16, 12) N(0, 1)
      latent_sample     (posterior.mean + posterior.std · noise) · scaling_factor: `posterior.sample()` with the
                        noise given instead of drawn (torch's generator is not ours)
      latent            (2, 4, 16, 12) N(0, 1): a decoder input (scaled latents, as a U-Net produces them)
      decoded           vae.decode(latent / scaling_factor).sample, (2, 3, 64, 48)
      For tile sizes T in {32 (the config's sample_size, diffusers' default), 16} with vae.enable_tiling() and
      vae.tile_sample_min_size = T, vae.tile_latent_min_size = T / 4 (diffusers' formula
      int(sample_size / 2 ** (len(block_out_channels) - 1))):
      moments_tile<T>   vae.encode(sample).latent_dist.parameters (tiled, blended moments)
      latent_mean_tile<T>, decoded_tile<T>   (decode of `latent / scaling_factor`)
      posterior_moments (1, 8, 3, 5) 20·N(0,1): large enough that logvar hits both clamps (−30, 20)
      posterior_noise   (1, 4, 3, 5) N(0, 1)
      posterior_sample  DiagonalGaussianDistribution(posterior_moments): mean + std · posterior_noise

The script also checks that diffusers loads the same weights saved under the old attention key names
(query/key/value/proj_attn, as pre-0.14 checkpoints have them) to the same outputs, since the Swift loader does
the same renaming.
"""
import copy
import json
import os
import shutil
import sys
import tempfile
import zlib

import torch

torch.set_num_threads(2)

from diffusers import AutoencoderKL  # noqa: E402
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_unet_fixtures import canonicalize_header, describe  # noqa: E402

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(TESTS, "VAETests", "Fixtures")

CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32], layers_per_block=2, act_fn="silu", latent_channels=4,
    norm_num_groups=8, sample_size=32, scaling_factor=0.3,
)
IMAGE = (64, 48)
TILES = (32, 16)


def generator(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def randn(shape, g, std=1.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std


def check(label, got, expected, atol):
    error = (got.double() - expected.double()).abs().max().item()
    print(f"  check {label}: max abs error {error:.3g}")
    assert error <= atol, f"{label}: {error} > {atol}"


def run(vae, io, tile=None):
    """encode → moments, latent_mean; decode(latent / sf). `tile` enables diffusers' tiling with that sample size."""
    vae = copy.deepcopy(vae).double()
    sf = vae.config.scaling_factor
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if tile is not None:
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = int(tile / factor)
    with torch.no_grad():
        posterior = vae.encode(io["sample"].double()).latent_dist
        decoded = vae.decode(io["latent"].double() / sf).sample
    return posterior, decoded


def old_attention_keys(state_dict):
    """Renames to_q/to_k/to_v/to_out.0 of the mid-block attentions to the pre-0.14 names."""
    renamed = {}
    for k, v in state_dict.items():
        if ".mid_block.attentions." in k:
            for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                             (".to_out.0.", ".proj_attn.")):
                k = k.replace(new, old)
        renamed[k] = v
    return renamed


def main():
    folder = os.path.join(FIXTURES, "vae_tiny")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    g = generator("vae_tiny")
    torch.manual_seed(zlib.crc32(b"vae_tiny/init"))
    vae = AutoencoderKL(**CONFIG).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(randn(p.shape, g, 0.05))
    vae.requires_grad_(False)
    vae.save_pretrained(folder, safe_serialization=True)

    h, w = IMAGE
    f = 2 ** (len(CONFIG["block_out_channels"]) - 1)
    sf = CONFIG["scaling_factor"]
    io = {"sample": torch.rand((2, 3, h, w), generator=g, dtype=torch.float32) * 2 - 1,
          "noise": randn((2, 4, h // f, w // f), g),
          "latent": randn((2, 4, h // f, w // f), g)}
    posterior, decoded = run(vae, io)
    io["moments"] = posterior.parameters.float()
    io["latent_mean"] = (posterior.mode() * sf).float()
    io["latent_sample"] = ((posterior.mean + posterior.std * io["noise"].double()) * sf).float()
    io["decoded"] = decoded.float()
    for tile in TILES:
        tp, td = run(vae, io, tile)
        io[f"moments_tile{tile}"] = tp.parameters.float()
        io[f"latent_mean_tile{tile}"] = (tp.mode() * sf).float()
        io[f"decoded_tile{tile}"] = td.float()
        assert io[f"moments_tile{tile}"].shape == io["moments"].shape
        assert io[f"decoded_tile{tile}"].shape == io["decoded"].shape
        print(f"tile {tile}: |tiled - untiled| max: moments "
              f"{(io[f'moments_tile{tile}'] - io['moments']).abs().max().item():.3g}, decoded "
              f"{(io[f'decoded_tile{tile}'] - io['decoded']).abs().max().item():.3g}")
        # Tiling must make a difference, or the fixture would not test it.
        assert (io[f"decoded_tile{tile}"] - io["decoded"]).abs().max() > 1e-3

    pm = randn((1, 8, 3, 5), g, 20.0)
    pn = randn((1, 4, 3, 5), g)
    dist = DiagonalGaussianDistribution(pm.double())
    assert (pm[:, 4:] < -30).any() and (pm[:, 4:] > 20).any(), "posterior_moments should hit both logvar clamps"
    io["posterior_moments"] = pm
    io["posterior_noise"] = pn
    io["posterior_sample"] = (dist.mean + dist.std * pn.double()).float()

    io = {k: v.contiguous() for k, v in io.items()}
    path = os.path.join(folder, "io.safetensors")
    save_file(io, path, metadata={"scaling_factor": str(sf), "tiles": json.dumps(list(TILES))})
    canonicalize_header(path)
    print(f"vae_tiny: moments |max| {io['moments'].abs().max().item():.3g}, "
          f"decoded |max| {io['decoded'].abs().max().item():.3g}")

    # Sanity: the float32 model from disk agrees with the float64 reference.
    fresh = AutoencoderKL.from_pretrained(folder).eval()
    with torch.no_grad():
        check("from_pretrained float32 moments", fresh.encode(io["sample"]).latent_dist.parameters, io["moments"], 1e-4)
        check("from_pretrained float32 decoded", fresh.decode(io["latent"] / sf).sample, io["decoded"], 1e-4)

    # Old attention key names load to the same model in diffusers (the Swift loader renames them the same way).
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(folder, "config.json"), tmp)
        sd = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
        old = old_attention_keys(sd)
        assert any(".proj_attn." in k for k in old) and not any(".to_q." in k for k in old)
        save_file(old, os.path.join(tmp, "diffusion_pytorch_model.safetensors"))
        legacy = AutoencoderKL.from_pretrained(tmp).eval()
        for (k, a), (_, b) in zip(sorted(fresh.state_dict().items()), sorted(legacy.state_dict().items())):
            assert torch.equal(a, b), k
        print("  check old attention key names: diffusers loads identical weights")

    describe(FIXTURES)


if __name__ == "__main__":
    main()
