"""The llama.cpp side of the compatibility tests, run as a subprocess with a Python that has
``llama_cpp`` (llama-cpp-python built from source: bench/.venv-llamacpp).

    python llamacpp_peer.py logits FILE.gguf TOKENS.npy OUT.npy [--threads N]
        load FILE in llama.cpp (F32 KV cache), evaluate TOKENS in one batch, save the
        float32 logits of every position to OUT.npy; exit 3 if the model does not load.
    python llamacpp_peer.py convert SRC_DIR OUT.gguf [--outtype auto|f32|f16|bf16|q8_0]
                                                     [--tokenizer-pre deepseek-v3]
        run llama.cpp's own convert_hf_to_gguf.py (conversion/deepseek.py) on SRC_DIR,
        with the gguf-py vendored next to it.

The llama.cpp sources default to the sdist that bench/setup_llamacpp.sh unpacks into
bench/.venv-llamacpp/src (override with LLAMACPP_SRC).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

DEFAULT_SRC = str(Path(__file__).resolve().parents[1] / "bench" / ".venv-llamacpp" / "src"
                  / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp")


def llamacpp_src() -> Path:
    return Path(os.environ.get("LLAMACPP_SRC", DEFAULT_SRC))


def llama_quantize() -> Path | None:
    """llama.cpp's llama-quantize binary for the peer tests: in $PYV4_LLAMA_TOOLS, then
    this project's dev hosts' build (/work/llama-tools/bin), then on PATH; None when absent
    (bench/lowbit_quality.py says how to build it)."""
    for d in (os.environ.get("PYV4_LLAMA_TOOLS"), "/work/llama-tools/bin"):
        if d and (Path(d) / "llama-quantize").is_file():
            return Path(d) / "llama-quantize"
    found = shutil.which("llama-quantize")
    return Path(found) if found else None


def cmd_logits(a) -> int:
    import numpy as np

    try:  # llama-cpp-python imports diskcache for its optional cache; not needed here
        import diskcache  # noqa: F401
    except ImportError:
        import types

        mod = types.ModuleType("diskcache")
        mod.Cache = object
        sys.modules["diskcache"] = mod
    from llama_cpp import Llama

    toks = [int(t) for t in np.load(a.tokens)]
    try:
        llm = Llama(model_path=a.file, n_ctx=max(256, len(toks) + 16), n_batch=max(512, len(toks)),
                    n_ubatch=max(512, len(toks)), logits_all=True, verbose=False,
                    n_threads=a.threads, type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
    except Exception as e:  # noqa: BLE001
        print(f"llama.cpp could not load {a.file}: {e}", file=sys.stderr)
        return 3
    llm.eval(toks)
    np.save(a.out, np.array(llm.scores[:len(toks)], dtype=np.float32))
    return 0


def cmd_convert(a) -> int:
    """Run convert_hf_to_gguf.main() in this process (gguf-py from the same sources).

    With ``--tokenizer-pre NAME`` llama.cpp's pre-tokenizer detection (a hash of the token
    ids of a probe text, which a cut-down test vocabulary cannot match) is replaced by that
    name; nothing else in the converter is touched.
    """
    src = llamacpp_src()
    if not (src / "convert_hf_to_gguf.py").is_file():
        print(f"no convert_hf_to_gguf.py in {src}", file=sys.stderr)
        return 4
    sys.path[:0] = [str(src / "gguf-py"), str(src)]
    for m in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
        del sys.modules[m]
    import convert_hf_to_gguf as ch

    if a.tokenizer_pre:
        from conversion.base import TextModel

        TextModel.get_vocab_base_pre = lambda self, tokenizer: a.tokenizer_pre
    sys.argv = ["convert_hf_to_gguf.py", a.src, "--outfile", a.out]
    if a.outtype != "auto":
        sys.argv += ["--outtype", a.outtype]
    ch.main()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("logits")
    p.add_argument("file")
    p.add_argument("tokens")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("convert")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--outtype", default="auto")
    p.add_argument("--tokenizer-pre", default=None)
    a = ap.parse_args(argv)
    return cmd_logits(a) if a.cmd == "logits" else cmd_convert(a)


if __name__ == "__main__":
    sys.exit(main())
