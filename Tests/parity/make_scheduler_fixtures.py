#!/usr/bin/env python3
"""Writes the committed sampling-scheduler fixtures for Tests/SchedulersTests (run once; `swift test` never needs Python).

    /work/main/.venv-fixtures/bin/python Tests/parity/make_scheduler_fixtures.py     (or Tests/parity/setup_venv.sh first)

Every scheduler is built the way a pipeline builds one: `Class.from_config(config)` from a scheduler_config.json
dict, so keys of another class are ignored and keys the JSON does not set take the class's own defaults (the SD 1.5
config below is the PNDMScheduler file shipped with the model). Sampling is diffusers' loop:

    scheduler.set_timesteps(N); x = sample
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(model_outputs[i], t, x, ...).prev_sample

with the model outputs given (0.9·N(0,1) + 0.1·model_input, one per step, so they look like a model's and are
saved) and the noise of stochastic steps given too (DDPM: the generator's draw, reproduced; DDIM eta > 0 and the
SDE variants of DPM-Solver: `variance_noise`).

Output Tests/SchedulersTests/Fixtures/:

  trajectory_<case>.safetensors, metadata `fixture`: JSON {class (the diffusers class the Swift scheduler must
  match), config (the scheduler_config.json object), steps, eta (DDIM)}. Keys:
    sample             (2, 4, 8, 8) float32   initial latents (already times init_noise_sigma)
    model_outputs      (N, 2, 4, 8, 8) float32
    noise              (N, 2, 4, 8, 8) float32   only for stochastic cases (DDPM, DDIM with eta > 0, SDE DPM-Solvers)
    model_inputs       (N, 2, 4, 8, 8) float32   scale_model_input(x_i, t_i) (EulerDiscreteScheduler only)
    timesteps          (N,) float64          scheduler.timesteps after set_timesteps
    sigmas             (N+1,) float32       scheduler.sigmas (Euler, DPM-Solver)
    init_noise_sigma   (1,) float32
    add_noise.original, add_noise.noise (4, 4, 8, 8) float32, add_noise.timesteps (4,) float64 = 0, 1, 500, 999,
    add_noise          (4, 4, 8, 8) float32: DDPMScheduler.add_noise, one timestep per row (DDPM cases only)
    trajectory         (N+1, 2, 4, 8, 8) float32  x_0 = sample, x_{i+1} = step i's prev_sample
    <key>_cr           the same run with correctly rounded float32 sqrt / log / exp (CorrectlyRoundedMode below),
                       for every key whose values differ (always trajectory_cr; for Euler also the sample, model
                       inputs and outputs, which depend on σ)

  timesteps.safetensors: set_timesteps only, over many classes, configs and step counts; metadata `cases` is a JSON
  list of {name, class, config, steps}; keys <name>.timesteps (N,) float64 and, for Euler / DPM-Solver,
  <name>.sigmas (N+1,) float32 and <name>.init_noise_sigma (1,) float32.
"""
import contextlib
import json
import math
import os
import sys

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

torch.set_num_threads(1)

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from safetensors.torch import save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "SchedulersTests", "Fixtures")
SHAPE = (2, 4, 8, 8)

# The scheduler_config.json of runwayml/stable-diffusion-v1-5 (PNDMScheduler; no timestep_spacing key).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def sd15(**kw):
    c = dict(SD15)
    c.update(kw)
    return c


CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}

# (case name, class, config, steps, eta)
TRAJECTORIES = [
    ("ddpm_sd15", "DDPMScheduler", sd15(), 20, 0.0),
    ("ddpm_linear_clip_smalllog_trailing", "DDPMScheduler",
     {"_class_name": "DDPMScheduler", "variance_type": "fixed_small_log", "timestep_spacing": "trailing"}, 12, 0.0),
    ("ddpm_v_large_linspace", "DDPMScheduler",
     sd15(_class_name="DDPMScheduler", prediction_type="v_prediction", variance_type="fixed_large",
          timestep_spacing="linspace"), 10, 0.0),
    ("ddim_sd15", "DDIMScheduler", sd15(), 25, 0.0),
    ("ddim_eta_v_trailing_clip", "DDIMScheduler",
     sd15(prediction_type="v_prediction", timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=True,
          clip_sample_range=1.5), 10, 0.7),
    ("ddim_sample_linspace", "DDIMScheduler",
     {"_class_name": "DDIMScheduler", "prediction_type": "sample", "timestep_spacing": "linspace",
      "clip_sample": False}, 8, 0.0),
    ("euler_sd15", "EulerDiscreteScheduler", sd15(), 30, 0.0),
    ("euler_karras_leading", "EulerDiscreteScheduler",
     sd15(use_karras_sigmas=True, timestep_spacing="leading"), 15, 0.0),
    ("euler_v_continuous_trailing", "EulerDiscreteScheduler",
     sd15(prediction_type="v_prediction", timestep_type="continuous", timestep_spacing="trailing",
          final_sigmas_type="sigma_min"), 10, 0.0),
    ("dpmpp2m_sd15", "DPMSolverMultistepScheduler", sd15(), 50, 0.0),
    ("dpmpp2m_karras_heun", "DPMSolverMultistepScheduler",
     sd15(use_karras_sigmas=True, solver_type="heun"), 20, 0.0),
    ("dpmpp3m_trailing", "DPMSolverMultistepScheduler",
     sd15(solver_order=3, timestep_spacing="trailing"), 12, 0.0),
    ("dpmpp3m_leading_v_sigmamin", "DPMSolverMultistepScheduler",
     sd15(solver_order=3, timestep_spacing="leading", prediction_type="v_prediction", final_sigmas_type="sigma_min",
          lower_order_final=False), 18, 0.0),
    ("dpm2m_midpoint_sigmamin", "DPMSolverMultistepScheduler",
     sd15(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"), 16, 0.0),
    # (not with Karras sigmas: they end at sigma_min, so with final_sigmas_type sigma_min the last step has h = 0
    # and diffusers' heun / third-order terms divide by it)
    ("dpm3m_heun_sample_linspace", "DPMSolverMultistepScheduler",
     sd15(algorithm_type="dpmsolver", solver_order=3, solver_type="heun", prediction_type="sample",
          final_sigmas_type="sigma_min", timestep_spacing="linspace"), 16, 0.0),
    ("dpmpp1_euler_at_final_clipped", "DPMSolverMultistepScheduler",
     sd15(solver_order=1, euler_at_final=True, lambda_min_clipped=-5.1), 10, 0.0),
    ("dpmpp2m_linear_sigmamin_euler_final", "DPMSolverMultistepScheduler",
     {"_class_name": "DPMSolverMultistepScheduler", "final_sigmas_type": "sigma_min", "euler_at_final": True}, 20, 0.0),
    ("sde_dpmpp2m_sd15", "DPMSolverMultistepScheduler", sd15(algorithm_type="sde-dpmsolver++"), 20, 0.0),
    ("sde_dpmpp3m_heun", "DPMSolverMultistepScheduler",
     sd15(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun", timestep_spacing="trailing"), 16, 0.0),
    ("sde_dpm2m_heun_sigmamin", "DPMSolverMultistepScheduler",
     sd15(algorithm_type="sde-dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"), 12, 0.0),
]


class CorrectlyRoundedMode(TorchFunctionMode):
    """float32 sqrt / log / exp (and x ** 0.5) correctly rounded, computed in float64 by libm then cast.

    torch on CPU computes these through MKL's vector maths, within about an ulp of the correctly rounded value but
    not equal to it (on the machine that made these fixtures: ~20 % of sqrt, ~8 % of log, ~1 % of exp results differ
    by an ulp), and diffusers' step coefficients go through them. Everything else (the element-wise +, −, ×, ÷ of
    the steps, x ** 2, reciprocals) is IEEE float32 in torch as in Swift. A second trajectory made under this mode
    is what an exact re-implementation of diffusers' order of operations must reproduce to the last bit or so.
    """

    @staticmethod
    def _sqrt(v):
        return math.sqrt(v) if v >= 0 else float("nan")

    @staticmethod
    def _log(v):
        return math.log(v) if v > 0 else (float("-inf") if v == 0 else float("nan"))

    @staticmethod
    def _exp(v):
        try:
            return math.exp(v)
        except OverflowError:
            return float("inf")

    FUNCS = {"sqrt": _sqrt.__func__, "log": _log.__func__, "exp": _exp.__func__}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        fn = self.FUNCS.get(name)
        x = args[0] if args else None
        if name in ("pow", "__pow__") and len(args) > 1 and isinstance(args[1], float) and args[1] == 0.5:
            fn = self.FUNCS["sqrt"]
        if fn is not None and isinstance(x, torch.Tensor) and x.dtype == torch.float32 and not kwargs:
            flat = [fn(v) for v in x.detach().reshape(-1).double().tolist()]
            return torch.tensor(flat, dtype=torch.float64).to(torch.float32).reshape(x.shape)
        return func(*args, **kwargs)


@contextlib.contextmanager
def correctly_rounded():
    """CorrectlyRoundedMode, plus numpy's float32 np.log (its own SIMD code, also within an ulp) correctly rounded."""
    np_log = np.log

    def log(x, *a, **k):
        arr = np.asarray(x)
        if arr.dtype == np.float32 and not a and not k:
            return np.vectorize(lambda v: math.log(v) if v > 0 else np_log(v), otypes=[np.float64])(arr).astype(np.float32)
        return np_log(x, *a, **k)

    np.log = log
    try:
        with CorrectlyRoundedMode():
            yield
    finally:
        np.log = np_log


def randn(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def run(cls_name, config, steps, eta, seed):
    s = CLASSES[cls_name].from_config(config)
    s.set_timesteps(steps)
    x = randn(seed) * s.init_noise_sigma
    sample = x.clone()
    outs, noises, inputs, traj = [], [], [], [x.clone()]
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        inputs.append(inp.clone())
        mo = 0.9 * randn(seed * 1000 + 2 * i + 1) + 0.1 * inp
        outs.append(mo)
        if cls_name == "DDPMScheduler":
            nseed = seed * 1000 + 2 * i + 2
            noises.append(randn(nseed))  # what randn_tensor draws from a generator seeded the same way
            x = s.step(mo, t, x, generator=torch.Generator().manual_seed(nseed)).prev_sample
        elif cls_name == "DDIMScheduler":
            vn = randn(seed * 1000 + 2 * i + 2)
            noises.append(vn)
            x = s.step(mo, t, x, eta=eta, variance_noise=vn if eta > 0 else None).prev_sample
        elif cls_name == "DPMSolverMultistepScheduler" and s.config.algorithm_type.startswith("sde-"):
            vn = randn(seed * 1000 + 2 * i + 2)
            noises.append(vn)
            x = s.step(mo, t, x, variance_noise=vn).prev_sample
        else:
            x = s.step(mo, t, x).prev_sample
        assert x.dtype == torch.float32
        traj.append(x.clone())
    tensors = {
        "sample": sample.contiguous(),
        "model_outputs": torch.stack(outs).contiguous(),
        "timesteps": s.timesteps.to(torch.float64).contiguous(),
        "init_noise_sigma": torch.tensor([float(s.init_noise_sigma)], dtype=torch.float32),
        "trajectory": torch.stack(traj).contiguous(),
    }
    if noises and (cls_name != "DDIMScheduler" or eta > 0):
        tensors["noise"] = torch.stack(noises).contiguous()
    if cls_name == "EulerDiscreteScheduler":
        tensors["model_inputs"] = torch.stack(inputs).contiguous()
    if hasattr(s, "sigmas") and cls_name != "DDPMScheduler":
        tensors["sigmas"] = s.sigmas.to(torch.float32).contiguous()
    if cls_name == "DDPMScheduler":
        # add_noise (the forward process) at a few timesteps, one per batch row.
        x0, eps = randn(seed * 1000 + 998, (4, 4, 8, 8)), randn(seed * 1000 + 999, (4, 4, 8, 8))
        ts = torch.tensor([0, 1, 500, 999])
        tensors.update({"add_noise.original": x0, "add_noise.noise": eps, "add_noise.timesteps": ts.to(torch.float64),
                        "add_noise": s.add_noise(x0, eps, ts).contiguous()})
    return tensors


def trajectory(name, cls_name, config, steps, eta, seed):
    tensors = run(cls_name, config, steps, eta, seed)
    with correctly_rounded():
        exact = run(cls_name, config, steps, eta, seed)
    for k in list(tensors):
        if not torch.equal(tensors[k], exact[k]):
            tensors[f"{k}_cr"] = exact[k]
    assert "trajectory_cr" in tensors or torch.equal(tensors["trajectory"], exact["trajectory"])
    tensors.setdefault("trajectory_cr", exact["trajectory"])
    # One metadata key: safetensors writes several in hash order, which would change the file at every run.
    meta = {"fixture": json.dumps({"class": cls_name, "config": config, "steps": steps, "eta": eta}, sort_keys=True)}
    path = os.path.join(OUT, f"trajectory_{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    x, xc = tensors["trajectory"][-1], tensors["trajectory_cr"][-1]
    print(f"{path}: {steps} steps, |x_N| max {x.abs().max().item():.3g}, "
          f"max |x_N − x_N(cr)| {(x - xc).abs().max().item():.3g}")


def timestep_cases():
    linear = {"_class_name": "DDPMScheduler"}
    configs = {
        "sd15": sd15(),
        "sd15_leading": sd15(timestep_spacing="leading"),
        "sd15_trailing": sd15(timestep_spacing="trailing"),
        "sd15_linspace": sd15(timestep_spacing="linspace"),
        "linear": linear,
        "cos_trailing": {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"},
        "sd15_karras": sd15(use_karras_sigmas=True),
        "sd15_karras_leading": sd15(use_karras_sigmas=True, timestep_spacing="leading"),
        "cos_karras": {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        "sd15_clipped": sd15(lambda_min_clipped=-5.1, timestep_spacing="trailing"),
        "sd15_sigmamin": sd15(final_sigmas_type="sigma_min", algorithm_type="dpmsolver"),
        "sd15_log_linear": sd15(interpolation_type="log_linear"),
        "small_train": {"num_train_timesteps": 100, "timestep_spacing": "trailing"},
    }
    cases = []
    for cls_name, cls in CLASSES.items():
        for cname, config in configs.items():
            keys = set(cls._get_init_keys(cls))
            if any(k in config and k not in keys for k in ("use_karras_sigmas", "interpolation_type",
                                                            "lambda_min_clipped", "final_sigmas_type")):
                continue  # a key this class ignores: the case would repeat another
            for steps in (1, 2, 7, 10, 25, 50, 64) + ((999,) if cname.startswith("sd15") and "karras" not in cname else ()):
                name = f"{cls_name}.{cname}.{steps}"
                try:
                    s = cls.from_config(config)
                    s.set_timesteps(steps)
                except Exception as e:  # noqa: BLE001 - diffusers refuses some (steps > train steps, …)
                    print(f"skip {name}: {e}", file=sys.stderr)
                    continue
                cases.append((name, cls_name, config, steps, s))
    tensors, meta = {}, []
    for name, cls_name, config, steps, s in cases:
        tensors[f"{name}.timesteps"] = s.timesteps.to(torch.float64).contiguous()
        if cls_name in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
            tensors[f"{name}.sigmas"] = s.sigmas.to(torch.float32).contiguous()
        tensors[f"{name}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)], dtype=torch.float32)
        meta.append({"name": name, "class": cls_name, "config": config, "steps": steps})
    path = os.path.join(OUT, "timesteps.safetensors")
    save_file(tensors, path, metadata={"cases": json.dumps(meta)})
    print(f"{path}: {len(meta)} cases")


def main():
    os.makedirs(OUT, exist_ok=True)
    for k, (name, cls_name, config, steps, eta) in enumerate(TRAJECTORIES):
        trajectory(name, cls_name, config, steps, eta, seed=k + 1)
    timestep_cases()


if __name__ == "__main__":
    main()
