#!/usr/bin/env python3
"""A picture of evaluations side by side for the docs (docs/demo/*.png): one row per side, one column per prompt (the
first image of each), enlarged without smoothing, the row's label on the left. Not part of the demo (needs Pillow).

Usage: demo_picture.py OUT.png [--prompts N] [--scale S] LABEL=EVAL_DIR[:baseline] ...
  EVAL_DIR:baseline takes that eval's baseline side (the SFT model), EVAL_DIR alone its side A.
Images are hgdpo eval's NNNNNN-seedS.png; image j of prompt p is number p·K + j (K images per prompt, from results.json).
"""
import json, os, sys
from PIL import Image, ImageDraw, ImageFont

def main(argv):
    out, prompts, scale, rows = None, 8, 3, []
    it = iter(argv)
    for a in it:
        if a == "--prompts": prompts = int(next(it))
        elif a == "--scale": scale = int(next(it))
        elif out is None: out = a
        else:
            label, spec = a.split("=", 1)
            folder, side = (spec[:-len(":baseline")], "baseline") if spec.endswith(":baseline") else (spec, "a")
            rows.append((label, folder, side))
    if out is None or not rows: sys.exit(__doc__)
    font = ImageFont.load_default()
    label_w = 8 + max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(l, font=font) for l, _, _ in rows)
    tiles = []
    for label, folder, side in rows:
        r = json.load(open(os.path.join(folder, "results.json")))
        k = r["sampling"]["images_per_prompt"]
        files = sorted(os.listdir(os.path.join(folder, side)))
        by_index = {int(f.split("-")[0]): f for f in files if f.endswith(".png")}
        tiles.append([Image.open(os.path.join(folder, side, by_index[p * k])).convert("RGB") for p in range(prompts)])
    w, h = tiles[0][0].size
    gap = 2
    canvas = Image.new("RGB", (int(label_w) + prompts * (w * scale + gap), len(rows) * (h * scale + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, _, _) in enumerate(rows):
        y = i * (h * scale + gap)
        draw.text((4, y + h * scale // 2 - 5), label, fill="black", font=font)
        for j, im in enumerate(tiles[i]):
            canvas.paste(im.resize((w * scale, h * scale), Image.NEAREST), (int(label_w) + j * (w * scale + gap), y))
    canvas.save(out, optimize=True)
    print(out, canvas.size)

if __name__ == "__main__":
    main(sys.argv[1:])
