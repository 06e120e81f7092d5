"""Short GPU kernel benchmark (not a test), run by bench/gpu_check.sh after the
CUDA tests:

    PYTHONPATH=<site> python bench/cuda_kernels.py [--rows 32768] [--cols 4096]

GEMV (1 token, the decode path): device time per call and GB/s of weight
bytes read, on a [rows x cols] matrix large enough to stream from HBM rather
than L2 (32768 x 4096: 71 MB as MXFP4, 512 MB as F32). GEMM (prefill, 128 and
512 tokens on [4096 x 4096]): TFLOP/s (2 flops per weight x token). Weights
are random codes with sane scales (bench/kernels.py make_weight); device
time from CUDA events (cuda_matmul_time), weights and x already on the GPU.
"""

import argparse

import numpy as np

from kernels import BLOCK, make_weight  # bench/kernels.py, the CPU benchmark
from pyv4 import _core


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    ok, device = _core.cuda_available()
    if not ok:
        raise SystemExit(f"no CUDA device: {device}")
    print(f"device: {device}")
    rng = np.random.default_rng(0)
    print(f"GEMV 1 token [{args.rows} x {args.cols}]        GEMM [4096 x 4096]")
    print(f"{'type':6} {'us/call':>9} {'GB/s':>8}   {'128 tok TFLOP/s':>16} {'512 tok TFLOP/s':>16}")
    for t in BLOCK:
        raw = make_weight(t, args.rows, args.cols, 1, rng)
        x1 = rng.standard_normal((1, args.cols)).astype(np.float32)
        sec = _core.cuda_matmul_time(t, raw, args.rows, args.cols, x1, args.reps, "gemv")
        gbs = raw.nbytes / sec / 1e9
        del raw
        sq = make_weight(t, 4096, 4096, 1, rng)
        tf = []
        for n in (128, 512):
            x = rng.standard_normal((n, 4096)).astype(np.float32)
            s = _core.cuda_matmul_time(t, sq, 4096, 4096, x, max(3, args.reps // 4), "gemm")
            tf.append(2.0 * 4096 * 4096 * n / s / 1e12)
        print(f"{t:6} {sec * 1e6:9.1f} {gbs:8.1f}   {tf[0]:16.2f} {tf[1]:16.2f}", flush=True)


if __name__ == "__main__":
    main()
