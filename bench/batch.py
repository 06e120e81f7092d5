"""Batched decoding benchmark (not a test): aggregate decode tokens/s of 1, 2,
4 and 8 concurrent sessions stepped together through `Model.eval_batch`.

    PYTHONPATH=<install> python bench/batch.py [--threads 2] [--rounds 3] [--steps 16]

The 4-layer V4-Flash-width file of bench/make_wide.py (sliding, CSA, HCA, CSA;
32 MXFP4 experts, real vocabulary), weights resident. Each stream first
prefills its own 64-token prompt; then every step feeds each stream one
token. The stream counts are measured in alternation, round after round, in
one process, so the ratios compare like with like on a shared machine; each
count's median step time over the rounds is reported. Why batching pays: a
decode step of one stream reads every attention/shared/head matrix for one
row; with k streams the same bytes serve k rows, and routed experts are read
once for all rows routed to them (with 32 experts and top-6, 8 streams hit
~20 distinct experts, not 48).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

COUNTS = (1, 2, 4, 8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="decode steps per measurement")
    p.add_argument("--prompt", type=int, default=64, help="prefill tokens per stream")
    p.add_argument("--model", type=Path, default=None, help="default: the 4-layer wide mxfp4 file")
    a = p.parse_args(argv)

    import make_wide
    import pyv4

    path = a.model or make_wide.ensure(4, 32, "mxfp4")
    model = pyv4.Model(path, threads=a.threads, resident=True)
    rng = np.random.default_rng(0)
    times: dict[int, list[float]] = {k: [] for k in COUNTS}
    for _ in range(a.rounds):
        for k in COUNTS:
            sessions = [model.new_session() for _ in range(k)]
            model.eval_batch([(s, rng.integers(0, model.n_vocab, a.prompt)) for s in sessions])
            nxt = [int(t) for t in rng.integers(0, model.n_vocab, k)]
            t0 = time.perf_counter()
            for _ in range(a.steps):
                logits = model.eval_batch([(s, [t]) for s, t in zip(sessions, nxt)])
                nxt = [int(np.argmax(l)) for l in logits]
            times[k].append((time.perf_counter() - t0) / a.steps)
    one = float(np.median(times[1]))
    print(f"model: {path.name}, threads {a.threads}, {a.rounds} rounds x {a.steps} steps, "
          f"prompt {a.prompt} tokens per stream\n")
    print("| streams | ms / step | aggregate tok/s | per-stream tok/s | vs 1 stream |")
    print("|---|---|---|---|---|")
    for k in COUNTS:
        t = float(np.median(times[k]))
        print(f"| {k} | {t * 1e3:.1f} | {k / t:.1f} | {1 / t:.1f} | {k / t / (1 / one):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
