#!/usr/bin/env python3
"""The README's table of what the demo shows, from hgdpo eval's results.json files (no third-party packages).
Usage: demo_table.py LABEL=EVAL_DIR ... (e.g. "HG-DPO (λ 1e4, stride 1)=runs/demo/eval-hgdpo")"""
import json, os, sys

print("| LoRA (vs the SFT model, held-out prompts) | toy-human win rate [95 % CI] | wins / ties / losses | hue shift (circular, °) | sat. shift (%) | value shift (%) | latent mean \\|Δμ\\| |")
print("|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    label, folder = arg.split("=", 1)
    r = json.load(open(os.path.join(folder, "results.json")))
    s = r["scorers"][r["scorer_order"][0]]
    c = r["color_shift"]
    print(f"| {label} | {s['win_rate']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] | {s['wins']} / {s['ties']} / {s['losses']} "
          f"| {c['h_degrees']:+.2f} | {c['s']:+.2f} | {c['v']:+.2f} | {r['latent_stats']['mean_distance_avg']:.4f} |")
