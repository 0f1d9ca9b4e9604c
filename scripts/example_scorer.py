#!/usr/bin/env python3
"""An example external scorer for `hgdpo score --scorer NAME=external:"python3 scripts/example_scorer.py"`.

It speaks hgdpo's JSON-lines protocol (docs/dataset.md) on stdin/stdout and needs only the standard library:
the score of an image is its mean colourfulness (per-pixel max - min channel, in [0, 1]), a stand-in for a real
model. To plug in ImageReward, HPS v3 or any other scorer, keep the loop and replace `score`:

    import ImageReward as RM
    model = RM.load("ImageReward-v1.0")
    def score(prompt, paths):
        return model.score(prompt, paths)          # list of floats, one per image

Anything printed to stdout must be protocol lines; write logs to stderr (hgdpo shows them prefixed).
"""
import json
import struct
import sys
import zlib


def read_png_rgb(path):
    """8-bit RGB / RGBA / gray PNG (non-interlaced, as hgdpo writes) -> (width, height, channels, bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced gray/RGB/RGBA PNGs are supported")
    raw, stride = zlib.decompress(idat), width * channels
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return width, height, channels, bytes(out)


def score(prompt, paths):
    scores = []
    for path in paths:
        w, h, c, px = read_png_rgb(path)
        if c < 3:
            scores.append(0.0)
            continue
        total = sum(max(px[i:i + 3]) - min(px[i:i + 3]) for i in range(0, w * h * c, c))
        scores.append(total / (255.0 * w * h))
    return scores


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("hgdpo") == "hello":
            answer = {"name": "example-colourfulness", "version": "1"}
        else:
            try:
                answer = {"id": request["id"], "scores": score(request["prompt"], request["images"])}
            except Exception as e:  # report it: hgdpo stops with this message
                answer = {"id": request.get("id"), "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
