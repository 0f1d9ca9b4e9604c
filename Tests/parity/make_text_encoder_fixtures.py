#!/usr/bin/env python3
"""Writes the committed tokenizer / text-encoder parity fixtures for Tests/TextEncoderTests (run once; `swift test`
never needs Python).

    Tests/parity/setup_venv.sh && .venv-fixtures/bin/python Tests/parity/make_text_encoder_fixtures.py [--remake-vocab]

The reference is what the fixture venv holds: transformers 5.24 (its CLIPTokenizer is the `tokenizers`-backed one,
the same pipeline as transformers 4's CLIPTokenizerFast; there is no slow tokenizer any more, and ftfy is not
installed, which transformers 5 never uses anyway) and diffusers 0.42, which loads that CLIPTokenizer and
CLIPTextModel for StableDiffusionPipeline. The script checks those versions.

The vocabulary is a small CLIP-layout BPE vocabulary made by clip_vocab.py (no real CLIP vocabulary can be
downloaded here); it is committed and only rebuilt with --remake-vocab. Everything else is seeded; a rerun rewrites
every file byte for byte.

Outputs in Tests/TextEncoderTests/Fixtures/:

  pipeline/            an SD 1.x-style pipeline folder: model_index.json, tokenizer/ (vocab.json, merges.txt,
                       tokenizer_config.json and special_tokens_map.json as SD 1.5 ships them: pad = <|endoftext|>),
                       text_encoder/ (config.json, model.safetensors): a random-weight CLIPTextModel with quick_gelu,
                       hidden 32, 2 layers, 4 heads, saved by transformers 5 (keys without `text_model.`).
  pipeline_gelu/       an SD 2.x-style one: tokenizer/ with pad_token "!" (id 0) set in special_tokens_map.json only
                       (tokenizer_config.json still says <|endoftext|>: the map wins, as in transformers);
                       text_encoder/ with hidden_act gelu, hidden 48, 3 layers, 4 heads, layer_norm_eps 1e-6, weights
                       only as model.fp16.safetensors with the `text_model.` prefix and `text_model.embeddings.position_ids`
                       (int64), as transformers 4 wrote Stable Diffusion's files. The script checks that
                       CLIPTextModel.from_pretrained(…, variant="fp16") loads it with no missing or unexpected keys.
  */io.safetensors     prompts (metadata, JSON list), input_ids (N,77) int64 from
                       tokenizer(prompts, padding="max_length", max_length=77, truncation=True), last_hidden_state
                       (N,77,D) float32. pipeline/ also has the weighted encoding: weighted_input_ids,
                       token_weights (N,77) and weighted_last_hidden_state (the web UI's emphasis, see below);
                       pipeline_gelu/ also has clip_skip_1 = final_layer_norm(hidden_states[-2]) (diffusers' clip_skip=1).
                       Hidden states are computed in float64 from the stored (float32 / float16) weights, so a Swift
                       float32 implementation is compared with the exact answer. The float32 transformers model is
                       also run and must agree within 1e-5.
  tokenizer_cases.json [{"prompt", "ids" (BOS … EOS, no truncation), "ids_77" (pipeline/ tokenizer, padded and
                       truncated to 77), "ids_77_sd2" (pipeline_gelu/ tokenizer, pad "!")}] on tricky prompts.
  weighting_cases.json [{"prompt", "fragments" [[text, weight]], "ids", "weights"}]: the web UI's
                       parse_prompt_attention rules (implemented below from its documentation and behaviour), each
                       fragment tokenized alone by the pipeline/ tokenizer, BOS/EOS/padding weight 1, truncated to 77.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import torch

torch.set_num_threads(2)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "Tests", "TextEncoderTests", "Fixtures")
VOCAB_DIR = os.path.join(FIXTURES, "pipeline", "tokenizer")

# As Stable Diffusion 1.5's tokenizer/ (openai/clip-vit-large-patch14).
SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "<|endoftext|>",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True,
                  "rstrip": False, "single_word": False},
}
SD15_SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "pad_token": "<|endoftext|>",
    "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
}
SD2_SPECIAL_TOKENS_MAP = dict(SD15_SPECIAL_TOKENS_MAP, pad_token="!")

LONG_PROMPT = (
    "a highly detailed professional photograph of a smiling young woman with long wavy brown hair and green eyes, "
    "wearing a white linen shirt and a golden necklace, standing in a sunlit wheat field at golden hour, soft rim "
    "light, shallow depth of field, 85mm lens, f/1.8, natural skin texture, freckles, film grain, kodak portra 400, "
    "award winning, trending, masterpiece, best quality, ultra realistic, 8k, sharp focus, bokeh background"
)

TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "A PHOTO of a CAT!!! Really?!",
    "portrait of a woman, (bust shot:1.2), [blurry], ((masterpiece)), \\(literal\\)",
    "she's happy, they're here; we'll see, I'd say, you've got it, I'm fine, isn't it",
    "SHE'S HERE, IT'LL RAIN, 's at the start, !'s and ''s",
    "rock'n'roll ''quoted'' 'single' \"double\" don't won't can't",
    "café crème brûlée naïve résumé Ångström jalapeño façade",
    "decomposed: cafe\u0301 and q\u0301 and a\u030a",
    "東京の女性の写真, 北京的男人, 서울의 여자",
    "emoji 😀👍🏽 ❤️ 🇯🇵 👩‍👩‍👧",
    "digits 1234567890 3.14 1,000 85mm f/1.8 1920x1080 2024",
    "multiple    spaces\tand\ttabs\nand newlines\r\n  here  ",
    "   leading and trailing   ",
    "",
    "ΣΑΣ ΟΔΟΣ İstanbul ǅ Straße ﬁne",
    "½ ² Ⅻ ① ١٢٣ ३",
    "zero\u200bwidth no\u00a0break\u3000ideographic\u2028line \u0085nel",
    "control\x00chars\x1c\x1f\x7f\x07 here",
    "<|startoftext|>special<|endoftext|> tokens <|endoftext|>",
    "<|STARTOFTEXT|> upper case bos",
    "wow! amazing!! hi!there (sd2 pads with !)",
    "hello-world foo_bar baz/qux a+b=c @user #tag $100 50% ~tilde `code` {braces} <angle> |pipe| ^caret",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "Привет мир Ελληνικά عربى हिन्दी ไทย",
    "back\\slash and trailing \\",
    "....,,,;;;:::!!!???---___",
    LONG_PROMPT,
    LONG_PROMPT.replace(" ", ",") + "!!",
]

ENCODER_PROMPTS = [
    "a photo of a young woman, bust shot, smiling",
    "",
    "portrait of an old man with a grey beard, cinematic lighting!",
    LONG_PROMPT,
]

WEIGHTING_PROMPTS = [
    "normal text",
    "an (important) word",
    "(unbalanced",
    "\\(literal\\]",
    "(unnecessary)(parens)",
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    "(bust shot:1.2), a photo of a young woman, (smiling:0.8)",
    "((masterpiece)), [[low quality]], (detailed face: 1.3 ), \\(not weighted\\)",
    "unbalanced) and] closers, a:b, (x:y), (a:1e3), :1.5) outside",
    "[(nested:2)] and ([mixed])",
    "back\\slash and \\\\ escaped",
    "(" + LONG_PROMPT + ":1.1), (tail:1.5)",
    "",
]


# MARK: - Web UI prompt weighting (reference)

# The web UI's tokens, tried in this order at each position (modules/prompt_parser.py, re_attention).
ATTENTION_TOKENS = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:"
)


def parse_prompt_attention(prompt):
    """(text, weight) fragments of a prompt: ( ) ×1.1, [ ] ÷1.1 (× 1/1.1), (x:w) ×w, nesting multiplies, unclosed
    brackets run to the end, escapes give the literal character, equal neighbours are merged."""
    fragments = []
    open_round, open_square = [], []

    def scale(start, factor):
        for f in fragments[start:]:
            f[1] *= factor

    for match in ATTENTION_TOKENS.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(fragments))
        elif token == "[":
            open_square.append(len(fragments))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), 1.1)
        elif token == "]" and open_square:
            scale(open_square.pop(), 1 / 1.1)
        else:
            fragments.append([token, 1.0])
    for start in open_round:
        scale(start, 1.1)
    for start in open_square:
        scale(start, 1 / 1.1)
    if not fragments:
        fragments = [["", 1.0]]
    merged = [fragments[0]]
    for f in fragments[1:]:
        if f[1] == merged[-1][1]:
            merged[-1][0] += f[0]
        else:
            merged.append(f)
    return merged


def weighted_tokens(tokenizer, prompt):
    ids, weights = [], []
    fragments = parse_prompt_attention(prompt)
    for text, weight in fragments:
        t = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        ids += t
        weights += [weight] * len(t)
    n = tokenizer.model_max_length
    ids, weights = ids[: n - 2], weights[: n - 2]
    ids = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
    weights = [1.0] + weights + [1.0]
    ids += [tokenizer.pad_token_id] * (n - len(ids))
    weights += [1.0] * (n - len(weights))
    return fragments, ids, weights


def emphasis(z, weights):
    """The web UI's EmphasisOriginal, per prompt: z·w, then rescaled to the unweighted mean (float64 here)."""
    out = []
    for zi, wi in zip(z, weights):
        before = zi.mean()
        zi = zi * wi[:, None]
        out.append(zi * (before / zi.mean()))
    return torch.stack(out)


# MARK: - Files

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=True)
        f.write("\n")


def canonicalize_header(path):
    """Rewrites the safetensors header with `__metadata__` keys sorted (safetensors writes them in Rust HashMap
    order), so a rerun is byte-identical."""
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


def model_index(path):
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, "model_index.json"), {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    })


def tokenizer_folder(path, special_tokens_map):
    os.makedirs(path, exist_ok=True)
    if os.path.abspath(path) != os.path.abspath(VOCAB_DIR):
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(VOCAB_DIR, f), os.path.join(path, f))
    write_json(os.path.join(path, "tokenizer_config.json"), SD15_TOKENIZER_CONFIG)
    write_json(os.path.join(path, "special_tokens_map.json"), special_tokens_map)
    tok = CLIPTokenizer.from_pretrained(path)
    assert type(tok).__module__ == "transformers.models.clip.tokenization_clip", type(tok)
    assert tok.model_max_length == 77
    return tok


def randomize(model, seed):
    """Non-trivial random weights: matrices N(0, 1/fan_in), embeddings 0.5·N(0,1), biases 0.1·N(0,1), LayerNorm
    weights 1 + 0.1·N(0,1) and biases 0.1·N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "layer_norm" in name and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif "embedding" in name:
                value = 0.5 * noise
            elif p.dim() == 2:
                value = noise / p.shape[1] ** 0.5
            else:
                value = 0.1 * noise
            p.copy_(value.to(p.dtype))


def run(model, ids, clip_skip=None):
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=clip_skip is not None)
        if clip_skip is None:
            return out.last_hidden_state
        return model.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


def text_encoder(folder, config, seed, tok, fp16_prefixed, extra):
    te_dir = os.path.join(folder, "text_encoder")
    os.makedirs(te_dir, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPTextModel(config).eval()
    randomize(model, seed)
    if fp16_prefixed:
        # transformers 4 / Stable Diffusion layout: text_model.* keys plus the position_ids buffer, fp16 variant only.
        state = {"text_model." + k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
        state["text_model.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).unsqueeze(0)
        save_file(state, os.path.join(te_dir, "model.fp16.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(te_dir)
        model, info = CLIPTextModel.from_pretrained(te_dir, variant="fp16", torch_dtype=torch.float32,
                                                    output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    else:
        model.save_pretrained(te_dir)
        model, info = CLIPTextModel.from_pretrained(te_dir, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model = model.eval()
    for f in os.listdir(te_dir):
        if f.endswith(".safetensors"):
            canonicalize_header(os.path.join(te_dir, f))

    ids = tok(ENCODER_PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    exact = model.to(torch.float64)
    tensors = {"input_ids": ids.to(torch.int64), "last_hidden_state": run(exact, ids).to(torch.float32)}
    check32 = run(model.to(torch.float32), ids)
    assert (check32 - tensors["last_hidden_state"]).abs().max() < 1e-5
    exact = model.to(torch.float64)
    for name, fn in extra.items():
        tensors.update(fn(exact, tok))
    model.to(torch.float32)
    path = os.path.join(folder, "io.safetensors")
    save_file(tensors, path, metadata={"prompts": json.dumps(ENCODER_PROMPTS, ensure_ascii=False)})
    canonicalize_header(path)


def weighted_extra(model, tok):
    rows = [weighted_tokens(tok, p) for p in ENCODER_WEIGHTED_PROMPTS]
    ids = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    w = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    z = emphasis(run(model, ids), w)
    return {"weighted_input_ids": ids, "token_weights": w.to(torch.float32),
            "weighted_last_hidden_state": z.to(torch.float32)}


ENCODER_WEIGHTED_PROMPTS = [
    "(bust shot:1.2), a photo of a young woman, [blurry], ((smiling))",
    "a photo of a young woman, bust shot, smiling",
    "(" + LONG_PROMPT + ":0.9)",
]


def clip_skip_extra(model, tok):
    ids = tok(ENCODER_PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    return {"clip_skip_1": run(model, ids, clip_skip=1).to(torch.float32)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--remake-vocab", action="store_true")
    args = parser.parse_args()
    assert transformers.__version__.startswith("5."), transformers.__version__
    os.makedirs(FIXTURES, exist_ok=True)
    if args.remake_vocab or not os.path.exists(os.path.join(VOCAB_DIR, "vocab.json")):
        # In a fresh interpreter: importing torch / transformers adds attributes to standard-library modules, whose
        # docstrings are part of the corpus.
        subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_vocab.py"),
                        VOCAB_DIR, "--merges", "2500"], check=True)

    sd15 = os.path.join(FIXTURES, "pipeline")
    sd2 = os.path.join(FIXTURES, "pipeline_gelu")
    model_index(sd15)
    model_index(sd2)
    tok = tokenizer_folder(os.path.join(sd15, "tokenizer"), SD15_SPECIAL_TOKENS_MAP)
    tok2 = tokenizer_folder(os.path.join(sd2, "tokenizer"), SD2_SPECIAL_TOKENS_MAP)
    assert tok.pad_token_id == tok.eos_token_id and tok2.pad_token == "!" and tok2.pad_token_id == 0
    vocab_size = len(tok.get_vocab())

    cases = []
    for p in TOKENIZER_PROMPTS:
        cases.append({
            "prompt": p,
            "ids": tok(p).input_ids,
            "ids_77": tok(p, padding="max_length", max_length=77, truncation=True).input_ids,
            "ids_77_sd2": tok2(p, padding="max_length", max_length=77, truncation=True).input_ids,
        })
    write_json(os.path.join(FIXTURES, "tokenizer_cases.json"), cases)

    wcases = []
    for p in WEIGHTING_PROMPTS:
        fragments, ids, weights = weighted_tokens(tok, p)
        wcases.append({"prompt": p, "fragments": fragments, "ids": ids, "weights": weights})
    write_json(os.path.join(FIXTURES, "weighting_cases.json"), wcases)

    common = dict(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=1)
    text_encoder(sd15, CLIPTextConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                                      hidden_act="quick_gelu", projection_dim=32, **common),
                 seed=1, tok=tok, fp16_prefixed=False, extra={"weighted": weighted_extra})
    text_encoder(sd2, CLIPTextConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                     hidden_act="gelu", layer_norm_eps=1e-6, projection_dim=48, **common),
                 seed=2, tok=tok2, fp16_prefixed=True, extra={"clip_skip": clip_skip_extra})

    for root, _, files in sorted(os.walk(FIXTURES)):
        for f in sorted(files):
            path = os.path.join(root, f)
            print(f"{os.path.relpath(path, FIXTURES):60s} {os.path.getsize(path):>9d}")


if __name__ == "__main__":
    main()
