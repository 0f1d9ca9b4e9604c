#!/usr/bin/env python3
"""Builds a small CLIP-layout byte-level BPE vocabulary (no real CLIP vocabulary can be downloaded here).

    .venv-fixtures/bin/python Tests/parity/clip_vocab.py OUT_DIR [--merges N]

Writes OUT_DIR/vocab.json and OUT_DIR/merges.txt laid out exactly as OpenAI's CLIP vocabulary (and so
openai/clip-vit-large-patch14's tokenizer/ that Stable Diffusion 1.x ships):

    ids 0…255      the 256 byte symbols of bytes_to_unicode(), in its order ("!" … "~", "¡" … "¬", "®" … "ÿ",
                   then the remapped bytes Ā, ā, …)
    ids 256…511    the same 256 symbols with "</w>" appended
    ids 512…       one token per merge, in merge order (the two halves concatenated)
    last two       "<|startoftext|>", "<|endoftext|>"

merges.txt starts with the line "#version: 0.2", then one merge "left right" per line, best first.

The merges are learned here with plain BPE (Sennrich et al. 2016) on words pre-tokenized the way CLIPTokenizer
does (lower-cased, whitespace collapsed, the CLIP regex, UTF-8 bytes mapped through bytes_to_unicode, the last
symbol of a word carrying "</w>"). The corpus is the hand-written prompt text below (people photography, the HG-DPO
domain, with accents and a little CJK) plus the docstrings of a fixed list of Python standard-library modules.
Ties between equally frequent pairs go to the lexicographically smallest pair, and a merge whose result is already
a token is never chosen (so every vocabulary entry is unique), which makes the result deterministic for a given
Python version. The committed vocabulary is the source of truth: make_text_encoder_fixtures.py only rebuilds it
with --remake-vocab.
"""
import argparse
import collections
import importlib
import json
import os
import warnings

import regex

# The pre-tokenizer pattern of CLIPTokenizer (transformers models/clip/tokenization_clip.py).
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def bytes_to_unicode():
    """GPT-2 / CLIP byte → printable symbol table (printable Latin-1 bytes map to themselves, the other 68 bytes
    to U+0100 upwards)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


PROMPTS = """
a photo of a young woman smiling, bust shot, looking at the camera, soft natural lighting, shallow depth of field
portrait of an old man with a grey beard, wearing a wool coat, standing in the rain, cinematic lighting
a professional headshot of a businesswoman in a navy suit, studio lighting, white background, high resolution
full body shot of a man running on the beach at sunset, sportswear, dynamic pose, motion blur
close-up portrait of a girl with freckles and red hair, green eyes, golden hour, 85mm lens, bokeh
a couple walking hand in hand through a park in autumn, leaves falling, warm colors, candid photo
an elderly woman knitting by the window, cozy living room, afternoon light, film grain, kodak portra 400
a chef cooking in a busy restaurant kitchen, steam, dramatic lighting, photorealistic, detailed face
a smiling child holding a balloon at a birthday party, colorful, bright, happy, upper body
a woman in a red dress dancing in the street at night, neon lights, reflections, wide angle
a man reading a book in a café in paris, cappuccino on the table, natural light, documentary style
two friends laughing on a rooftop, city skyline, blue hour, lifestyle photography, sharp focus
a soldier in uniform saluting, serious expression, black and white photo, high contrast
a doctor in a white coat with a stethoscope, hospital corridor, realistic skin texture, detailed hands
a ballet dancer on stage, spotlight, elegant pose, long exposure, artistic
a teenager skateboarding in a skate park, fisheye lens, action shot, summer
a bride and groom at their wedding, flowers, veil, romantic, soft focus, pastel colors
an athlete lifting weights in a gym, muscular, sweat, dramatic shadows, fitness photography
a musician playing guitar on a small stage, warm spotlight, crowd in the background, concert
a farmer standing in a wheat field, straw hat, weathered face, overcast sky, environmental portrait
a woman with long black hair wearing a kimono in kyoto, cherry blossoms, traditional, serene
a man with glasses typing on a laptop, modern office, morning light, depth of field
a grandmother and her grandson baking cookies, kitchen, smiles, warm tones, family photo
a model posing for a fashion magazine cover, vogue style, studio, dramatic makeup, high fashion
a firefighter in full gear, smoke, heroic, low angle shot, gritty, realistic
a student studying in a library, stacks of books, quiet, soft window light, medium shot
a surfer carrying a surfboard, wet hair, ocean waves, sunny day, tan skin
a painter working on a canvas in her studio, paint splashes, creative, natural light
a hiker on a mountain summit, backpack, arms raised, epic landscape, clouds below
best quality, masterpiece, ultra detailed, 8k, raw photo, realistic, perfect anatomy, beautiful eyes
worst quality, low quality, blurry, deformed hands, extra fingers, bad anatomy, watermark, text
(bust shot:1.2), (masterpiece), [blurry], (((detailed face))), (smile:0.8), (looking at viewer:1.1)
she's happy, he'll come, they're here, we've seen it, I'm ready, you'd like it, it isn't there, don't stop
the naïve café owner's résumé, a crème brûlée, jalapeño, façade, déjà vu, über, smörgåsbord, fiancée
東京の女性の写真, 笑顔, 美しい, 肖像, 北京的男人, 照片, 人像摄影, 서울의 여자, 사진
numbers 1 2 3 10 24 35mm 50mm 85mm f/1.8 iso 100 1/250s 4k 8k 1920x1080 2024 year old
"""

STDLIB_MODULES = [
    "argparse", "collections", "json", "os", "re", "string", "textwrap", "functools", "itertools", "pathlib",
    "shutil", "subprocess", "tempfile", "threading", "unittest", "logging", "datetime", "calendar", "random",
    "statistics", "decimal", "fractions", "heapq", "bisect", "difflib", "csv", "zipfile", "tarfile", "email",
    "http.client", "urllib.parse", "socket", "selectors", "asyncio", "contextlib", "dataclasses", "enum", "typing",
    "inspect", "pickle", "copy", "pprint", "doctest", "hashlib", "hmac", "secrets", "base64", "struct", "codecs",
]


def corpus_lines():
    """Prompt text (counted 20 times, it is what the tokenizer is for), then the module docstrings (of this
    interpreter as it starts: run this file on its own, since other imports add attributes to these modules)."""
    warnings.simplefilter("ignore", DeprecationWarning)
    lines = [line for line in PROMPTS.strip().split("\n")] * 20
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""]
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and getattr(obj, "__module__", None) == module.__name__:
                docs.append(doc)
        for doc in docs:
            lines.extend(doc.split("\n"))
    return lines


def word_counts(lines):
    byte_encoder = bytes_to_unicode()
    counts = collections.Counter()
    for line in lines:
        text = " ".join(line.split()).lower()
        for token in CLIP_PATTERN.findall(text):
            symbols = [byte_encoder[b] for b in token.encode("utf-8")]
            symbols[-1] += "</w>"
            counts[tuple(symbols)] += 1
    return counts


def train_bpe(counts, num_merges, base_vocab):
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair), skipping pairs whose
    concatenation is already a token. Pair counts are updated incrementally over the words that contain the pair."""
    words = [list(w) for w in counts]
    freqs = [counts[w] for w in counts]
    pair_counts = collections.Counter()
    where = collections.defaultdict(set)
    for i, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += freqs[i]
            where[(a, b)].add(i)
    vocab = set(base_vocab)
    merges = []
    while len(merges) < num_merges:
        candidates = [(-c, p) for p, c in pair_counts.items() if c > 0 and p[0] + p[1] not in vocab]
        if not candidates:
            break
        _, best = min(candidates)
        merged = best[0] + best[1]
        merges.append(best)
        vocab.add(merged)
        for i in sorted(where.pop(best, ())):
            w = words[i]
            for a, b in zip(w, w[1:]):
                pair_counts[(a, b)] -= freqs[i]
            new = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == best[0] and w[j + 1] == best[1]:
                    new.append(merged)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            words[i] = new
            for a, b in zip(new, new[1:]):
                pair_counts[(a, b)] += freqs[i]
                where[(a, b)].add(i)
        pair_counts.pop(best, None)
    return merges


def build(out_dir, num_merges):
    symbols = list(bytes_to_unicode().values())
    base = symbols + [s + "</w>" for s in symbols]
    merges = train_bpe(word_counts(corpus_lines()), num_merges, base)
    tokens = base + [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(tokens)) == len(tokens), "duplicate vocabulary entries"
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return len(tokens), len(merges)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--merges", type=int, default=2500)
    args = parser.parse_args()
    print(build(args.out_dir, args.merges))
