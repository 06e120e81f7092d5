"""``pyv4 convert SRC_DIR OUT.gguf [--recipe R] [--type PATTERN=TYPE ...]`` (arguments, progress, exit codes)."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import ConvertError
from .recipes import DEFAULT_RECIPE, RECIPES, TYPE_NAMES, parse_override


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyv4 convert",
        description="Convert a DeepSeek-V4 safetensors folder (official FP8/FP4 or transformers layout, "
                    "sharded or not) to one self-contained GGUF file in llama.cpp's deepseek4 layout.")
    p.add_argument("src", metavar="SRC_DIR", help="folder with config.json and the safetensors weights")
    p.add_argument("out", metavar="OUT.gguf", help="output file (appears only when complete)")
    p.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                   help="mxfp4 (default): routed experts MXFP4 (the official FP4 repacked bit-exactly), "
                        "FP8 projections Q8_0, BF16 kept -- what llama.cpp's converter writes; "
                        "q4: experts Q4_K, rest Q8_0; q8: Q8_0; bf16/f16/f32: plain floats; "
                        "q2: routed gate/up IQ2_XXS, down Q2_K, rest as mxfp4 (needs --imatrix); "
                        "q2q4: q2 with the last 6 blocks' experts Q4_K. "
                        "Norms, mHC, ape, sinks and biases are always F32, the hash table I32.")
    p.add_argument("--type", dest="types", action="append", default=[], metavar="PATTERN=TYPE",
                   help="override the type of tensors whose GGUF name matches the shell pattern "
                        f"(types: {', '.join(TYPE_NAMES)}); repeatable, first match wins. "
                        "Example: --type 'blk.*.ffn_*_exps.weight=q4_k'")
    p.add_argument("--imatrix", metavar="FILE",
                   help="importance matrix (`pyv4 imatrix` or llama.cpp's llama-imatrix output, .gguf or legacy .dat) "
                        "that the low-bit types (q2, q2q4; --type q2_k/q3_k/iq2_xxs/iq4_xs/q5_k/q6_k) minimise their "
                        "error against; required for IQ2_XXS")
    p.add_argument("--mtp", choices=("auto", "skip"), default="auto",
                   help="auto: keep the MTP block(s) the checkpoint has; skip: leave them out")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """``[12/345] ####------  1.2 GB / 9.8 GB  310 MB/s  ETA 0:28  name`` on stderr."""

    def __init__(self, stream=None, min_interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self.total = 0
        self.done = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, i: int, n: int, name: str, nbytes: int = 0) -> None:
        now = time.monotonic()
        if i == 0:
            self.total, self.done, self.t0 = nbytes, 0, now
            return
        self.done += nbytes
        final = i >= n
        if not final and now - self.last < (self.min_interval if self.tty else 10.0):
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = self.done / el
        frac = self.done / self.total if self.total else i / n
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 20
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = (f"[{i}/{n}] {bar} {_fmt_bytes(self.done)} / {_fmt_bytes(self.total)}  "
                f"{_fmt_bytes(rate)}/s  " + (f"{_fmt_time(el)} total" if final else f"ETA {_fmt_time(eta)}")
                + f"  {name[:40]}")
        if self.tty:
            self.stream.write("\r" + line.ljust(120)[:120] + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def type_summary(types: dict) -> str:
    """``"123 tensors: 80 F32, 40 Q8_0, 3 MXFP4"`` (most frequent type first)."""
    hist: dict[str, int] = {}
    for t in types.values():
        hist[t.name] = hist.get(t.name, 0) + 1
    return (f"{len(types)} tensors: "
            + ", ".join(f"{v} {k}" for k, v in sorted(hist.items(), key=lambda kv: -kv[1])))


def run_command(name: str, quiet: bool, work) -> int:
    """The shell `pyv4 convert` and `pyv4 requantize` share: ``work(log, progress)``
    does the job and returns the closing line; errors are one line with exit 2,
    Ctrl-C exit 130 (the writer leaves no output behind)."""
    def log(msg: str) -> None:
        if not quiet:
            print(f"pyv4 {name}: {msg}", file=sys.stderr)

    try:
        done = work(log, None if quiet else ProgressBar())
    except ConvertError as e:
        print(f"pyv4 {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npyv4 {name}: interrupted; no output written", file=sys.stderr)
        return 130
    log(done)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    from .pipeline import convert

    def work(log, progress) -> str:
        res = convert(args.src, args.out, args.recipe, mtp=args.mtp,
                      overrides=[parse_override(t) for t in args.types], imatrix=args.imatrix,
                      progress=progress, log=log)
        return (f"wrote {res.out} ({type_summary(res.types)}; recipe {args.recipe}"
                + (f"; {res.n_mtp} MTP block(s)" if res.n_mtp else "") + ")")

    return run_command("convert", args.quiet, work)
