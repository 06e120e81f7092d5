"""Single-thread GEMV microbenchmark of the integer weight kernels (not a test):
ns per 256-weight super-block of a cache-resident matrix, per ISA and token count.

    PYTHONPATH=<checkout> python bench/lowbit_gemv.py [--types MXFP4,Q2_K,IQ2_XXS]
                                                      [--isas avx512,avx2] [--tokens 1,2,3]
                                                      [--dram [--threads 2] [--mib 256]]

The matrix ([512 x 4096] by default, 0.5-1 MiB) stays in L2, so this measures
the kernel's decode + dot work, not memory: a GEMV is memory-bound when this
time is below (super-block bytes) / (read bandwidth per thread). The weights
are random bytes with sane scales (bench/kernels.py make_weight); best of
--rounds runs of `reps` calls each, timed in this thread's CPU time (the
kernel runs on the calling thread), so other processes on a shared host
lengthen the wall time but not the figure.

--dram: as a prefill meets an expert instead: [2048 x 4096] matrices cycled
through --mib (256) MiB of copies, so the weights come from DRAM (where the L3
holds 256 MiB, a 300 MB one on a Xeon, give more: --mib 1024), on --threads threads,
ns of wall time per super-block (best of --rounds passes over all copies). Where
the kernel path changes with the token count (quant/matmul.cpp own_gemv_avx512:
a type's GEMV up to _core.lane_gemm_min_tokens, the lane GEMM from there), run
it against two builds to compare the paths.
"""

import argparse
import time

import numpy as np

from pyv4 import _core

from kernels import BLOCK, make_weight


def cpu_seconds(type_name, raw, rows, cols, x, reps):
    """This thread's CPU seconds per call (quant_matmul_time makes reps + 1 calls)."""
    t0 = time.thread_time()
    _core.quant_matmul_time(type_name, raw, rows, cols, x, 1, reps, 1, "auto")
    return (time.thread_time() - t0) / (reps + 1)


def dram_seconds(type_name, rows, cols, n, threads, rounds, mib, rng):
    """Wall seconds per call over mib MiB of copies cycled from DRAM (best of rounds passes)."""
    bs, bb = BLOCK[type_name]
    copies = max(1, (mib << 20) // (rows * cols // bs * bb))
    raw = make_weight(type_name, rows, cols, copies, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    return min(_core.quant_matmul_time(type_name, raw, rows, cols, x, threads, copies, copies, "auto")
               for _ in range(rounds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="MXFP4,Q4_K,Q2_K,Q3_K,IQ2_XXS,IQ4_XS")
    ap.add_argument("--isas", default="avx512,avx2")
    ap.add_argument("--tokens", default="1,2,3")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--dram", action="store_true", help="[2048x4096] from DRAM, wall time, --threads")
    ap.add_argument("--threads", type=int, default=2, help="with --dram")
    ap.add_argument("--mib", type=int, default=256, help="with --dram: MiB of copies cycled")
    args = ap.parse_args()
    if args.dram:
        args.rows = 2048
    rng = np.random.default_rng(0)
    _core.set_compute_mode("fast")
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.dram:
        print(f"# wall ns per 256 weights ({args.threads} threads, [{args.rows}x{args.cols}] cycled from DRAM through {args.mib} MiB), "
              f"best of {args.rounds} passes")
    else:
        print(f"# ns per 256 weights (1 thread, [{args.rows}x{args.cols}] cache-resident), "
              f"best of {args.rounds} x {args.reps} calls")
    print(f"{'isa':7s} {'type':8s} {'B/256':>6s} " + " ".join(f"{'n=' + str(n):>7s}" for n in tokens))
    for isa in args.isas.split(","):
        if not _core.isa_supported(isa):
            print(f"# {isa}: not supported here")
            continue
        _core.set_isa(isa)
        for t in args.types.split(","):
            raw = None if args.dram else make_weight(t, args.rows, args.cols, 1, rng)
            bs, bb = BLOCK[t]
            nsb = args.rows * args.cols / 256
            cells = []
            for n in tokens:
                if args.dram:
                    sec = dram_seconds(t, args.rows, args.cols, n, args.threads, args.rounds, args.mib, rng)
                else:
                    x = rng.standard_normal((n, args.cols)).astype(np.float32)
                    sec = min(cpu_seconds(t, raw, args.rows, args.cols, x, args.reps)
                              for _ in range(args.rounds))
                cells.append(f"{sec / nsb * 1e9:7.2f}")
            print(f"{isa:7s} {t:8s} {256 // bs * bb:6d} " + " ".join(cells), flush=True)
    _core.set_isa("auto")


if __name__ == "__main__":
    main()
