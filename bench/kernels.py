"""Kernel benchmark (not a test): GEMV/GEMM throughput of the quantized weight
kernels at DeepSeek-V4-Flash shapes, against the memory read bandwidth measured
in the same run.

    PYTHONPATH=<site> python bench/kernels.py [--threads N] [--quick] [--isa auto]
                                              [--layout auto|ggml|split] [--types Q2_K,IQ2_XXS]

GEMV (1 token): GB/s of weight bytes read per second. Each matrix is stored in
enough copies (>= 256 MiB in all) that every call streams it from DRAM, as in a
real decode step; the read bandwidth (all threads, 512 MiB buffer) is measured
right before and right after each kernel measurement (the host's bandwidth
swings a lot), and the kernel is reported as a fraction of their mean. Beside it,
the same call on one copy repeated ("cached": the matrix stays in the caches
where it fits, the expert shapes on most hosts, not the head), over the same
probe: the kernel's compute ceiling on this host. Where the DRAM ratio is low
and the cached one not much higher, the GEMV is bound by its decode, not by memory.
GEMM (32/128/512 tokens): int8 multiply-adds x2 per second (Gops/s), and the
ratio of tokens/s at 128 tokens to tokens/s of the DRAM-bound GEMV. That ratio
equals Gops/s * (weight bytes per element) / (2 * GEMV GB/s): for 4-bit types
(~0.53-0.56 B/element) a 10x ratio needs ~36 Gops/s per GB/s of read bandwidth.
Next to it: the int8 dot-product peak of this CPU measured in the same run
(_core.int8_peak: independent vpdpbusd zmm chains on all threads), the GEMM's
fraction of it, and the Gops/s a 10x ratio would need given the GEMV measured.
Small batches (4-32 tokens) on an expert's shape, with the weights cycled from
DRAM as in a model's prefill (each routed expert of a 512-token chunk of the real
model sees ~4-15 tokens): Gops/s and weight GB/s. Below lane_min_tokens
(csrc/quant/kernels.h) the quad tiles run, from there on the packed lane GEMM.
--layout: the row layout of Q4_0 / MXFP4 weights; auto (default) is what a loaded
model uses (the split layout of csrc/quant/split_layout.h on AVX-512), ggml the
file's blocks as they are.
"""

import argparse
import datetime
import platform
import statistics

import numpy as np

from pyv4 import _core

BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18),
         "Q4_K": (256, 144), "MXFP4": (32, 17), "Q2_K": (256, 84), "Q3_K": (256, 110),
         "IQ2_XXS": (256, 66), "IQ4_XS": (256, 136), "IQ3_XXS": (256, 98), "IQ2_XS": (256, 74),
         "IQ1_S": (256, 50), "IQ1_M": (256, 56), "Q5_K": (256, 176), "Q6_K": (256, 210),
         "IQ3_S": (256, 110), "IQ2_S": (256, 82), "IQ4_NL": (32, 18)}

SHAPES = [  # name, rows (out), cols (in)
    ("expert w1/w3 [2048x4096]", 2048, 4096),
    ("expert w2 [4096x2048]", 4096, 2048),
    ("wq_b [32768x1024]", 32768, 1024),
    ("wo_b [4096x8192]", 4096, 8192),
    ("head [129280x4096]", 129280, 4096),
]
INT_TYPES = ["Q8_0", "Q4_0", "Q4_K", "MXFP4", "Q2_K", "Q3_K", "IQ2_XXS", "IQ4_XS"]
LOAD_ONLY_TYPES = ["IQ3_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "IQ3_S", "IQ2_S", "Q5_K", "Q6_K", "IQ4_NL"]  # measured when --types names them


def make_weight(type_name, rows, cols, copies, rng):
    """Random raw GGML bytes with sane scales: [rows * copies, row_bytes]."""
    bs, bb = BLOCK[type_name]
    nb = rows * cols // bs * copies
    raw = np.frombuffer(rng.bytes(nb * bb), np.uint8).reshape(nb, bb).copy()
    if type_name in ("Q8_0", "Q4_0", "IQ4_NL"):
        raw[:, :2] = np.array([0.01 if type_name != "IQ4_NL" else 0.001], np.float16).view(np.uint8)
    elif type_name in ("Q4_K", "Q5_K"):
        raw[:, :4] = np.array([0.001, 0.001], np.float16).view(np.uint8)
    elif type_name == "Q6_K":
        raw[:, 208:210] = np.array([0.001], np.float16).view(np.uint8)
    elif type_name == "MXFP4":
        raw[:, 0] = 122
    elif type_name == "Q2_K":
        raw[:, 80:84] = np.array([0.001, 0.001], np.float16).view(np.uint8)
    elif type_name in ("Q3_K", "IQ2_XXS", "IQ4_XS", "IQ3_XXS", "IQ2_XS", "IQ1_S", "IQ3_S", "IQ2_S"):
        at = 108 if type_name == "Q3_K" else 0
        raw[:, at:at + 2] = np.array([0.001 if type_name != "IQ4_XS" else 0.00005], np.float16).view(np.uint8)
    elif type_name == "IQ1_M":  # d = 0.001: its f16 bits in the top nibbles of the scale words
        h = int(np.array([0.001], np.float16).view(np.uint16)[0])
        w = raw[:, 48:56].copy().view(np.uint16)
        for i in range(4):
            w[:, i] = (w[:, i] & 0x0FFF) | (((h >> (4 * i)) & 15) << 12)
        raw[:, 48:56] = w.view(np.uint8)
    elif type_name == "F16":
        raw[:] = np.array([0.01], np.float16).view(np.uint8)
    elif type_name == "BF16":
        raw[:] = np.array([0.01], np.float32).view(np.uint16)[1:2].view(np.uint8)
    return raw.reshape(rows * copies, -1)


def row_bytes(type_name, cols):
    bs, bb = BLOCK[type_name]
    return cols // bs * bb


def _layout(type_name, layout):
    """The layout argument for one type: "split" only exists for Q4_0 / MXFP4."""
    return layout if type_name in ("Q4_0", "MXFP4") or layout == "auto" else "ggml"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--isa", default="auto")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and reps")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layout", default="auto", choices=["auto", "ggml", "split"])
    ap.add_argument("--types", default=",".join(INT_TYPES),
                    help="comma-separated integer weight types to measure")
    args = ap.parse_args()
    types = args.types.split(",")
    unknown = sorted(set(types) - set(INT_TYPES) - set(LOAD_ONLY_TYPES))
    if unknown:
        ap.error(f"unknown types {unknown}; choose from {INT_TYPES + LOAD_ONLY_TYPES}")
    import os
    threads = args.threads or os.cpu_count()
    _core.set_isa(args.isa)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(0)
    bw_bytes = 512 << 20
    print(f"# pyv4 kernels bench {datetime.date.today()}  cpu={platform.processor() or 'x86_64'}"
          f"  isa={_core.active_isa()}  threads={threads}")
    feats = _core.cpu_features()
    print("# features:", " ".join(k for k, v in feats.items() if v))
    print("# load average at start: %.2f %.2f %.2f" % os.getloadavg())
    print(f"# Q4_0/MXFP4 row layout: {args.layout}")

    shapes = SHAPES[:2] + SHAPES[4:] if args.quick else SHAPES
    print("\n## GEMV (1 token), weight GB/s vs read bandwidth measured around it")
    print(f"{'shape':28s} {'type':7s} {'MiB':>7s} {'kernel GB/s':>11s} {'read GB/s':>9s} {'ratio':>6s} "
          f"{'cached GB/s':>11s} {'ratio':>6s}")
    gemv_time = {}
    for name, rows, cols in shapes:
        for t in types + (["BF16"] if "head" in name or "wq_b" in name else []):
            size = rows * row_bytes(t, cols)
            copies = max(1, -(-(256 << 20) // size))
            raw = make_weight(t, rows, cols, copies, rng)
            x = rng.standard_normal((1, cols)).astype(np.float32)
            reps = max(copies, int(2e9 // size)) if not args.quick else copies
            reps = min(reps, 200)
            ratios, ks, bws, cached = [], [], [], []
            for _ in range(args.rounds):
                b0 = _core.read_bandwidth(bw_bytes, threads, 2)
                sec = _core.quant_matmul_time(t, raw, rows, cols, x, threads, reps, copies,
                                              _layout(t, args.layout))
                # one copy, repeated: the same work with the weights in the caches where they fit
                csec = _core.quant_matmul_time(t, raw, rows, cols, x, threads, min(reps, 50), 1,
                                               _layout(t, args.layout))
                b1 = _core.read_bandwidth(bw_bytes, threads, 2)
                k = size / sec / 1e9
                ks.append(k)
                cached.append(size / csec / 1e9)
                bws.append((b0 + b1) / 2)
                ratios.append(k / ((b0 + b1) / 2))
            i = int(np.argsort(ratios)[len(ratios) // 2])  # median round
            gemv_time[(name, t)] = size / ks[i] / 1e9
            print(f"{name:28s} {t:7s} {size / 2**20:7.1f} {ks[i]:11.1f} {bws[i]:9.1f} "
                  f"{ratios[i]:6.2f} {cached[i]:11.1f} {cached[i] / bws[i]:6.2f}", flush=True)
            del raw

    peak = statistics.median(_core.int8_peak(threads, 0.2) for _ in range(3))
    print("\n## GEMM (prefill), Gops/s = 2*rows*cols*tokens/s; ratio = tokens/s at 128 over GEMV tokens/s")
    print(f"# int8 dot-product peak (vpdpbusd zmm, {threads} threads): {peak:.0f} Gops/s; "
          "peak% = n=128 / peak; need10x = Gops/s at which ratio128 would be 10")
    print(f"{'shape':28s} {'type':6s} {'n=32':>8s} {'n=128':>8s} {'n=512':>8s} {'ratio128':>8s} "
          f"{'peak%':>6s} {'need10x':>8s}")
    for name, rows, cols in SHAPES[:2] + SHAPES[3:4]:
        for t in types + ["BF16"]:
            raw = make_weight(t, rows, cols, 1, rng)
            out = []
            for n in (32, 128, 512):
                x = rng.standard_normal((n, cols)).astype(np.float32)
                reps = max(2, int(4e9 / (2 * rows * cols * n)))
                sec = min(_core.quant_matmul_time(t, raw, rows, cols, x, threads, reps, 1,
                                                  _layout(t, args.layout)) for _ in range(2))
                out.append((2 * rows * cols * n / sec / 1e9, sec))
            g = gemv_time.get((name, t))
            ratio = (128 / out[1][1]) * g if g else float("nan")
            need = 10 * out[1][0] / ratio if g else float("nan")
            pct = 100 * out[1][0] / peak if peak else float("nan")
            print(f"{name:28s} {t:6s} {out[0][0]:8.0f} {out[1][0]:8.0f} {out[2][0]:8.0f} "
                  f"{ratio:8.1f} {pct:6.0f} {need:8.0f}", flush=True)

    name, rows, cols = SHAPES[0]
    small = (4, 8, 12, 16, 24, 32)
    print(f"\n## Small batches, {name}, weights from DRAM: Gops/s (weight GB/s)")
    print(f"{'type':6s} " + " ".join(f"{'n=' + str(n):>13s}" for n in small))
    for t in types:
        size = rows * row_bytes(t, cols)
        copies = max(1, -(-(256 << 20) // size))
        raw = make_weight(t, rows, cols, copies, rng)
        cells = []
        for n in small:
            x = rng.standard_normal((n, cols)).astype(np.float32)
            sec = min(_core.quant_matmul_time(t, raw, rows, cols, x, threads, copies, copies,
                                              _layout(t, args.layout)) for _ in range(args.rounds))
            cells.append(f"{2 * rows * cols * n / sec / 1e9:6.0f} ({size / sec / 1e9:4.1f})")
        print(f"{t:6s} " + " ".join(f"{c:>13s}" for c in cells), flush=True)
        del raw
    print("\n# load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
