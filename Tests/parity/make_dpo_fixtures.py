#!/usr/bin/env python3
"""Writes the committed HG-DPO objective fixture for Tests/TrainingTests (run once; `swift test` never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/python Tests/parity/make_dpo_fixtures.py

One HG-DPO training step as ../shared/bench/torch_dpo_step.py takes it, on the random-weight U-Net of
Tests/UNetTests/Fixtures/unet_conv (made by make_unet_fixtures.py) with its LoRA (lora_diffusers.safetensors, r 4,
alpha 8, non-zero B) loaded the way StableDiffusionPipeline.load_lora_weights does. Policy = LoRA at scale 1,
reference = the same U-Net with adapters disabled. Winners and losers go through the U-Net as one batch of 2B
(winners first), each pair sharing its noise and timestep, the text context duplicated.

Everything after the float32 inputs is float64 (model.double(), inputs cast), so the fixture is the exact answer
for these float32 weights and inputs, not PyTorch's float32 rounding. Two float32 steps remain, both diffusers'
own: get_timestep_embedding runs in float32 whatever the model dtype, and DDPMScheduler.alphas_cumprod is a
float32 tensor (torch.cumprod of the float32 betas) that add_noise and the statistic term cast to float64.
Scheduler: DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
num_train_timesteps=1000); nothing of it is stored, Swift's NoiseSchedule builds the same.

Also Tests/TrainingTests/Fixtures/dpo_vpred.safetensors, the objective of a v-prediction model (SD 2.x 768-v, the toy
world's model) on given predictions, no U-Net: targets are diffusers' DDPMScheduler.get_velocity of each image
(v = √ᾱ·ε − √(1−ᾱ)·x0, winner and loser each their own), and the statistic's posterior mean starts from
x0 = √ᾱ·x_t − √(1−ᾱ)·v. Keys: winner, loser, noise, timesteps as below; policy_v, reference_v (6, 4, 8, 8) float32
(the targets plus noise of a few tenths, the reference a small step from the policy); for S in both, dpo_only,
stat_only, stride20, sft: S.beta, S.stat_weight, S.stat_stride, S.loss, S.dpo_loss, S.stat_loss, S.grad_policy_v (sft: the
MSE to the winners' velocity alone, policy_v's first B rows, grad over those rows); mse_theta_w, mse_theta_l,
mse_ref_w, mse_ref_l.

Output Tests/TrainingTests/Fixtures/dpo_loss.safetensors. Keys:

  winner, noise               (B=3, 4, 8, 8) float32, N(0,1)
  loser                       (3, 4, 8, 8) float32, winner + LOSER_SPREAD_j·N(0,1): the spreads put every pair's
                              inside_j at 2.1…3.1 in size with mixed signs (implicit accuracy 1/3), so no pair's
                              −log σ is saturated (each gives DPO gradient) and float32 cannot flip a sign
  timesteps                   (3,) int64 = [0, 517, 999]  (t = 0: ᾱ of the step before is 1)
  encoder_hidden_states       (3, 7, 24) float32, N(0,1)
  policy_eps, reference_eps   (2B=6, 4, 8, 8) float64: the U-Net's ε predictions, LoRA on / off (winners, then
                              losers), so the objective can be checked apart from the U-Net's float32 error
  mse_theta_w, mse_theta_l, mse_ref_w, mse_ref_l
                              (3,) float64: mean over C,H,W of (ε_pred − ε)², policy / reference, winner / loser
  For each setting S in SETTINGS (both, dpo_only, stat_only, stride20):
  S.beta, S.stat_weight       () float64; S.stat_stride () int64 (the statistic's sampler step t → t − stride)
  S.loss                      () float64: dpo_loss + stat_weight · stat_loss
  S.dpo_loss                  () float64: mean over pairs of −log σ(inside_j)   (Diffusion-DPO, HG-DPO Eq. 3)
  S.stat_loss                 () float64: mean over pairs of Σ_c (mean_hw μ_θ − mean_hw μ_ref)², NOT weighted
                                           (HG-DPO Eq. 8), μ = DDPM posterior mean of x_{t−stride} from the
                                           winner's x_t, written out as the sampler computes it (x0, then
                                           c0·x0 + c1·x_t; ᾱ of a negative timestep is 1), not simplified
  S.implicit_acc              () float64: mean over pairs of [inside_j > 0] + ½[inside_j = 0]
  S.inside                    (3,) float64: inside_j = β((mse_ref^w − mse_ref^l) − (mse_θ^w − mse_θ^l))
  S.grad_policy_eps           (6, 4, 8, 8) float32: d S.loss / d policy_eps
  S.grad.<module>.lora_A.weight, S.grad.<module>.lora_B.weight
                              float32 (rank 4, in) / (out, 4): d S.loss / d LoRA parameter, autograd in float64
                              through the policy forward (the reference is constant). <module> is the diffusers
                              path (down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q, …).
"""
import json
import os
import struct
import sys
import zlib

import torch

torch.set_num_threads(2)

from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_lora_roundtrip  # noqa: E402

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNET = os.path.join(TESTS, "UNetTests", "Fixtures", "unet_conv")
OUT = os.path.join(TESTS, "TrainingTests", "Fixtures", "dpo_loss.safetensors")
OUT_V = os.path.join(TESTS, "TrainingTests", "Fixtures", "dpo_vpred.safetensors")

B, C, H, W, S, D = 3, 4, 8, 8, 7, 24
TIMESTEPS = [0, 517, 999]
LOSER_SPREAD = [0.015, 0.15, 0.6]  # per pair; an independent loser would give inside ≈ 176 at t = 0 (σ saturated)
# name: (beta, stat_weight λ, stat_stride)
SETTINGS = {
    "both": (2500.0, 1e4, 1),
    "dpo_only": (2500.0, 0.0, 1),
    "stat_only": (0.0, 1e4, 1),
    "stride20": (2500.0, 1e4, 20),
}


def generator(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def load_policy():
    """The unet_conv U-Net with its diffusers-format LoRA, in float64; only the LoRA parameters require grad."""
    unet = UNet2DConditionModel.from_pretrained(UNET).eval()
    report = check_lora_roundtrip.load_lora_into_unet(unet, os.path.join(UNET, "lora_diffusers.safetensors"))
    assert not report["missing"] and not report["unexpected"], report
    assert (report["r"], report["lora_alpha"]) == (4, 8), report
    unet = unet.double()
    unet.requires_grad_(False)
    lora = {}
    for name, p in unet.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            # …to_q.lora_A.roundtrip.weight -> …to_q.lora_A.weight
            lora[name.replace(f".{check_lora_roundtrip.ADAPTER}.", ".")] = p
            p.requires_grad_(True)
    assert len(lora) == 2 * 4 * 2 * 4, len(lora)  # 4 transformer blocks × attn1/attn2 × q,k,v,out × A,B
    return unet, lora


def stat_loss(xt_w, pred_w, ref_w, abar_all, t, stride, prediction="epsilon"):
    """HG-DPO Eq. 8 as the sampler computes it: DDPM posterior mean of x_{t−stride} from the winner's x_t for the
    policy's and the reference's prediction (ε, or v: x0 as diffusers' v_prediction branch of DDPMScheduler.step),
    channel means over H,W, squared difference summed over channels; mean over pairs.
    Same formula as torch_dpo_step.py's prev(), with ᾱ_{t'} = 1 for t' < 0."""
    tp = t - stride
    abar = abar_all[t].view(-1, 1, 1, 1)
    abar_prev = torch.where(tp >= 0, abar_all[tp.clamp(min=0)], torch.ones((), dtype=torch.float64)).view(-1, 1, 1, 1)
    alpha = abar / abar_prev

    def prev(pred):
        if prediction == "epsilon":
            x0 = (xt_w - (1 - abar).sqrt() * pred) / abar.sqrt()
        else:
            x0 = abar.sqrt() * xt_w - (1 - abar).sqrt() * pred
        return (abar_prev.sqrt() * (1 - alpha) / (1 - abar)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * xt_w

    per_pair = ((prev(pred_w).mean(dim=[2, 3]) - prev(ref_w).mean(dim=[2, 3])) ** 2).sum(dim=1)
    # Check against the closed form Objective.swift uses: μ_θ − μ_ref = k·(pred_θ − pred_ref).
    c0 = abar_prev.sqrt() * (1 - alpha) / (1 - abar)
    k = -c0 * (1 - abar).sqrt() / (abar.sqrt() if prediction == "epsilon" else 1)
    closed = ((k * (pred_w - ref_w)).mean(dim=[2, 3]) ** 2).sum(dim=1)
    assert torch.allclose(per_pair, closed, rtol=1e-9, atol=0), (per_pair, closed)
    return per_pair.mean(), per_pair


def main():
    g = generator("dpo_loss")
    winner = torch.randn((B, C, H, W), generator=g)
    spread = torch.tensor(LOSER_SPREAD, dtype=torch.float32).view(B, 1, 1, 1)
    inputs = {
        "winner": winner,
        "loser": winner + spread * torch.randn((B, C, H, W), generator=g),
        "noise": torch.randn((B, C, H, W), generator=g),
        "timesteps": torch.tensor(TIMESTEPS, dtype=torch.int64),
        "encoder_hidden_states": torch.randn((B, S, D), generator=g),
    }
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    assert sched.alphas_cumprod.dtype == torch.float32
    abar_all = sched.alphas_cumprod.double()
    unet, lora = load_policy()

    # One batch of 2B: winners then losers, shared noise and timestep, context duplicated (as Bench.swift / Step.swift).
    t = inputs["timesteps"]
    x = torch.cat([inputs["winner"], inputs["loser"]]).double()
    noise = torch.cat([inputs["noise"], inputs["noise"]]).double()
    tt = torch.cat([t, t])
    ctx = torch.cat([inputs["encoder_hidden_states"]] * 2).double()
    xt = sched.add_noise(x, noise, tt)  # casts the float32 alphas_cumprod to float64
    assert xt.dtype == torch.float64

    pred = unet(xt, tt, encoder_hidden_states=ctx).sample
    with torch.no_grad():
        unet.disable_adapters()
        ref = unet(xt, tt, encoder_hidden_states=ctx).sample
        unet.enable_adapters()
    assert (pred - ref).abs().max() > 1e-3, "LoRA has no effect"

    mse = ((pred - noise) ** 2).mean(dim=[1, 2, 3])
    rmse = ((ref - noise) ** 2).mean(dim=[1, 2, 3])
    out = {"policy_eps": pred.detach(), "reference_eps": ref,
           "mse_theta_w": mse[:B].detach(), "mse_theta_l": mse[B:].detach(),
           "mse_ref_w": rmse[:B], "mse_ref_l": rmse[B:]}
    out.update(inputs)
    names = list(lora)
    params = [lora[n] for n in names]
    for setting, (beta, lam, stride) in SETTINGS.items():
        # Paper Eq. 3 and diffusers' train_diffusion_dpo.py: beta_dpo * (ref_diff - model_diff), beta 2500.
        inside = beta * ((rmse[:B] - rmse[B:]) - (mse[:B] - mse[B:]))
        dpo = -torch.nn.functional.logsigmoid(inside).mean()
        stat, stat_pairs = stat_loss(xt[:B], pred[:B], ref[:B], abar_all, t, stride)
        loss = dpo + lam * stat
        grads = torch.autograd.grad(loss, params + [pred], retain_graph=True, allow_unused=False)
        out[f"{setting}.grad_policy_eps"] = grads[-1].float()
        grads = grads[:-1]
        record_setting(out, setting, beta, lam, stride, loss, dpo, stat)
        # diffusers counts a tie as half: (inside > 0).sum() + 0.5 * (inside == 0).sum()
        out[f"{setting}.implicit_acc"] = ((inside > 0).double() + 0.5 * (inside == 0).double()).mean().detach()
        out[f"{setting}.inside"] = inside.detach()
        gnorm = 0.0
        for n, gr in zip(names, grads):
            out[f"{setting}.grad.{n}"] = gr.float()
            gnorm += gr.pow(2).sum().item()
        print(f"{setting:9s} β={beta:g} λ={lam:g} stride={stride}: loss {loss.item():.6g} dpo {dpo.item():.6g} "
              f"stat {stat.item():.4g} (λ·stat {lam * stat.item():.4g}; per pair {[f'{v:.3g}' for v in stat_pairs.tolist()]}) "
              f"inside {[f'{v:.4g}' for v in inside.tolist()]} acc {out[f'{setting}.implicit_acc'].item():.3g} "
              f"|grad| {gnorm ** 0.5:.4g}")
        if beta:
            assert 1.5 < inside.abs().min() and inside.abs().max() < 5, inside  # informative, not saturated
            assert 0 < out[f"{setting}.implicit_acc"] < 1, inside  # both signs
    # The two terms' gradients add up (a check that stat_only and dpo_only are the parts of `both`).
    for n in names:
        both, d, s = (out[f"{k}.grad.{n}"].double() for k in ("both", "dpo_only", "stat_only"))
        assert torch.allclose(both, d + s, rtol=1e-5, atol=1e-9), n

    out = {k: v.detach().contiguous() for k, v in out.items()}
    save_file(out, OUT, metadata={
        "unet": "Tests/UNetTests/Fixtures/unet_conv", "lora": "lora_diffusers.safetensors",
        "scheduler": json.dumps(dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     num_train_timesteps=1000), sort_keys=True),
        "settings": json.dumps({k: dict(beta=v[0], stat_weight=v[1], stat_stride=v[2]) for k, v in SETTINGS.items()},
                               sort_keys=True)})
    canonicalize_header(OUT)
    with safe_open(OUT, framework="pt") as f:
        assert sorted(f.keys()) == sorted(out)
    print(f"{os.path.relpath(OUT, os.path.dirname(TESTS))}: {len(out)} tensors, {os.path.getsize(OUT) / 1e3:.1f} kB")


def record_setting(out, setting, beta, lam, stride, loss, dpo, stat):
    """A setting's parameters and loss terms, as both fixtures store them."""
    f64 = lambda v: torch.tensor(float(v), dtype=torch.float64)
    out[f"{setting}.beta"] = f64(beta)
    out[f"{setting}.stat_weight"] = f64(lam)
    out[f"{setting}.stat_stride"] = torch.tensor(stride, dtype=torch.int64)
    out[f"{setting}.loss"] = loss.detach()
    out[f"{setting}.dpo_loss"] = dpo.detach()
    out[f"{setting}.stat_loss"] = stat.detach()


def main_vpred():
    """dpo_vpred.safetensors: the objective of a v-prediction model (see the module docstring)."""
    g = generator("dpo_vpred")
    winner = torch.randn((B, C, H, W), generator=g)
    loser = winner + 0.5 * torch.randn((B, C, H, W), generator=g)
    noise = torch.randn((B, C, H, W), generator=g)
    t = torch.tensor(TIMESTEPS, dtype=torch.int64)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          prediction_type="v_prediction")
    abar_all = sched.alphas_cumprod.double()
    x = torch.cat([winner, loser]).double()
    eps = torch.cat([noise, noise]).double()
    tt = torch.cat([t, t])
    target = sched.get_velocity(x, eps, tt)  # casts the float32 alphas_cumprod to float64
    assert target.dtype == torch.float64
    xt = sched.add_noise(x, eps, tt)
    policy = (target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)).float()
    reference = (policy.double() + 0.02 * torch.randn(target.shape, generator=g, dtype=torch.float64)).float()
    pred = policy.double().requires_grad_(True)
    ref = reference.double()
    mse = ((pred - target) ** 2).mean(dim=[1, 2, 3])
    rmse = ((ref - target) ** 2).mean(dim=[1, 2, 3])
    out = {"winner": winner, "loser": loser, "noise": noise, "timesteps": t, "policy_v": policy, "reference_v": reference,
           "mse_theta_w": mse[:B].detach(), "mse_theta_l": mse[B:].detach(), "mse_ref_w": rmse[:B], "mse_ref_l": rmse[B:]}

    for setting, (beta, lam, stride) in {"both": (2500.0, 1e4, 1), "dpo_only": (2500.0, 0.0, 1), "stat_only": (0.0, 1e4, 1),
                                         "stride20": (2500.0, 1e4, 20), "sft": (0.0, 0.0, 1)}.items():
        if setting == "sft":
            loss = mse[:B].mean()
            dpo = loss.clone()
            stat = torch.zeros((), dtype=torch.float64)
        else:
            inside = beta * ((rmse[:B] - rmse[B:]) - (mse[:B] - mse[B:]))
            if beta:
                assert 0.1 < inside.abs().min() and inside.abs().max() < 8, inside  # informative, not saturated
            dpo = -torch.nn.functional.logsigmoid(inside).mean()
            stat, _ = stat_loss(xt[:B], pred[:B], ref[:B], abar_all, t, stride, "v_prediction")
            loss = dpo + lam * stat
        (grad,) = torch.autograd.grad(loss, [pred], retain_graph=True)
        out[f"{setting}.grad_policy_v"] = (grad[:B] if setting == "sft" else grad).float()
        record_setting(out, setting, beta, lam, stride, loss, dpo, stat)
        print(f"v {setting:9s} loss {loss.item():.6g} dpo {dpo.item():.6g} stat {stat.item():.4g}")
    out = {k: v.detach().contiguous() for k, v in out.items()}
    save_file(out, OUT_V, metadata={"scheduler": json.dumps(dict(beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", num_train_timesteps=1000,
                                    prediction_type="v_prediction"), sort_keys=True)})
    canonicalize_header(OUT_V)
    print(f"{os.path.relpath(OUT_V, os.path.dirname(TESTS))}: {len(out)} tensors, {os.path.getsize(OUT_V) / 1e3:.1f} kB")


def canonicalize_header(path):
    """Sorts the `__metadata__` entries in place (safetensors writes them in hash order), so reruns are byte-identical."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(new) <= length, path
        f.seek(8)
        f.write(new + b" " * (length - len(new)))


if __name__ == "__main__":
    if sys.argv[1:] != ["--vpred-only"]:
        main()
    main_vpred()
