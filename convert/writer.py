"""Atomic, streaming GGUF writer.

The header, metadata and tensor directory are written first (all shapes and types are
known from the plan); tensor data then follows one chunk at a time, so memory stays
bounded by the largest chunk (one source tensor, or one routed expert). Everything goes
to ``OUT.tmp-<pid>`` which is renamed onto ``OUT`` only once complete; on any error or
``KeyboardInterrupt`` the temporary file is removed and ``OUT`` is left untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

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
    chunks: Callable[[], Iterable]  # yields torch chunks, row-major
    check: Callable[[object], None] | None = None


def temp_path(out: Path) -> Path:
    return out.with_name(out.name + f".tmp-{os.getpid()}")


def _add_kv(w: GGUFWriter, kv: KV) -> None:
    if kv.kind == "string":
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


def write_gguf(out: Path | str, kvs: list[KV], tensors: list[OutTensor],
               progress: Callable[[int, int, str], None] | None = None) -> None:
    """Write ``tensors`` with metadata ``kvs`` to ``out`` atomically."""
    out = Path(out)
    if out.is_dir():
        raise ConvertError(f"{out}: output path is a directory")
    if not out.parent.is_dir():
        raise ConvertError(f"{out}: output folder {out.parent} does not exist")
    tmp = temp_path(out)
    w = GGUFWriter(None, arch=ARCH)
    try:
        for kv in kvs:
            _add_kv(w, kv)
        for t in tensors:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes(t.type, t.shape), raw_dtype=t.type)
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        f = w.fout[0]
        w.write_padding(f, f.tell())
        total = len(tensors)
        for i, t in enumerate(tensors):
            want = nbytes(t.type, t.shape)
            done = 0
            try:
                for chunk in t.chunks():
                    if t.check is not None:
                        t.check(chunk)
                    arr = encode(chunk, t.type)
                    done += arr.nbytes
                    if done > want:
                        break
                    arr.tofile(f)
            except ConvertError as e:
                raise ConvertError(f"tensor {t.name}: {e}") from None
            if done != want:
                raise ConvertError(f"tensor {t.name}: produced {done} bytes, expected {want} "
                                   f"(shape {list(t.shape)}, {t.type.name})")
            w.write_padding(f, want)
            if progress is not None:
                progress(i + 1, total, t.name)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        try:
            w.close()
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        raise
