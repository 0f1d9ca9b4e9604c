#!/usr/bin/env python3
"""Finds the charts in a screenshot of an hgdpo report and counts the drawn pixels in each (standard library only).

Usage: chart_pixels.py SCREENSHOT.png
Prints one line per chart: "chart X Y W H INK" (INK = saturated pixels inside the plot area: lines, bars, whiskers in
the palette's colours; the plot fill, grid, border and text are grey), then "charts N".

The charts' plot areas are filled with rgb(251, 251, 254) (SVGChart.plotFill) and crossed by grid lines of
rgb(228, 228, 236); nothing else on the pages uses such bluish greys (the stylesheet's greys have r = g = b). Rows holding many such pixels form bands; in a band,
columns holding them form boxes (gaps narrower than a bar are bridged).
"""
import struct
import sys
import zlib

def read_png(path):
    """8-bit gray/RGB/RGBA PNG, non-interlaced (as Chromium writes) -> (width, height, channels, rows of bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or interlace != 0 or color not in (0, 2, 6):
        raise SystemExit(f"{path}: unsupported PNG (depth {depth}, colour type {color}, interlace {interlace})")
    ch = {0: 1, 2: 3, 6: 4}[color]
    raw = zlib.decompress(idat)
    stride = width * ch
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, ch, rows


def main():
    width, height, ch, rows = read_png(sys.argv[1])
    if ch < 3:
        raise SystemExit("gray screenshot: no charts")

    def px(row, x):
        return row[x * ch], row[x * ch + 1], row[x * ch + 2]

    def plot_pixel(p):
        # The fill, the grid and their anti-aliased blends: r = g in [225, 252], b a little above.
        r, g, b = p
        return r == g and 225 <= r <= 252 and 3 <= b - r <= 9

    # Rows with at least 100 plot pixels (50 of every other pixel), grouped into bands (gaps of a few rows bridged).
    band_rows = [y for y in range(height) if sum(1 for x in range(0, width, 2) if plot_pixel(px(rows[y], x))) >= 50]
    bands, start = [], None
    for i, y in enumerate(band_rows):
        if start is None:
            start = y
        if i + 1 == len(band_rows) or band_rows[i + 1] > y + 6:     # a horizontal line or bar edge across a chart
            if y - start >= 40:
                bands.append((start, y))
            start = None
    charts = []
    for y0, y1 in bands:
        cols = [x for x in range(width) if any(plot_pixel(px(rows[y], x)) for y in range(y0, y1 + 1, 3))]
        runs, s = [], None
        for i, x in enumerate(cols):
            if s is None:
                s = x
            if i + 1 == len(cols) or cols[i + 1] - x > 70:      # bars are at most 64 px wide; charts 90+ px apart
                if x - s >= 60:
                    runs.append((s, x))
                s = None
        for x0, x1 in runs:
            ink = 0
            for y in range(y0, y1 + 1):
                row = rows[y]
                for x in range(x0, x1 + 1):
                    r, g, b = px(row, x)
                    if max(r, g, b) - min(r, g, b) > 40:
                        ink += 1
            charts.append((x0, y0, x1 - x0 + 1, y1 - y0 + 1, ink))
    for c in charts:
        print("chart %d %d %d %d %d" % c)
    print("charts %d" % len(charts))


main()
