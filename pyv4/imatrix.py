"""`pyv4 imatrix MODEL -f TEXT -o FILE.imatrix`: importance matrices for the
low-bit quantizers, in llama.cpp's GGUF imatrix format, so either tool's file
works with the other's quantizer (convert/imatrix.py reads both formats).

The text is tokenized and cut into chunks of `--chunk-size` tokens; each chunk
runs through a fresh session (as llama-imatrix evaluates each chunk in its own
context), while the engine adds, for every weight matrix, the squared inputs
of each column and the token count (model/imatrix.h: per expert for the
routed experts, only the tokens routed to each). Memory is the sums alone
(one float64 per column per matrix and expert), whatever the text's length.

File layout (what llama.cpp's llama-imatrix writes): per matrix
`NAME.in_sum2` (F32, ne = [cols, n_mat]) and `NAME.counts` (F32,
ne = [1, n_mat]); metadata `general.type = "imatrix"`, `imatrix.datasets`,
`imatrix.chunk_count`, `imatrix.chunk_size`. Written to a temporary file and
renamed: a cut-off run never leaves a file that looks complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def collect(model, tokens, chunk_size: int = 512, max_chunks: int | None = None, progress=None,
            kv: str = "fp8"):
    """Runs `tokens` through `model` in chunks (sessions with KV type `kv`); returns
    ([(name, sum2 [n_mat, cols], counts [n_mat])], chunks run). progress(i, n,
    seconds) after each chunk."""
    ids = np.asarray(tokens, dtype=np.int64)
    n_chunks = len(ids) // chunk_size
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one chunk of {chunk_size}")
    if model.device != "cpu":
        raise ValueError(f"imatrix collects the CPU's products: load the model with device=\"cpu\", "
                         f"not {model.device!r}")
    eng = model._engine
    eng.imatrix_begin()
    t0 = time.perf_counter()
    try:
        for i in range(n_chunks):
            s = model.new_session(kv=kv)
            s.eval(ids[i * chunk_size:(i + 1) * chunk_size], logits="last")
            if progress is not None:
                progress(i + 1, n_chunks, time.perf_counter() - t0)
    finally:
        entries = eng.imatrix_end()
    return [(n, s2, c) for n, s2, c in entries if c.sum() > 0], n_chunks


def write_gguf(path, entries, dataset: str, chunk_count: int, chunk_size: int) -> None:
    """Writes entries as a llama.cpp GGUF imatrix file (atomically)."""
    import gguf

    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    w = gguf.GGUFWriter(tmp, arch="imatrix")
    w.kv_data[0].pop("general.architecture", None)  # llama-imatrix writes none
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, sum2, counts in entries:
        w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(sum2, dtype=np.float32))
        w.add_tensor(f"{name}.counts", counts.astype(np.float32).reshape(-1, 1))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 imatrix", description="Importance matrix from calibration text.")
    ap.add_argument("model", help="a deepseek4 GGUF file (best: a high-precision one, e.g. --recipe q8), "
                    "or 'demo'")
    ap.add_argument("-f", "--file", required=True, help="calibration text (UTF-8)")
    ap.add_argument("-o", "--output", required=True, help="where to write the imatrix (GGUF)")
    ap.add_argument("--chunk-size", type=int, default=512, help="tokens per chunk (default 512)")
    ap.add_argument("--chunks", type=int, default=None, help="stop after this many chunks")
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pyv4 imatrix: error: {msg}", file=sys.stderr)
        return 2

    if a.chunk_size < 1 or (a.chunks is not None and a.chunks < 1):
        return fail("--chunk-size and --chunks must be >= 1")
    try:
        text = open(a.file, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        return fail(f"cannot read {a.file}: {e}")
    out_dir = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(out_dir):
        return fail(f"the output directory does not exist: {out_dir}")
    from . import FormatError, Model

    path = a.model
    if path == "demo":
        from .demo import demo_model_path

        path = demo_model_path()
    try:
        model = Model(path, threads=a.threads)
    except (FileNotFoundError, FormatError) as e:
        return fail(f"cannot load model: {e}")
    if a.chunk_size > model.n_ctx:
        return fail(f"--chunk-size {a.chunk_size} exceeds the model's context of {model.n_ctx}")
    try:
        ids = model.tokenizer.encode(text)
    except (ValueError, OSError) as e:
        return fail(f"the model file has no usable tokenizer: {e}")

    def progress(i: int, n: int, secs: float) -> None:
        bar = "#" * (30 * i // n)
        sys.stderr.write(f"\rpyv4 imatrix: [{bar:<30}] chunk {i}/{n}, {i * a.chunk_size / secs:.0f} tok/s")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    try:
        entries, n_chunks = collect(model, ids, a.chunk_size, a.chunks, progress)
    except ValueError as e:
        return fail(str(e))
    try:
        write_gguf(a.output, entries, os.path.basename(a.file), n_chunks, a.chunk_size)
    except OSError as e:
        return fail(f"cannot write {a.output}: {e}")
    print(f"pyv4 imatrix: {len(entries)} matrices, {n_chunks} chunks of {a.chunk_size} tokens -> {a.output}",
          file=sys.stderr)
    return 0
