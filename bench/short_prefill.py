"""Prefill time of short prompts (a chat turn), pyv4 only (not a test): ms to
evaluate the first n tokens of a fixed random prompt in a fresh session, best of
--rounds, for each n.

    PYTHONPATH=<checkout> python bench/short_prefill.py MODEL.gguf [--tokens 8,16,32,48]

With few tokens each routed expert gets a handful (a wide file with 32 experts and
top-6 at 16-48 tokens gets 3-9 per expert, as V4-Flash's 256 experts do at 128-384),
the regime of the low-bit types' grouped GEMVs (quant/matmul.cpp own_gemv_avx512).
Run it against two builds, alternated, to compare them.
"""

import argparse
import time

import numpy as np

import pyv4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", default="8,16,32,48")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    ns = [int(v) for v in args.tokens.split(",")]
    m = pyv4.Model(args.model, threads=args.threads, resident=True)
    prompt = np.random.default_rng(0).integers(100, m.n_vocab, size=max(ns)).tolist()
    print(f"# ms to prefill n tokens ({args.threads} threads), best of {args.rounds}")
    for n in ns:
        best = float("inf")
        for _ in range(args.rounds):
            s = m.new_session()
            t = time.perf_counter()
            s.eval(prompt[:n])
            best = min(best, time.perf_counter() - t)
        print(f"{n:5d} tokens {best * 1e3:8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
