"""``pyv4 convert SRC_DIR OUT.gguf --recipe f32|f16|bf16`` (argument parsing and exit codes)."""

from __future__ import annotations

import argparse
import sys

from .errors import ConvertError
from .recipes import RECIPES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyv4 convert",
        description="Convert a DeepSeek-V4 safetensors folder (official or transformers layout) "
                    "to a GGUF file in llama.cpp's deepseek4 layout.")
    p.add_argument("src", metavar="SRC_DIR", help="folder with config.json and the safetensors weights")
    p.add_argument("out", metavar="OUT.gguf", help="output file (written atomically)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="bf16",
                   help="type of the large matrices (norms, mHC, ape, sinks, biases stay F32; "
                        "the hash table I32). Default: bf16")
    p.add_argument("--mtp", choices=("auto", "skip"), default="auto",
                   help="auto: write the MTP block(s) the checkpoint has; skip: leave them out")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)
    from .pipeline import convert

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"pyv4 convert: {msg}", file=sys.stderr)

    def progress(i: int, n: int, name: str) -> None:
        if not args.quiet and sys.stderr.isatty():
            print(f"\r[{i}/{n}] {name[:60]:<60}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    try:
        res = convert(args.src, args.out, args.recipe, mtp=args.mtp, progress=progress, log=log)
    except ConvertError as e:
        print(f"pyv4 convert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyv4 convert: interrupted; no output written", file=sys.stderr)
        return 130
    log(f"wrote {res.out} ({res.n_tensors} tensors, recipe {args.recipe}"
        + (f", {res.n_mtp} MTP block(s)" if res.n_mtp else "") + ")")
    return 0
