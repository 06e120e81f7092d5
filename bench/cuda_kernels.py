"""Short GPU kernel benchmark (not a test), run by bench/gpu_check.sh after the
CUDA tests:

    PYTHONPATH=<site> python bench/cuda_kernels.py [--rows 32768] [--cols 4096]

GEMV (1 token, the decode path): device time per call and GB/s of weight
bytes read, on a [rows x cols] matrix large enough to stream from HBM rather
than L2 (32768 x 4096: 71 MB as MXFP4, 512 MB as F32), and its fraction of the
device-to-device copy bandwidth (reads + writes) measured in the same run.
GEMM (prefill, 128 and 512 tokens on [4096 x 4096]): TFLOP/s (2 flops per
weight x token); the integer types run on int8 tensor cores, so their 512-token
rate is also given as a fraction of the card's nominal dense int8 peak (ops per
SM per clock of its architecture x SMs x peak clock). Weights are random codes
with sane scales (bench/kernels.py make_weight); device time from CUDA events
(cuda_matmul_time), weights and x already on the GPU.
"""

import argparse

import numpy as np

from kernels import BLOCK, INT_TYPES, make_weight  # bench/kernels.py, the CPU benchmark
from pyv4 import _core

# Dense int8 tensor-core ops per SM per clock, by compute capability: NVIDIA's
# published dense peaks / SMs / boost clock (A100 624 TOPS, RTX 3090 284, RTX
# 4090 661, H100 SXM 1979, RTX 5090 838).
INT8_OPS_PER_SM_CLOCK = {(8, 0): 4096, (8, 6): 2048, (8, 9): 2048, (9, 0): 8192, (12, 0): 2048}


def int8_peak_tops(info: dict) -> float | None:
    per = INT8_OPS_PER_SM_CLOCK.get(tuple(info["compute_capability"]))
    return per * info["sm_count"] * info["clock_khz"] * 1e3 / 1e12 if per else None


def copy_bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s, reads + writes (2 x bytes copied)."""
    return 2 * nbytes / _core.cuda_copy_time(nbytes, reps) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    ok, device = _core.cuda_available()
    if not ok:
        raise SystemExit(f"no CUDA device: {device}")
    info = _core.cuda_device_info()
    peak = int8_peak_tops(info)
    copy = copy_bandwidth_gbs()
    print(f"device: {device}, {info['sm_count']} SMs at {info['clock_khz'] / 1e6:.2f} GHz; device-to-device copy "
          f"{copy:.0f} GB/s; nominal dense int8 peak " + (f"{peak:.0f} TOPS" if peak else "unknown for this architecture"))
    rng = np.random.default_rng(0)
    print(f"GEMV 1 token [{args.rows} x {args.cols}]                 GEMM [4096 x 4096]")
    print(f"{'type':7} {'us/call':>9} {'GB/s':>8} {'of copy':>8}   {'128 tok TFLOP/s':>16} {'512 tok TFLOP/s':>16} "
          f"{'of int8 peak':>13}")
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
        frac = f"{tf[1] / peak:13.3f}" if peak and t in INT_TYPES else f"{'-':>13}"
        print(f"{t:7} {sec * 1e6:9.1f} {gbs:8.1f} {gbs / copy:8.2f}   {tf[0]:16.2f} {tf[1]:16.2f} {frac}", flush=True)


if __name__ == "__main__":
    main()
