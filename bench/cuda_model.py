"""Model-level GPU benchmark (not a test), run by bench/gpu_check.sh after the
CUDA tests:

    PYTHONPATH=<site> python bench/cuda_model.py [--layers 4] [--experts 32] [--prefill 512] [--decode 16]
                                                 [--recipe mxfp4|q2]

On bench/make_wide.py's file (V4-Flash widths, random weights, the mxfp4
recipe or issue #16's q2 one (experts' gate/up IQ2_XXS, down Q2_K);
written without a tokenizer into a temporary directory unless --file is
given): a prefill of --prefill tokens, then --decode single-token steps
(greedy), on the CPU alone, on the GPU with every weight there ("gpu"), and
hybrid with every routed expert on the CPU ("hybrid"). Prints tok/s of the
prefill and the median ms per decode step of each, and the GPU's speed-ups.
Then issue #14's checks, measured in the same run:
* all-GPU decode: weight bytes a token reads (make_wide.decode_bytes_per_token)
  / its time, as a fraction of the device-to-device copy bandwidth (>= 0.60);
* hybrid decode: its time / the planner's prediction (pyv4.placement.plan for
  this context, with the CPU read bandwidth, the device copy bandwidth and
  the pinned host -> device rate measured here) (<= 1.15), and faster than
  the CPU;
* prefill on the GPU >= 10x the CPU's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_wide  # noqa: E402  (bench/make_wide.py)
from cuda_kernels import copy_bandwidth_gbs  # noqa: E402  (bench/cuda_kernels.py)

import pyv4  # noqa: E402
from pyv4 import _core  # noqa: E402


def measure(model, prompt, steps):
    """(prefill tok/s, median decode ms) of one session."""
    s = model.new_session()
    t0 = time.perf_counter()
    logits = s.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t0)
    times = []
    for _ in range(steps):
        tok = [int(np.argmax(logits))]
        t0 = time.perf_counter()
        logits = s.eval(tok)
        times.append(time.perf_counter() - t0)
    return prefill, 1e3 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--file", type=Path, default=None)
    ap.add_argument("--recipe", choices=["mxfp4", "q2"], default="mxfp4")
    args = ap.parse_args()
    ok, device = _core.cuda_available()
    if not ok:
        raise SystemExit(f"no CUDA device: {device}")
    print(f"device: {device}")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            from pyv4.synthetic import write_random_gguf_typed

            path = Path(tmp) / "wide.gguf"
            t0 = time.time()
            write_random_gguf_typed(path, make_wide.wide_config(args.layers, args.experts), None,
                                    recipe=args.recipe)
            print(f"wrote {path.stat().st_size / 1e9:.2f} GB ({args.layers} layers, {args.experts} experts, "
                  f"{args.recipe}) in {time.time() - t0:.0f} s")
        prompt = np.random.default_rng(0).integers(2, 129280, args.prefill).astype(np.int64)
        res = {}
        for label, kw in (("cpu", {}), ("gpu", {"device": "cuda"}), ("hybrid", {"device": "cuda", "max_gpu_experts": 0})):
            t0 = time.time()
            model = pyv4.Model(path, **kw)
            load = time.time() - t0
            res[label] = measure(model, prompt, args.decode)
            print(f"{label:7} load {load:5.1f} s   prefill {res[label][0]:8.1f} tok/s   decode {res[label][1]:8.2f} ms/token")
            del model
        for label in ("gpu", "hybrid"):
            print(f"{label} vs cpu: prefill x{res[label][0] / res['cpu'][0]:.2f}, decode x{res['cpu'][1] / res[label][1]:.2f}")
        checks(path, args, res)


def checks(path, args, res):
    """Issue #14's acceptance numbers from this run's measurements."""
    from pyv4.model_shape import from_gguf
    from pyv4.placement import plan

    copy = copy_bandwidth_gbs()
    cpu_gbs = _core.read_bandwidth(1 << 29, 0, 3)
    pcie_gbs = (256 << 20) / _core.cuda_upload_time(256 << 20, 5) / 1e9
    bpt = make_wide.decode_bytes_per_token(path)["total"]
    eff = bpt / (res["gpu"][1] * 1e-3) / 1e9
    ctx = args.prefill + args.decode
    hybrid = plan(from_gguf(path), _core.cuda_memory()[0], ctx=ctx, gpu_gbs=copy, cpu_gbs=cpu_gbs,
                  pcie_gbs=pcie_gbs, max_gpu_experts=0)
    want = hybrid.ms_per_token
    rows = [
        (f"all-GPU decode: {bpt / 1e6:.0f} MB/token at {eff:.0f} GB/s = {eff / copy:.2f} of the "
         f"{copy:.0f} GB/s device copy", eff / copy >= 0.60, ">= 0.60"),
        (f"hybrid decode: {res['hybrid'][1]:.2f} ms vs the planner's {want:.2f} ms (CPU {cpu_gbs:.0f} GB/s, "
         f"GPU {copy:.0f} GB/s, PCIe {pcie_gbs:.1f} GB/s) = x{res['hybrid'][1] / want:.2f}", res["hybrid"][1] <= 1.15 * want, "<= 1.15"),
        (f"hybrid decode vs the CPU alone: x{res['cpu'][1] / res['hybrid'][1]:.2f}",
         res["hybrid"][1] < res["cpu"][1], "> 1"),
        (f"prefill {args.prefill} tokens, GPU vs CPU: x{res['gpu'][0] / res['cpu'][0]:.1f}",
         res["gpu"][0] >= 10 * res["cpu"][0], ">= 10"),
    ]
    print("\nissue #14 checks:")
    for text, ok, target in rows:
        print(f"  [{'met' if ok else 'MISSED'}] {text} (target {target})")


if __name__ == "__main__":
    main()
