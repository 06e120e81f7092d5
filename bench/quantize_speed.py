"""Speed of the importance-weighted low-bit quantizers (issue #16; not a test).

    PYTHONPATH=<checkout> python bench/quantize_speed.py [--threads 1 2] [--rows 512] [--cols 4096]

Per type (Q2_K, Q3_K, IQ2_XXS): M weights/s of the numpy reference
(convert/quants_lowbit.py, its own thread pool over all cores) and of the C++ search
(pyv4._core.quantize_lowbit) at each thread count, on one Gaussian [rows, cols] matrix
with a per-column importance (both give the same bytes: checked here too). Wall rates,
and per CPU-second (process time), which stays meaningful on a loaded host. Then the
predicted quantization time of V4-Flash's `--recipe q2` (weights per type from
pyv4.model_shape's built-in shape): at the measured rate of the largest thread count, and
per-core-rate x N cores for the core counts of --cores (linear scaling assumed: the
blocks are independent and the data is read once).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def rate(fn, n: int, reps: int) -> tuple[float, float, object]:
    """(wall, CPU) M weights/s, best of reps, and the last output."""
    best_w = best_c = 0.0
    out = None
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        dt, dc = time.perf_counter() - t, time.process_time() - c
        best_w, best_c = max(best_w, n / dt / 1e6), max(best_c, n / max(dc, 1e-9) / 1e6)
    return best_w, best_c, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cores", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) numpy reference")
    a = ap.parse_args(argv)

    from pyv4 import _core
    from pyv4.convert import quants_lowbit as L
    from pyv4.model_shape import builtin

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    imp = np.broadcast_to(np.exp(rng.standard_normal(a.cols)).astype(np.float32), x.shape).copy()
    ref = {"Q2_K": L.q2_k_quantize, "Q3_K": L.q3_k_quantize, "IQ2_XXS": L.iq2_xxs_quantize}
    print(f"# {x.shape[0]}x{x.shape[1]} float32, per-column importance; isa {_core.active_isa()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| type | quantizer | threads | M weights/s (wall) | M weights/s per CPU-second |")
    print("|---|---|---|---|---|")
    cpp: dict[str, dict[int, tuple[float, float]]] = {}
    for name, fn in ref.items():
        want = None
        if not a.no_numpy:
            w, c, want = rate(lambda: fn(x, imp), x.size, 1)
            print(f"| {name} | numpy | {os.cpu_count()} | {w:.2f} | {c:.2f} |")
        cpp[name] = {}
        for th in a.threads:
            w, c, got = rate(lambda: _core.quantize_lowbit(name, x, imp, th), x.size, a.reps)
            if want is not None and not np.array_equal(got, want):
                raise SystemExit(f"{name}: the C++ bytes differ from the reference's")
            cpp[name][th] = (w, c)
            print(f"| {name} | C++ | {th} | {w:.2f} | {c:.2f} |")

    shape = builtin("v4-flash", "q2")
    weights: dict[str, int] = {}
    for t in shape.tensors:
        if t.type in cpp:
            weights[t.type] = weights.get(t.type, 0) + int(np.prod(t.shape))
    th = max(a.threads)
    print(f"\n# V4-Flash --recipe q2: " + ", ".join(f"{k} {v / 1e9:.1f} G weights" for k, v in weights.items()))
    print("| at | " + " | ".join(weights) + " | total |")
    print("|---|" + "---|" * (len(weights) + 1))

    def row(label: str, r: dict[str, float]) -> None:
        secs = {k: weights[k] / (r[k] * 1e6) for k in weights}
        print(f"| {label} | " + " | ".join(f"{s / 60:.1f} min" for s in secs.values())
              + f" | {sum(secs.values()) / 60:.1f} min |")

    row(f"{th} threads, measured wall rate", {k: cpp[k][th][0] for k in weights})
    for n in a.cores:
        row(f"{n} cores x per-CPU-second rate", {k: cpp[k][th][1] * n for k in weights})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
