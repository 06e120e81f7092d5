"""The `pyv4` command: chat, run, convert, requantize, info, bench, serve, imatrix, plan.

Every user error ends in a one-line `pyv4 <cmd>: error: ...` on stderr and exit
code 2; no traceback for things the user can fix."""

from __future__ import annotations

import argparse
import sys


def _fail(cmd: str, msg: str) -> int:
    print(f"pyv4 {cmd}: error: {msg}", file=sys.stderr)
    return 2


def _cmd_convert(argv: list[str]) -> int:
    try:
        from .convert import main as convert_main
    except ImportError as e:  # torch / safetensors missing
        return _fail("convert", f"{e}. Install the converter extras: pip install 'pyv4[convert]'")
    return convert_main(argv)


def _lazy(module: str, attr: str):
    def run(argv: list[str]) -> int:
        import importlib

        return getattr(importlib.import_module(module, __package__), attr)(argv)

    return run


# name -> (entry point, help); modules load only when their command runs, so
# `pyv4 chat` never imports the converter (and with it torch).
_COMMANDS = {
    "chat": (_lazy(".cli_commands", "chat_main"), "interactive chat (the demo model if none is given)"),
    "run": (_lazy(".cli_commands", "run_main"), "answer one prompt (-p TEXT, or -p - for stdin)"),
    "convert": (_cmd_convert, "convert a Hugging Face / official checkpoint to GGUF"),
    "requantize": (_lazy(".convert.requantize", "main"), "requantize a GGUF to another recipe (MXFP4 -> q2)"),
    "info": (_lazy(".info", "main"), "describe a GGUF file and whether pyv4 can load it"),
    "bench": (_lazy(".bench_cli", "main"), "prefill and decode speed of a model on this machine"),
    "serve": (_lazy(".server", "main"), "OpenAI-compatible HTTP server (pip install 'pyv4[serve]')"),
    "imatrix": (_lazy(".imatrix", "main"), "importance matrix from calibration text (for 2-bit recipes)"),
    "plan": (_lazy(".plan_cli", "main"), "where a model's bytes would live with a GPU (--vram 24GiB)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pyv4 <command> [options]\n\ncommands:")
        for name, (_, h) in _COMMANDS.items():
            print(f"  {name:<10} {h}")
        print("\nRun `pyv4 <command> --help` for the options of a command.")
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"pyv4 {__version__}")
        return 0
    cmd = argv[0]
    if cmd not in _COMMANDS:
        return _fail(cmd, f"unknown command (choose from {', '.join(_COMMANDS)})")
    return _COMMANDS[cmd][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
