"""The routed experts' share of one decode step, per expert weight type (issue #16).

    PYTHONPATH=<checkout> python bench/experts_decode.py [--threads 2] [--steps 40]
                                                         [--configs MXFP4,Q2_K,IQ2_XXS,q2]
                                                         [--experts 24]

One decode step of a V4-Flash layer runs 6 routed experts on 1 token, as the
model does (csrc/model/moe.cpp): one matmul_many with every gate and up product
([2048x4096], sharing one x), then one with the 6 downs ([4096x2048], each its
own x). N = --experts (24) are stored and step i uses experts 6k..6k+5 with
k = i mod N/6, so the ~100-300 MB of weights come from DRAM as in a model; where
the L3 keeps 24 experts of a 2-bit type (300 MB on a 5th-gen Xeon), store more
(--experts 96). The configurations take turns step by step, so a busy spell of
a shared host hits them alike.
Configurations: one integer weight type (bench/kernels.py) for all three matrices, or "q2" (gate/up IQ2_XXS,
down Q2_K: the q2 recipe of `pyv4 convert`). MXFP4 uses the row layout a
loaded model uses (split on AVX-512, quant/split_layout.h). Reported per
configuration: ms per step (best and median wall time of --steps, after one
warm-up cycle); the process's CPU time per step divided by the threads (a
second pass, each configuration's steps back to back, read while the pool's
worker is parked: see cpu_per_step; on a quiet host about the wall time, on a
shared one what the step costs while its threads run); the weight bytes a step reads and their
GB/s at that CPU time, and the speed-up over the first configuration on both
times; then the weight GB/s at the median wall time and its ratio to the read
bandwidth (all threads; measured before and after the whole run, the mean of
the two): issue #16's "q2 GEMV >= 80 % of the read bandwidth" for the
products a decode step runs, as the model batches them.
"""

import argparse
import os
import statistics
import time

import numpy as np

from pyv4 import _core

from kernels import BLOCK, INT_TYPES, LOAD_ONLY_TYPES, make_weight

GATE = (2048, 4096)  # rows (out), cols (in)
DOWN = (4096, 2048)
ACTIVE = 6


def layout_for(type_name):
    split = type_name == "MXFP4" and _core.active_isa() == "avx512"
    return "split" if split else "ggml"


def aligned_copy(a):
    """a copied to a 64-byte aligned buffer (the split layout's loads are aligned)."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = -buf.ctypes.data % 64
    out = buf[off:off + a.nbytes].reshape(a.shape)
    out[...] = a
    return out


def expert_weights(type_name, shape, n_experts, rng):
    """n_experts (type, raw, rows, cols, layout) tuples of one matrix kind."""
    rows, cols = shape
    layout = layout_for(type_name)
    out = []
    for _ in range(n_experts):
        raw = make_weight(type_name, rows, cols, 1, rng)
        if layout == "split":
            raw = aligned_copy(_core.quant_split(type_name, raw, rows, cols))
        out.append((type_name, raw, rows, cols, layout))
    return out


def step_bytes(types):
    total = 0
    for t, (rows, cols) in zip(types, (GATE, GATE, DOWN)):
        bs, bb = BLOCK[t]
        total += ACTIVE * rows * cols // bs * bb
    return total


def make_step(types, n_experts, rng):
    """A function running decode step i of one configuration."""
    gate = expert_weights(types[0], GATE, n_experts, rng)
    up = expert_weights(types[1], GATE, n_experts, rng)
    down = expert_weights(types[2], DOWN, n_experts, rng)
    x = rng.standard_normal((1, GATE[1])).astype(np.float32)
    hs = [rng.standard_normal((1, DOWN[1])).astype(np.float32) for _ in range(ACTIVE)]

    def step(i, threads):
        e0 = ACTIVE * (i % (n_experts // ACTIVE))
        sel = range(e0, e0 + ACTIVE)
        gu = [w for e in sel for w in (gate[e], up[e])]
        _core.quant_matmul_many(gu, [x] * len(gu), threads)
        _core.quant_matmul_many([down[e] for e in sel], hs, threads)

    return step


def measure(steps_by_config, threads, steps, n_experts):
    """Wall seconds per step of every configuration, the configurations taking
    turns step by step (so a busy spell of the host hits them alike)."""
    wall = {name: [] for name in steps_by_config}
    for i in range(steps + n_experts // ACTIVE):
        for name, step in steps_by_config.items():
            t0 = time.perf_counter()
            step(i, threads)
            if i >= n_experts // ACTIVE:  # the first cycle pages the weights in
                wall[name].append(time.perf_counter() - t0)
    return wall


def cpu_per_step(step, threads, steps):
    """CPU seconds per step and thread of one configuration, its steps back to
    back. Linux brings a running worker thread's CPU time up to date only at a
    scheduler tick or a switch, so a reading while the pool's worker runs or
    spins is off by up to a tick, more than a step lasts: on the Zen 4 host of
    RESULTS (2026-12-06 22:00) per-step readings put q2 13 % under its wall time
    and MXFP4 13 % over in their median, and up to 10 % off in their mean. Read
    here only after the worker has parked (its spin is ~30 us), the readings are
    exact: both configurations then came within 1 % of their wall times."""
    time.sleep(0.01)
    c0 = time.process_time()
    for i in range(steps):
        step(i, threads)
    time.sleep(0.01)
    return (time.process_time() - c0) / steps / threads


CONFIGS = {**{t: (t,) * 3 for t in INT_TYPES + LOAD_ONLY_TYPES},
           "q2": ("IQ2_XXS", "IQ2_XXS", "Q2_K")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--configs", default="MXFP4,Q2_K,IQ2_XXS,q2")
    ap.add_argument("--experts", type=int, default=24,
                    help="experts stored per configuration (a multiple of 6); raise it where the "
                         "L3 holds 24 experts of a 2-bit type (a 300 MB L3 on a Xeon)")
    args = ap.parse_args()
    if args.experts < ACTIVE or args.experts % ACTIVE:
        ap.error(f"--experts must be a positive multiple of {ACTIVE}")
    names = args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {sorted(CONFIGS)}")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(0)
    print(f"# experts' share of a decode step: {ACTIVE} of {args.experts} experts, gate/up "
          f"[{GATE[0]}x{GATE[1]}] + down [{DOWN[0]}x{DOWN[1]}], 1 token, isa={_core.active_isa()}, "
          f"threads={args.threads}, {args.steps} steps")
    print("# load average at start: %.2f %.2f %.2f" % os.getloadavg())
    bw0 = _core.read_bandwidth(512 << 20, args.threads, 3)
    steps = {name: make_step(CONFIGS[name], args.experts, rng) for name in names}
    wall = measure(steps, args.threads, args.steps, args.experts)
    cpu = {name: cpu_per_step(step, args.threads, args.steps) for name, step in steps.items()}
    bw1 = _core.read_bandwidth(512 << 20, args.threads, 3)
    bw = (bw0 + bw1) / 2
    print(f"{'config':8s} {'gate/up/down':24s} {'MB/step':>8s} {'best ms':>8s} {'median ms':>9s} "
          f"{'cpu ms':>7s} {'GB/s':>6s} {'speed-up wall/cpu':>17s} {'wall GB/s':>9s} {'/read':>6s}")
    base = None
    for name in names:
        types = CONFIGS[name]
        best, med, c = min(wall[name]), statistics.median(wall[name]), cpu[name]
        mb = step_bytes(types) / 1e6
        base = base or (med, c)
        print(f"{name:8s} {'/'.join(types):24s} {mb:8.1f} {best * 1e3:8.2f} {med * 1e3:9.2f} "
              f"{c * 1e3:7.2f} {mb / 1e3 / c:6.1f} {base[0] / med:8.2f} {base[1] / c:8.2f} "
              f"{mb / 1e3 / med:9.1f} {mb / 1e3 / med / bw:6.2f}", flush=True)
    print(f"# read bandwidth ({args.threads} threads): {bw0:.1f} GB/s before, {bw1:.1f} after")
    print("# load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
