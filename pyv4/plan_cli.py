"""`pyv4 plan MODEL --vram 24GiB [--ram 128GiB] [--ctx 1M]`: where a model's
bytes would live with a GPU of that size (pyv4/placement.py), the PCIe traffic
of one decode token and its predicted time.

MODEL is a deepseek4 GGUF (only its header is read) or a built-in shape:
v4-flash, v4-pro (the main model as `pyv4 convert --recipe RECIPE` writes it).
The CPU's read bandwidth is measured (about a second) unless given; the GPU's
is nominal (--gpu-bandwidth, default 1 TB/s)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import placement as pl
from .model_shape import BUILTIN

DEFAULT_GPU_GBS = 1000.0


def measure_cpu_bandwidth(threads: int = 0) -> float:
    """GB/s of all threads streaming a 256 MiB buffer (3 passes after a warm-up: ~1 s)."""
    from . import _core

    return float(_core.read_bandwidth(256 << 20, threads, 3))


def _physical_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: float) -> str:
    for unit, scale in (("GiB", pl.GiB), ("MiB", pl.MiB), ("KiB", pl.KiB)):
        if n >= scale:
            return f"{n / scale:7.2f} {unit}"
    return f"{int(n):7d} B  "


def _expert_summary(p: pl.Placement) -> str:
    full = [il for il, n in enumerate(p.experts_gpu_per_layer) if n == p.n_expert]
    part = [(il, n) for il, n in enumerate(p.experts_gpu_per_layer) if 0 < n < p.n_expert]
    if not full and not part:
        return "none"
    out = []
    if full:
        runs, start = [], full[0]
        for a, b in zip(full, full[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        out.append(f"all {p.n_expert} of layer{'s' if len(full) > 1 else ''} {', '.join(runs)}")
    if part:
        shown = ", ".join(f"{il}: {n}" for il, n in part[:6]) + (", ..." if len(part) > 6 else "")
        out.append(f"some in {len(part)} layer{'s' if len(part) > 1 else ''} ({shown})")
    total = sum(p.experts_gpu_per_layer)
    return f"{total} of {p.n_expert * len(p.experts_gpu_per_layer)}: " + "; ".join(out)


def render(p: pl.Placement, gpu_assumed: bool = False) -> str:
    """The plan as a table and a few lines (gpu_assumed: the GPU bandwidth is the default)."""
    cats = [c for c in p.gpu] + [c for c in p.host if c not in p.gpu] + [c for c in p.file]
    lines = [f"{p.model}: device {p.device}, context {p.ctx} tokens, KV {p.kv}",
             f"budgets: vram {pl.gib(p.vram)} GiB (reserve {pl.gib(p.margin)} GiB for the CUDA context and "
             f"activations)" + (f", ram {pl.gib(p.ram)} GiB (reserve {pl.gib(pl.RAM_RESERVE)} GiB)" if p.ram else ""),
             "", f"  {'':<18}{'GPU':>12}{'host RAM':>14}"]
    for c in cats:
        where = p.file.get(c)
        row = f"  {c:<18}{_size(p.gpu.get(c, 0)) if c in p.gpu else '':>12}"
        row += f"{_size(p.host[c]) if c in p.host else '':>14}"
        if where is not None:
            row += f"  {_size(where)} in files (not counted against RAM)"
        lines.append(row)
    lines.append(f"  {'total':<18}{_size(p.gpu_bytes):>12}{_size(p.host_bytes):>14}")
    lines += ["", f"routed experts on the GPU: {_expert_summary(p)}"]
    if p.csa_rows:
        lines.append(f"CSA rows on the GPU: {p.csa_rows_gpu} of {p.csa_rows} per CSA layer")
    lines.append(f"per decode token: GPU reads {p.gpu_read_per_token / 1e9:.2f} GB, CPU reads "
                 f"{p.cpu_read_per_token / 1e9:.2f} GB, PCIe carries {p.pcie_bytes_per_token / 1e6:.2f} MB ("
                 + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in p.pcie.items()) + ")")
    b = p.bandwidth
    if p.ms is not None:
        lines.append(f"predicted: {p.ms['total']:.1f} ms/token ({1000 / p.ms['total']:.1f} tokens/s) with GPU "
                     f"{b['gpu_gbs']:.0f} GB/s{' (assumed: --gpu-bandwidth)' if gpu_assumed else ''}, CPU {b['cpu_gbs']:.1f} GB/s, PCIe {b['pcie_gbs']:.0f} GB/s; "
                     f"GPU {p.ms['gpu']:.1f} ms, CPU experts {p.ms['cpu']:.1f} ms (overlapping the GPU's), "
                     f"PCIe {p.ms['pcie']:.2f} ms")
    return "\n".join(lines)


def _load_shape(model: str, recipe: str | None):
    from .model_shape import builtin, from_gguf

    if model.lower() in BUILTIN:
        return builtin(model, recipe or "mxfp4")
    if recipe is not None:
        raise ValueError(f"--recipe applies to the built-in shapes ({', '.join(BUILTIN)}); "
                         f"a GGUF file has its own tensor types")
    if not os.path.isfile(model):
        raise ValueError(f"no such file: {model} (or give a built-in shape: {', '.join(BUILTIN)})")
    return from_gguf(model)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help=f"a deepseek4 GGUF file, or a built-in shape: {', '.join(BUILTIN)}")
    ap.add_argument("--vram", required=True, help="GPU memory the plan may use, e.g. 24GiB (binary) or 24GB")
    ap.add_argument("--ram", default=None, help="host memory (default: this machine's)")
    ap.add_argument("--ctx", default=None, help="planned context in tokens, e.g. 1M, 128K (default: the model's)")
    ap.add_argument("--kv", default="fp8", choices=pl.KV_TYPES, help="KV cache type (default fp8)")
    ap.add_argument("--recipe", default=None, help="tensor types of a built-in shape (default mxfp4)")
    ap.add_argument("--gpu-bandwidth", default=None, help=f"GPU memory bandwidth (default {DEFAULT_GPU_GBS:.0f}GB/s)")
    ap.add_argument("--cpu-bandwidth", default=None, help="CPU read bandwidth (default: measured now, ~1 s)")
    ap.add_argument("--pcie-bandwidth", default=None, help=f"PCIe bandwidth (default {pl.DEFAULT_PCIE_GBS:.0f}GB/s)")
    ap.add_argument("--expert-freq", default=None, metavar="FILE",
                    help="routing counts: a GGUF imatrix (its per-expert token counts) or a .npy array "
                         "[layers, experts]; the most used experts go to the GPU first (default: layer by layer)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    a = ap.parse_args(argv)
    try:
        vram = pl.parse_bytes(a.vram, "--vram")
        ram = pl.parse_bytes(a.ram, "--ram") if a.ram is not None else _physical_ram()
        ctx = pl.parse_tokens(a.ctx, "--ctx") if a.ctx is not None else None
        gpu = pl.parse_bandwidth(a.gpu_bandwidth, "--gpu-bandwidth") if a.gpu_bandwidth else DEFAULT_GPU_GBS
        pcie = pl.parse_bandwidth(a.pcie_bandwidth, "--pcie-bandwidth") if a.pcie_bandwidth else pl.DEFAULT_PCIE_GBS
        cpu = pl.parse_bandwidth(a.cpu_bandwidth, "--cpu-bandwidth") if a.cpu_bandwidth else None
        if vram <= 0 or ram <= 0:
            raise ValueError("--vram and --ram must be positive")
        shape = _load_shape(a.model, a.recipe)
        freq = pl.load_expert_freq(a.expert_freq, shape) if a.expert_freq else None
        if cpu is None:
            cpu = measure_cpu_bandwidth()
        p = pl.plan(shape, vram, ram, ctx, kv=a.kv, expert_freq=freq, gpu_gbs=gpu, cpu_gbs=cpu, pcie_gbs=pcie)
    except ValueError as e:  # PlacementError and FormatError are ValueErrors
        print(f"pyv4 plan: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(p.to_dict(), indent=2) if a.json else render(p, gpu_assumed=not a.gpu_bandwidth))
    return 0
