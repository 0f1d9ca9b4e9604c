#!/usr/bin/env python3
"""The size of HG-DPO's statistic-matching gradient on the channel means, against the DPO gradient's (docs/calibration.md).

Sources/Training/Objective.swift: for a pair at timestep t with stride s (t' = t − s), the statistic term is
  stat = Σ_c (k_t · mean_hw(ε_θ − ε_ref)_c)²,  k_t = −c0·√(1−ᾱ_t)/√ᾱ_t,  c0 = √ᾱ_t'·(1 − ᾱ_t/ᾱ_t')/(1 − ᾱ_t),
so λ·stat pulls channel c's mean prediction with d(λ·stat)/d mean_c = 2·λ·k_t²·Δ_c  (Δ_c = mean_hw(ε_θ − ε_ref)_c),
while the DPO term's gradient on the same channel mean is 2·β·σ(−inside)·Δ'_c/C  (C channels; its per-element
gradient is 2·β·σ·(ε_θ − ε)/(C·H·W), summed over the H·W elements of the channel). H·W cancels, so the ratio of the
two pulls on a channel's mean is  (λ/β)·C·k_t²·(Δ_c/Δ'_c)/σ: the resolution (32×32 pixels or SD's 88×128 latents)
does not enter; the schedule (through k_t²), the channel count, the stride and the prediction type do: a
v-prediction model's term is Σ_c (k_t · mean_hw(v_θ − v_ref)_c)² with k_t = −c0·√(1−ᾱ_t) (x0 = √ᾱ·x_t − √(1−ᾱ)·v),
and its DPO gradient is on v. Prints E_t[k_t²] (t uniform, as training draws it) and the effective weight
w = λ·C·E[k²]/β at the paper's λ and β.
"""
import math


def alphas_bar(kind, start, end, T=1000):
    if kind == "linear":
        betas = [start + (end - start) * i / (T - 1) for i in range(T)]
    else:  # scaled_linear
        betas = [(math.sqrt(start) + (math.sqrt(end) - math.sqrt(start)) * i / (T - 1)) ** 2 for i in range(T)]
    out, p = [], 1.0
    for b in betas:
        p *= 1 - b
        out.append(p)
    return out


def mean_k2(ab, stride, prediction="epsilon"):
    total = 0.0
    for t in range(len(ab)):
        a, ap = ab[t], (ab[t - stride] if t - stride >= 0 else 1.0)
        c0 = math.sqrt(ap) * (1 - a / ap) / (1 - a)
        k = -c0 * math.sqrt(1 - a) / (math.sqrt(a) if prediction == "epsilon" else 1.0)
        total += k * k
    return total / len(ab)


schedules = {"toy v-prediction (linear 1e-4…0.02, C = 3)": (alphas_bar("linear", 1e-4, 0.02), 3, "v_prediction"),
             "toy ε-prediction (linear 1e-4…0.02, C = 3)": (alphas_bar("linear", 1e-4, 0.02), 3, "epsilon"),
             "SD 1.5 (ε, scaled_linear 8.5e-4…0.012, C = 4)": (alphas_bar("scaled_linear", 0.00085, 0.012), 4, "epsilon"),
             "SD 2.x 768-v (v, scaled_linear 8.5e-4…0.012, C = 4)": (alphas_bar("scaled_linear", 0.00085, 0.012), 4, "v_prediction")}
beta, lam = 2500.0, 1e4
print("| model (schedule, channels) | --stat-inference-steps | stride | E_t[k²] | w = λ·C·E[k²]/β at λ = 1e4, β = 2500 |")
print("|---|---|---|---|---|")
for name, (ab, C, prediction) in schedules.items():
    for steps in (1000, 50, 20, 10):
        stride = 1000 // steps
        k2 = mean_k2(ab, stride, prediction)
        print(f"| {name} | {steps} | {stride} | {k2:.3g} | {lam * C * k2 / beta:.3g} |")
