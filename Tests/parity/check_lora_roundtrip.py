#!/usr/bin/env python3
"""Loads a U-Net LoRA file into diffusers and checks that it reproduces a stored U-Net output.

    .venv-fixtures/bin/python Tests/parity/check_lora_roundtrip.py \\
        --unet Tests/UNetTests/Fixtures/unet_conv \\
        --lora Tests/UNetTests/Fixtures/unet_conv/lora_diffusers.safetensors \\
        --io Tests/UNetTests/Fixtures/unet_conv/io.safetensors --expected output_lora_1 --scale 1.0

Meant for LoRA files written by the Swift tool (diffusers format: `unet.<module>.lora.down.weight` /
`.lora.up.weight`, alpha in the `lora_adapter_metadata` header entry); kohya files (`lora_unet_…`) load too.
The file goes through the same path as `StableDiffusionPipeline.load_lora_weights`
(`lora_state_dict` → `load_lora_into_unet` → `unet.load_lora_adapter(prefix="unet")`), into the base U-Net read
with `UNet2DConditionModel.from_pretrained(--unet)`. The U-Net then runs on `sample`, `timestep` and
`encoder_hidden_states` from --io at LoRA scale --scale (`cross_attention_kwargs={"scale": s}`), and the result is
compared with the --io tensor named by --expected.

Printed: the r / lora_alpha diffusers settled on (a file without alpha metadata loads as alpha = r), missing
keys (lora_A / lora_B of a Linear named by --targets, default to_q,to_k,to_v,to_out.0, or of a module diffusers
created, that the file does not fill), unexpected keys (file tensors that
land on no module, or lack the `unet.` prefix), and the max abs / max relative error of the output.
Exit status 0 when there are no missing or unexpected keys and max abs error <= --atol, 1 otherwise.
"""
import argparse
import json
import logging
import os
import sys
import warnings

import torch
from safetensors import safe_open

ADAPTER = "roundtrip"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the training reference's LoraConfig.target_modules


class _Collect(logging.Handler):
    """Keeps diffusers' warnings (it reports unhandled LoRA keys only through the logger)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def read_safetensors(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def load_lora_into_unet(unet, lora_path, targets=TARGETS, adapter_name=ADAPTER):
    """Loads `lora_path` into `unet` as diffusers' SD pipeline would; returns a report dict.

    Missing keys are counted against every Linear of the base U-Net whose path ends in one of `targets`, not only
    against what diffusers created: peft injects LoRA layers only where the file has tensors, so a module the file
    leaves out would otherwise go unnoticed.
    """
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as SD
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict

    raw, file_metadata = read_safetensors(lora_path)
    expected = {f"{name}.{ab}.weight" for name, module in unet.named_modules()
                if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)
                for ab in ("lora_A", "lora_B")}
    directory, weight_name = os.path.split(os.path.abspath(lora_path))

    handler = _Collect()
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:  # peft warns through `warnings`
            warnings.simplefilter("always")
            state_dict, network_alphas, metadata = SD.lora_state_dict(
                directory, weight_name=weight_name, unet_config=unet.config, return_lora_metadata=True)
            converted = dict(state_dict)  # keep the keys as loaded, whatever the loader does with its copy
            SD.load_lora_into_unet(state_dict, network_alphas, unet, adapter_name=adapter_name, metadata=metadata)
    finally:
        diffusers_logger.removeHandler(handler)
    handler.messages += [str(w.message) for w in caught if not issubclass(w.category, (FutureWarning,
                                                                                    DeprecationWarning))]

    # The keys diffusers meant to load, in peft naming (mirrors PeftAdapterMixin.load_lora_adapter).
    prefixed = {k[len("unet."):]: v for k, v in converted.items() if k.startswith("unet.")}
    not_unet = sorted(k for k in converted if not k.startswith("unet."))
    if prefixed and "lora_A" not in next(iter(prefixed)):
        prefixed = convert_unet_state_dict_to_peft(prefixed)
    model_sd = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    missing = sorted((set(model_sd) | expected) - set(prefixed))
    unexpected = sorted(set(prefixed) - set(model_sd)) + not_unet
    value_error = max([(model_sd[k].float() - prefixed[k].float()).abs().max().item()
                       for k in set(model_sd) & set(prefixed)] or [float("nan")])
    config = unet.peft_config[adapter_name]
    return {
        "file_tensors": len(raw),
        "file_metadata_keys": sorted(file_metadata),
        "lora_adapter_metadata": metadata,
        "network_alphas": sorted(set((network_alphas or {}).values())),
        "r": config.r, "lora_alpha": config.lora_alpha,
        "rank_pattern": dict(config.rank_pattern), "alpha_pattern": dict(config.alpha_pattern),
        "loaded_params": len(model_sd),
        "missing": missing, "unexpected": unexpected,
        "max_value_error": value_error,
        "warnings": handler.messages,
    }


def run_unet(unet, io, scale):
    with torch.no_grad():
        return unet(io["sample"], io["timestep"], encoder_hidden_states=io["encoder_hidden_states"],
                    cross_attention_kwargs={"scale": scale}).sample


def print_report(report, label):
    print(f"[{label}] {report['file_tensors']} tensors, header keys {report['file_metadata_keys']}")
    print(f"[{label}] diffusers loaded r={report['r']} lora_alpha={report['lora_alpha']}"
          f" (metadata {'present' if report['lora_adapter_metadata'] else 'absent'};"
          f" kohya alphas {report['network_alphas'] or 'none'};"
          f" rank_pattern {report['rank_pattern'] or '{}'}; alpha_pattern {report['alpha_pattern'] or '{}'})")
    print(f"[{label}] {report['loaded_params']} LoRA params in model; missing {len(report['missing'])},"
          f" unexpected {len(report['unexpected'])}; max |file - loaded| = {report['max_value_error']:.3g}")
    for name in report["missing"][:10]:
        print(f"[{label}]   missing:    {name}")
    for name in report["unexpected"][:10]:
        print(f"[{label}]   unexpected: {name}")
    for message in report["warnings"]:
        print(f"[{label}]   diffusers warning: {message.splitlines()[0][:300]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unet", required=True, help="folder with config.json + diffusion_pytorch_model.safetensors")
    parser.add_argument("--lora", required=True, help="LoRA .safetensors (diffusers or kohya naming)")
    parser.add_argument("--io", required=True, help="safetensors with sample, timestep, encoder_hidden_states")
    parser.add_argument("--expected", default="output_lora_1", help="tensor in --io to compare with")
    parser.add_argument("--scale", type=float, default=1.0, help="LoRA scale (cross_attention_kwargs['scale'])")
    parser.add_argument("--atol", type=float, default=1e-5, help="max abs error allowed")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated module name endings every one of which must have a LoRA")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffusers import UNet2DConditionModel

    for path in (args.unet, args.lora, args.io):
        if not os.path.exists(path):
            parser.error(f"no such file or folder: {path}")
    io, _ = read_safetensors(args.io)
    for key in ("sample", "timestep", "encoder_hidden_states", args.expected):
        if key not in io:
            parser.error(f"{args.io} has no tensor {key!r} (has {sorted(io)})")

    unet = UNet2DConditionModel.from_pretrained(args.unet).eval()
    report = load_lora_into_unet(unet, args.lora, tuple(args.targets.split(",")))
    print_report(report, os.path.basename(args.lora))
    output = run_unet(unet, io, args.scale)
    expected = io[args.expected].to(output.dtype)
    error = (output - expected).abs()
    rel = (error / expected.abs().clamp_min(1e-3)).max().item()
    print(f"[{os.path.basename(args.lora)}] scale {args.scale}: max abs error vs {args.expected} = "
          f"{error.max().item():.3g} (max |expected| {expected.abs().max().item():.3g}, max rel {rel:.3g})")
    ok = not report["missing"] and not report["unexpected"] and error.max().item() <= args.atol
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
