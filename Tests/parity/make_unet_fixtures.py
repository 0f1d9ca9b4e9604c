#!/usr/bin/env python3
"""Writes the committed U-Net parity fixtures for Tests/UNetTests (run once; `swift test` never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/python Tests/parity/make_unet_fixtures.py

Everything is seeded; a rerun rewrites every file byte for byte (header metadata is sorted, see
canonicalize_header). Stored tensors are float32; the reference outputs and gradients are
computed in float64 from those float32 values (weights and inputs are exactly representable), so a Swift float32
implementation is compared with the exact answer, not with PyTorch's own float32 rounding. The one float32 step
is diffusers' own: `get_timestep_embedding` always runs in float32 (`timesteps.float()`), also in a float64 model.

Outputs in Tests/UNetTests/Fixtures/:

  layers/<case>.safetensors   one module each (cases in LAYER_CASES below). Keys:
      module.<state_dict key>   the module's parameters, random and non-trivial (weights 0.2·N(0,1), biases
                                0.1·N(0,1), GroupNorm / LayerNorm weights 1 + 0.1·N(0,1)).
      input                     (and `temb`, `encoder_hidden_states` where the module takes them)
      output                    module(input, …) (`.sample` for Transformer2DModel)
      grad_output               N(0,1), shape of output
      grad_input, grad_temb, grad_encoder_hidden_states
                                d sum(output · grad_output) / d input (…), by autograd
      Header metadata: module (class name), module_path (its Python path), config (JSON of the constructor
      arguments passed, nothing else). `timestep_embedding` has no module and no grads: `input` = t,
      `output` (flip_sin_to_cos=True, shift 0), `output_flip0_shift1` (flip False, shift 1).

  unet_conv/, unet_linear/    a random-weight UNet2DConditionModel each (SD1.5-style with conv proj_in / proj_out;
                              SD2-style with linear projections, per-block head counts, layers_per_block 2, a
                              non-square latent). Files:
      config.json, diffusion_pytorch_model.safetensors   save_pretrained(safe_serialization=True); random init,
                                then every parameter += 0.02·N(0,1) so zero-initialised ones (conv_out) are not 0.
      io.safetensors            sample (2,4,H,W); timestep (2,) = [37, 912]; encoder_hidden_states (2,S,D);
                                output (no LoRA); output_lora_1 and output_lora_0.5 (LoRA scale 1 and 0.5, via
                                cross_attention_kwargs={"scale": s}); loss_weights R; for loss = sum(output_lora_1·R):
                                grad.<module>.lora_A.weight / grad.<module>.lora_B.weight for every LoRA parameter
                                and grad_sample. Header: lora_r, lora_alpha, lora_target_modules.
      The LoRA is peft's, added as the training reference does (r 4, alpha 8, gaussian A, on to_q/to_k/to_v/
      to_out.0), with every lora_B set to 0.1·N(0,1). The same LoRA in three formats:
      lora_diffusers.safetensors   StableDiffusionPipeline.save_lora_weights(unet_lora_layers=
                                   convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
                                   unet_lora_adapter_metadata=peft config dict): keys unet.<module>.lora.down.weight /
                                   .lora.up.weight; header `lora_adapter_metadata` = JSON {"unet.r": 4,
                                   "unet.lora_alpha": 8, …}.
      lora_peft.safetensors        get_peft_model_state_dict(unet): <module>.lora_A.weight / .lora_B.weight;
                                   header {"r": "4", "lora_alpha": "8", "target_modules": JSON list}.
      lora_kohya.safetensors       lora_unet_<module with _ for .>.lora_down.weight / .lora_up.weight / .alpha (0-d,
                                   8.0).
      The script checks that diffusers loads lora_diffusers and lora_kohya into a fresh base U-Net (as
      StableDiffusionPipeline.load_lora_weights does) with no missing / unexpected keys and reproduces
      output_lora_1 / output_lora_0.5, and that peft's set_peft_model_state_dict takes lora_peft back.
"""
import copy
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib

import torch

torch.set_num_threads(2)

from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock, FeedForward  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.downsampling import Downsample2D  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D  # noqa: E402
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402
from diffusers.models.upsampling import Upsample2D  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig, set_peft_model_state_dict  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_lora_roundtrip  # noqa: E402

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(TESTS, "UNetTests", "Fixtures")
LAYERS = os.path.join(FIXTURES, "layers")


def generator(name):
    """A generator seeded from the case name, so adding a case leaves the others unchanged."""
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def randn(shape, g, std=1.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std


# MARK: - Per-layer fixtures

def randomize_parameters(module, g):
    """Non-trivial values for every parameter, so a swapped weight/bias or a skipped affine shows."""
    with torch.no_grad():
        for sub in module.modules():
            is_norm = isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            for name, p in sub.named_parameters(recurse=False):
                if name == "weight" and is_norm:
                    p.copy_(1 + randn(p.shape, g, 0.1))
                elif name == "bias":
                    p.copy_(randn(p.shape, g, 0.1))
                else:
                    p.copy_(randn(p.shape, g, 0.2))


def write_layer(case, module, config, inputs, forward, g):
    """Writes layers/<case>.safetensors: parameters, inputs, output, grad_output, grad_<input> for each input.

    `inputs` maps key -> float32 tensor; `forward(module, **inputs)` returns the output tensor.
    """
    module.eval()
    reference = copy.deepcopy(module).double()
    leaves = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    output = forward(reference, **leaves)
    grad_output = randn(output.shape, g)
    output.backward(grad_output.double())

    tensors = {f"module.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in inputs.items()})
    tensors["output"] = output.detach().float().contiguous()
    tensors["grad_output"] = grad_output
    for k, leaf in leaves.items():
        tensors[f"grad_{k}"] = leaf.grad.float().contiguous()
    cls = type(module)
    metadata = {"module": cls.__name__, "module_path": f"{cls.__module__}.{cls.__qualname__}",
                "config": json.dumps(config, sort_keys=True)}
    path = os.path.join(LAYERS, f"{case}.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"layers/{case}: output {tuple(output.shape)} |max| {output.abs().max().item():.3g}, "
          + ", ".join(f"grad_{k} |max| {leaf.grad.abs().max().item():.3g}" for k, leaf in leaves.items()))


def layer_case(case, cls, config, input_shapes, forward=None):
    """Builds cls(**config) with random parameters and random inputs of `input_shapes`, then writes it."""
    g = generator(case)
    module = cls(**config)
    randomize_parameters(module, g)
    inputs = {k: randn(shape, g) for k, shape in input_shapes.items()}
    write_layer(case, module, config, inputs, forward or (lambda m, **x: m(*x.values())), g)


def make_layers():
    os.makedirs(LAYERS, exist_ok=True)
    nn = torch.nn
    layer_case("groupnorm", nn.GroupNorm, dict(num_groups=4, num_channels=16, eps=1e-5), {"input": (2, 16, 5, 7)})
    layer_case("conv3x3", nn.Conv2d, dict(in_channels=6, out_channels=8, kernel_size=3, padding=1),
               {"input": (2, 6, 5, 7)})
    layer_case("conv3x3_stride2", nn.Conv2d, dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1),
               {"input": (2, 8, 7, 6)})
    layer_case("conv1x1", nn.Conv2d, dict(in_channels=8, out_channels=12, kernel_size=1), {"input": (2, 8, 5, 7)})
    layer_case("linear", nn.Linear, dict(in_features=12, out_features=10), {"input": (2, 5, 12)})
    layer_case("layernorm", nn.LayerNorm, dict(normalized_shape=12), {"input": (2, 5, 12)})
    layer_case("geglu_ff", FeedForward, dict(dim=16, activation_fn="geglu"), {"input": (2, 5, 16)})
    layer_case("attention_self", Attention, dict(query_dim=16, heads=2, dim_head=8, bias=False, out_bias=True),
               {"input": (2, 9, 16)})
    cross = lambda m, input, encoder_hidden_states: m(input, encoder_hidden_states=encoder_hidden_states)
    layer_case("attention_cross", Attention, dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8),
               {"input": (2, 9, 16), "encoder_hidden_states": (2, 7, 12)}, cross)
    layer_case("basic_transformer_block", BasicTransformerBlock,
               dict(dim=16, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=12,
                    activation_fn="geglu"),
               {"input": (2, 9, 16), "encoder_hidden_states": (2, 7, 12)}, cross)
    transformer = lambda m, input, encoder_hidden_states: m(
        input, encoder_hidden_states=encoder_hidden_states, return_dict=True).sample
    for projection in ("conv", "linear"):
        layer_case(f"transformer2d_{projection}", Transformer2DModel,
                   dict(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=4,
                        cross_attention_dim=12, use_linear_projection=projection == "linear"),
                   {"input": (2, 16, 3, 4), "encoder_hidden_states": (2, 7, 12)}, transformer)
    resnet = lambda m, input, temb: m(input, temb)
    layer_case("resnet", ResnetBlock2D, dict(in_channels=16, out_channels=16, temb_channels=20, groups=4, eps=1e-5),
               {"input": (2, 16, 5, 6), "temb": (2, 20)}, resnet)
    layer_case("resnet_shortcut", ResnetBlock2D,
               dict(in_channels=16, out_channels=24, temb_channels=20, groups=4, eps=1e-5),
               {"input": (2, 16, 5, 6), "temb": (2, 20)}, resnet)
    layer_case("downsample", Downsample2D, dict(channels=16, use_conv=True, out_channels=16, padding=1, name="op"),
               {"input": (2, 16, 6, 5)})
    layer_case("upsample", Upsample2D, dict(channels=16, use_conv=True, out_channels=16), {"input": (2, 16, 3, 4)})

    # Timestep embedding: no parameters, no grads; diffusers computes it in float32.
    t = torch.tensor([0.0, 1.0, 17.5, 999.0], dtype=torch.float32)
    configs = {"output": dict(embedding_dim=32, flip_sin_to_cos=True, downscale_freq_shift=0),
               "output_flip0_shift1": dict(embedding_dim=32, flip_sin_to_cos=False, downscale_freq_shift=1)}
    tensors = {"input": t}
    for key, cfg in configs.items():
        tensors[key] = get_timestep_embedding(t, **cfg).contiguous()
        assert tensors[key].dtype == torch.float32
    save_file(tensors, os.path.join(LAYERS, "timestep_embedding.safetensors"),
              metadata={"module": "get_timestep_embedding",
                        "module_path": "diffusers.models.embeddings.get_timestep_embedding",
                        "config": json.dumps(configs, sort_keys=True)})
    print("layers/timestep_embedding: output (4, 32)")


# MARK: - Whole U-Net fixtures

UNETS = {
    "conv": dict(
        config=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                    attention_head_dim=4, norm_num_groups=8, use_linear_projection=False),
        latent=(8, 8), ehs=(7, 24)),
    "linear": dict(
        config=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=16, attention_head_dim=(2, 4, 4), norm_num_groups=8,
                    use_linear_projection=True),
        latent=(8, 12), ehs=(5, 16)),
}
LORA = dict(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
ADAPTER = "default"


def forward(unet, io, scale=None, dtype=torch.float64):
    kwargs = {} if scale is None else {"cross_attention_kwargs": {"scale": scale}}
    return unet(io["sample"].to(dtype), io["timestep"], encoder_hidden_states=io["encoder_hidden_states"].to(dtype),
                **kwargs).sample


def lora_modules(unet):
    """Module paths (peft keys without `.lora_A.weight`) of the LoRA'd layers, in state-dict order."""
    return [k[: -len(".lora_A.weight")] for k in get_peft_model_state_dict(unet) if k.endswith(".lora_A.weight")]


def write_lora_files(unet, folder):
    peft_sd = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    config = unet.peft_config[ADAPTER]

    # diffusers, as its trainers save it (the metadata is what training_utils._collate_lora_metadata passes:
    # the whole peft config). Sets (target_modules) are sorted here, as diffusers' own set -> list keeps the
    # per-run string-hash order.
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
            unet_lora_adapter_metadata=metadata, safe_serialization=True)
        shutil.copy(os.path.join(tmp, "pytorch_lora_weights.safetensors"),
                    os.path.join(folder, "lora_diffusers.safetensors"))

    save_file(peft_sd, os.path.join(folder, "lora_peft.safetensors"),
              metadata={"r": str(config.r), "lora_alpha": str(config.lora_alpha),
                        "target_modules": json.dumps(sorted(config.target_modules))})

    kohya = {}
    for module in lora_modules(unet):
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_down.weight"] = peft_sd[f"{module}.lora_A.weight"]
        kohya[f"{name}.lora_up.weight"] = peft_sd[f"{module}.lora_B.weight"]
        kohya[f"{name}.alpha"] = torch.tensor(float(config.lora_alpha), dtype=torch.float32)
    save_file(kohya, os.path.join(folder, "lora_kohya.safetensors"))


def check(label, got, expected, atol):
    error = (got.double() - expected.double()).abs().max().item()
    print(f"  {label}: max abs error {error:.3g}")
    assert error <= atol, f"{label}: max abs error {error} > {atol}"


def check_loaded_lora(name, folder, io, lora_file):
    unet = UNet2DConditionModel.from_pretrained(folder).eval()
    report = check_lora_roundtrip.load_lora_into_unet(unet, os.path.join(folder, lora_file))
    check_lora_roundtrip.print_report(report, f"unet_{name}/{lora_file}")
    assert not report["missing"] and not report["unexpected"], report
    assert (report["r"], report["lora_alpha"]) == (LORA["r"], LORA["lora_alpha"]), report
    with torch.no_grad():
        for scale, key in ((1.0, "output_lora_1"), (0.5, "output_lora_0.5")):
            check(f"{lora_file} loaded into a fresh U-Net (float32), scale {scale} vs {key}",
                  forward(unet, io, scale, torch.float32), io[key], 1e-5)


def make_unet(name, spec):
    folder = os.path.join(FIXTURES, f"unet_{name}")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    g = generator(f"unet_{name}")
    torch.manual_seed(zlib.crc32(f"unet_{name}/init".encode()))
    unet = UNet2DConditionModel(**spec["config"]).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(randn(p.shape, g, 0.02))
    unet.requires_grad_(False)
    unet.save_pretrained(folder, safe_serialization=True)

    h, w = spec["latent"]
    io = {"sample": randn((2, 4, h, w), g),
          "timestep": torch.tensor([37.0, 912.0], dtype=torch.float32),
          "encoder_hidden_states": randn((2, *spec["ehs"]), g)}
    with torch.no_grad():
        io["output"] = forward(copy.deepcopy(unet).double(), io).float()

    # LoRA as the training reference adds it; B is zero after init, so give it values.
    torch.manual_seed(zlib.crc32(f"unet_{name}/lora".encode()))
    unet.add_adapter(LoraConfig(**LORA), adapter_name=ADAPTER)
    with torch.no_grad():
        for pname, p in unet.named_parameters():
            if "lora_B" in pname:
                p.copy_(randn(p.shape, g, 0.1))

    reference = copy.deepcopy(unet).double()
    with torch.no_grad():
        io["output_lora_0.5"] = forward(reference, io, 0.5).float()
    io["loss_weights"] = randn(io["output"].shape, g)
    sample = io["sample"].double().requires_grad_(True)
    lora_params = {pname: p for pname, p in reference.named_parameters() if ".lora_" in pname}
    for p in lora_params.values():
        p.requires_grad_(True)
    out = reference(sample, io["timestep"], encoder_hidden_states=io["encoder_hidden_states"].double()).sample
    (out * io["loss_weights"].double()).sum().backward()
    io["output_lora_1"] = out.detach().float()
    io["grad_sample"] = sample.grad.float()
    for pname, p in lora_params.items():
        # down_blocks.0….to_q.lora_A.default.weight -> grad.down_blocks.0….to_q.lora_A.weight
        io["grad." + pname.replace(f".{ADAPTER}.", ".")] = p.grad.float()
    io = {k: v.contiguous() for k, v in io.items()}
    save_file(io, os.path.join(folder, "io.safetensors"),
              metadata={"lora_r": str(LORA["r"]), "lora_alpha": str(LORA["lora_alpha"]),
                        "lora_target_modules": json.dumps(LORA["target_modules"])})
    write_lora_files(unet, folder)

    n_lora = len(lora_params)
    print(f"unet_{name}: output |max| {io['output'].abs().max().item():.3g}, {n_lora} LoRA params, "
          f"|output_lora_1 - output| max {(io['output_lora_1'] - io['output']).abs().max().item():.3g}, "
          f"|output_lora_0.5 - output_lora_1| max {(io['output_lora_0.5'] - io['output_lora_1']).abs().max().item():.3g}")

    # Sanity: scale 0.5 lies strictly between, the in-memory float32 model agrees, adapters off gives `output`.
    for other in ("output", "output_lora_1"):
        assert (io["output_lora_0.5"] - io[other]).abs().max() > 1e-3, f"output_lora_0.5 equals {other}"
    with torch.no_grad():
        check("in-memory float32 LoRA U-Net vs output_lora_1", forward(unet, io, None, torch.float32),
              io["output_lora_1"], 1e-5)
        check("in-memory float32 LoRA U-Net, scale 0.5 vs output_lora_0.5", forward(unet, io, 0.5, torch.float32),
              io["output_lora_0.5"], 1e-5)
        unet.disable_adapters()
        check("in-memory float32, adapters disabled vs output", forward(unet, io, None, torch.float32),
              io["output"], 1e-5)
        unet.enable_adapters()

    # The three files load back.
    check_loaded_lora(name, folder, io, "lora_diffusers.safetensors")
    check_loaded_lora(name, folder, io, "lora_kohya.safetensors")
    fresh = UNet2DConditionModel.from_pretrained(folder).eval()
    fresh.add_adapter(LoraConfig(**LORA), adapter_name=ADAPTER)
    peft_sd, _ = check_lora_roundtrip.read_safetensors(os.path.join(folder, "lora_peft.safetensors"))
    result = set_peft_model_state_dict(fresh, peft_sd, adapter_name=ADAPTER)
    lora_missing = [k for k in result.missing_keys if ".lora_" in k]
    assert not lora_missing and not result.unexpected_keys, result
    with torch.no_grad():
        check("lora_peft.safetensors via set_peft_model_state_dict vs output_lora_1",
              forward(fresh, io, None, torch.float32), io["output_lora_1"], 1e-5)


def canonicalize_header(path):
    """Rewrites the safetensors header with `__metadata__` keys sorted, in place.

    safetensors writes the metadata map in Rust HashMap order, which changes from run to run; sorting it makes
    a rerun of this script byte-identical, so regenerated fixtures show no spurious git diff. Same length, same
    tensor offsets: only the order of the metadata entries changes.
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        header = json.loads(raw)
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(new) <= length, path
        f.seek(8)
        f.write(new + b" " * (length - len(new)))


def describe(folder):
    total = 0
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            path = os.path.join(root, f)
            size = os.path.getsize(path)
            total += size
            print(f"  {os.path.relpath(path, folder):45s} {size / 1e3:9.1f} kB")
    print(f"  total {total / 1e6:.2f} MB")


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    make_layers()
    for name, spec in UNETS.items():
        make_unet(name, spec)
    for root, _, files in os.walk(FIXTURES):
        for f in files:
            if f.endswith(".safetensors"):
                path = os.path.join(root, f)
                with safe_open(path, framework="pt") as st:
                    before = (st.metadata(), {k: st.get_tensor(k) for k in st.keys()})
                canonicalize_header(path)
                with safe_open(path, framework="pt") as st:  # still readable, same content
                    assert st.metadata() == before[0] and list(st.keys()) == list(before[1])
                    assert all(torch.equal(st.get_tensor(k), v) for k, v in before[1].items())
    describe(FIXTURES)


if __name__ == "__main__":
    main()
