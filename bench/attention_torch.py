"""Times F.scaled_dot_product_attention forward and backward on the U-Net's attention shapes, as diffusers'
AttnProcessor2_0 calls it (q, k, v made (B, heads, tokens, d) by a transpose of the tokens-major projections), and
prints one JSON line per shape like `hgdpo bench attention`.

Usage: attention_torch.py --threads T --iters K B,N,NK,H,D [B,N,NK,H,D ...]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=9)
    ap.add_argument("shapes", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for shape in args.shapes:
        B, N, Nk, H, d = map(int, shape.split(","))
        make = lambda n: torch.randn(B, n, H, d).transpose(1, 2).detach().requires_grad_()
        q, k, v = make(N), make(Nk), make(Nk)
        dout = torch.randn(B, H, N, d)
        fwd, bwd = [], []
        for it in range(args.iters + 1):
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter()
            o = F.scaled_dot_product_attention(q, k, v)
            t1 = time.perf_counter()
            o.backward(dout)
            t2 = time.perf_counter()
            if it > 0:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
        fwd.sort()
        bwd.sort()
        print(json.dumps({"impl": f"pytorch-{torch.__version__}", "batch": B, "tokens": N, "keys": Nk, "heads": H,
                          "head_dim": d, "threads": args.threads,
                          "forward_ms": fwd[len(fwd) // 2] * 1e3, "backward_ms": bwd[len(bwd) // 2] * 1e3,
                          "forward_min_ms": fwd[0] * 1e3, "backward_min_ms": bwd[0] * 1e3}))


if __name__ == "__main__":
    main()
