"""Atomic, streaming GGUF writer.

The header, metadata and tensor directory are written first (all shapes and types are
known from the plan); tensor data then follows one chunk at a time, so memory stays
bounded by the largest chunk (a block of rows, or one routed expert). Everything goes to
``OUT.tmp-<pid>``; once the last byte is written the file is re-opened and checked (size,
tensor directory against the plan), and only then renamed onto ``OUT``. On any error or
``KeyboardInterrupt`` the temporary file is removed and ``OUT`` is left untouched.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from .errors import ConvertError
from .recipes import encode, nbytes
from .tokenizer import KV

ARCH = "deepseek4"


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]        # torch order
    type: GGMLQuantizationType
    role: str
    chunks: Callable[[], Iterable]  # yields chunks of whole rows, row-major
    check: Callable[[object], None] | None = None
    imatrix: np.ndarray | None = None  # [n_mat, cols] importance (low-bit types), n_mat | rows
    encoded: bool = False  # chunks already are this type's bytes (requantize's copies): written as they are

    def chunk_imatrix(self, row0: int, rows: int) -> np.ndarray | None:
        """The importance of each element of rows [row0, row0 + rows): row r belongs to
        matrix r // (rows per matrix) (the experts of a stacked tensor)."""
        if self.imatrix is None:
            return None
        total = 1
        for s in self.shape[:-1]:
            total *= int(s)
        per = total // self.imatrix.shape[0]
        return self.imatrix[np.arange(row0, row0 + rows) // per]

    @property
    def nbytes(self) -> int:
        return nbytes(self.type, self.shape)


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``out``. It is renamed onto ``out`` when the block
    completes and removed when the block raises (Ctrl-C included), so ``out`` is either
    the complete new file or left as it was. Close any writer inside the block."""
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def _add_kv(w: GGUFWriter, kv: KV) -> None:
    if isinstance(kv.kind, GGUFValueType):
        w.add_key_value(kv.key, kv.value, kv.kind, kv.sub_type)
        if kv.key == "general.alignment":  # the data offsets must follow it
            w.data_alignment = int(kv.value)
    elif kv.kind == "string":
        w.add_string(kv.key, kv.value)
    elif kv.kind == "uint32":
        w.add_uint32(kv.key, int(kv.value))
    elif kv.kind == "float32":
        w.add_float32(kv.key, float(kv.value))
    elif kv.kind == "bool":
        w.add_bool(kv.key, bool(kv.value))
    elif kv.kind == "array":
        w.add_array(kv.key, kv.value)
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown metadata kind {kv.kind!r} for {kv.key}")


def verify_gguf(path: Path, tensors: list[OutTensor]) -> None:
    """Re-read the finished file's directory: every planned tensor, in order, with its type,
    shape and a data range inside the file."""
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise ConvertError(f"{path}: written file does not parse as GGUF ({e})") from None
    size = path.stat().st_size
    if len(r.tensors) != len(tensors):
        raise ConvertError(f"{path}: wrote {len(r.tensors)} tensors, planned {len(tensors)}")
    for got, want in zip(r.tensors, tensors):
        shape = tuple(int(x) for x in reversed(list(got.shape)))
        while len(shape) > len(want.shape) and shape[0] == 1:
            shape = shape[1:]
        if got.name != want.name or got.tensor_type != want.type or shape != tuple(want.shape):
            raise ConvertError(f"{path}: tensor {got.name} ({got.tensor_type.name} {list(shape)}) does not match "
                               f"the plan ({want.name} {want.type.name} {list(want.shape)})")
        if got.data_offset + want.nbytes > size:
            raise ConvertError(f"{path}: tensor {got.name} runs past the end of the file")
    del r


def check_output(out: Path | str) -> Path:
    """``out`` as a Path, if a file can be created there (callers check before any work)."""
    out = Path(out)
    if out.is_dir():
        raise ConvertError(f"{out}: output path is a directory")
    if not out.parent.is_dir():
        raise ConvertError(f"{out}: output folder {out.parent} does not exist")
    return out


def write_gguf(out: Path | str, kvs: list[KV], tensors: list[OutTensor],
               progress: Callable[[int, int, str, int], None] | None = None,
               verify: bool = True) -> None:
    """Write ``tensors`` with metadata ``kvs`` to ``out`` atomically.

    ``progress(i, n, name, nbytes)`` is called after each tensor (``nbytes`` = that tensor's
    output size).
    """
    out = check_output(out)
    with atomic_output(out) as tmp:
        w = GGUFWriter(None, arch=ARCH)
        try:
            for kv in kvs:
                _add_kv(w, kv)
            for t in tensors:
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.type)
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None
            f = w.fout[0]
            w.write_padding(f, f.tell())
            total = len(tensors)
            for i, t in enumerate(tensors):
                want = t.nbytes
                done = row = 0
                try:
                    for chunk in t.chunks():
                        if t.check is not None:
                            t.check(chunk)
                        rows = int(chunk.shape[0]) if len(getattr(chunk, "shape", ())) >= 2 else 1
                        arr = np.ascontiguousarray(chunk if t.encoded else
                                                   encode(chunk, t.type, t.chunk_imatrix(row, rows)))
                        row += rows
                        done += arr.nbytes
                        if done > want:
                            break
                        f.write(memoryview(arr).cast("B"))
                        del arr, chunk
                except ConvertError as e:
                    raise ConvertError(f"tensor {t.name}: {e}") from None
                if done != want:
                    raise ConvertError(f"tensor {t.name}: produced {done} bytes, expected {want} "
                                       f"(shape {list(t.shape)}, {t.type.name})")
                w.write_padding(f, want)
                if progress is not None:
                    progress(i + 1, total, t.name, want)
        finally:
            w.close()
        if verify:
            verify_gguf(tmp, tensors)


def write_gguf_logged(out: Path | str, kvs: list[KV], tensors: list[OutTensor], notes: list[str],
                      log: Callable[[str], None] | None, progress: Callable[..., None] | None) -> None:
    """What `pyv4 convert` and `pyv4 requantize` do last: log their notes, announce the
    total output bytes to ``progress`` (call with ``i = 0``), then ``write_gguf``."""
    if log is not None:
        for n in notes:
            log(n)
    if progress is not None:
        progress(0, len(tensors), "", sum(t.nbytes for t in tensors))
    write_gguf(out, kvs, tensors, progress=progress)
