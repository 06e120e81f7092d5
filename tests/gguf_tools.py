"""Test helpers: a minimal, byte-exact GGUF writer and a reader-to-rewriter, so
loader tests can build files with any defect (unknown types, duplicate names,
bad offsets, missing or reshaped tensors, changed metadata)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

# GGUF metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
               U64: "Q", I64: "q", F64: "d"}


@dataclass
class RawTensor:
    name: str
    ggml_type: int
    ne: list[int]          # GGML order (torch shape reversed)
    data: bytes
    offset: int | None = None  # override the data offset (default: packed, aligned)


@dataclass
class RawGGUF:
    kv: list[tuple[str, int, object, int | None]] = field(default_factory=list)  # key, type, value, elem type
    tensors: list[RawTensor] = field(default_factory=list)
    version: int = 3
    magic: bytes = b"GGUF"
    alignment: int = 32

    def set(self, key, vtype, value, elem=None):
        self.kv = [e for e in self.kv if e[0] != key]
        self.kv.append((key, vtype, value, elem))

    def drop_key(self, key):
        self.kv = [e for e in self.kv if e[0] != key]

    def get(self, key):
        for k, _, v, _ in self.kv:
            if k == key:
                return v
        raise KeyError(key)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(vtype, value, elem) -> bytes:
    if vtype == STR:
        return _str(value)
    if vtype == ARR:
        out = struct.pack("<IQ", elem, len(value))
        for v in value:
            out += _value(elem, v, None)
        return out
    return struct.pack("<" + _SCALAR_FMT[vtype], value)


def to_bytes(g: RawGGUF) -> bytes:
    head = g.magic + struct.pack("<IQQ", g.version, len(g.tensors), len(g.kv))
    for key, vtype, value, elem in g.kv:
        head += _str(key) + struct.pack("<I", vtype) + _value(vtype, value, elem)
    offsets, pos = [], 0
    for t in g.tensors:
        pos = (pos + g.alignment - 1) // g.alignment * g.alignment
        offsets.append(pos if t.offset is None else t.offset)
        pos += len(t.data)
    for t, off in zip(g.tensors, offsets):
        head += _str(t.name) + struct.pack("<I", len(t.ne)) + b"".join(struct.pack("<Q", n) for n in t.ne)
        head += struct.pack("<IQ", t.ggml_type, off)
    start = (len(head) + g.alignment - 1) // g.alignment * g.alignment
    body = bytearray(head + b"\0" * (start - len(head)))
    pos = 0
    for t in g.tensors:
        pos = (pos + g.alignment - 1) // g.alignment * g.alignment
        body += b"\0" * (start + pos - len(body))
        body += t.data
        pos += len(t.data)
    return bytes(body)


def write(g: RawGGUF, path) -> None:
    with open(path, "wb") as f:
        f.write(to_bytes(g))


def read(path) -> RawGGUF:
    """Reads a GGUF with gguf-py into a RawGGUF that `write` reproduces."""
    import gguf

    r = gguf.GGUFReader(str(path))
    g = RawGGUF()
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        vtype = int(f.types[0])
        if vtype == ARR:
            elem = int(f.types[1])
            vals = f.contents()
            g.kv.append((f.name, ARR, list(vals), elem))
        else:
            g.kv.append((f.name, vtype, f.contents(), None))
    for t in r.tensors:
        data = np.asarray(t.data).tobytes()
        g.tensors.append(RawTensor(t.name, int(t.tensor_type), [int(n) for n in t.shape], data))
    return g


def with_context_length(src, dst, n_ctx: int):
    """Copies the GGUF at src to dst with deepseek4.context_length = n_ctx; returns dst."""
    g = read(src)
    g.set("deepseek4.context_length", U32, n_ctx)
    write(g, dst)
    return dst


def split_copy(src, out, max_tensors: int, small_first_shard: bool = False) -> list:
    """Writes the GGUF at src as a split model with gguf-py's own shard writer
    (llama.cpp's gguf-split layout: OUT-00001-of-0000N.gguf, ...), at most
    max_tensors tensors per shard; returns the shard paths."""
    from pathlib import Path

    import gguf

    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(Path(out), arch, split_max_tensors=max_tensors, small_first_shard=small_first_shard)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = gguf.GGUFValueType(int(f.types[0]))
        sub = gguf.GGUFValueType(int(f.types[-1])) if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub)
    for t in r.tensors:
        shape = [int(n) for n in reversed(list(t.shape))]
        bs, ts = gguf.GGML_QUANT_SIZES[t.tensor_type]
        byte_shape = shape[:-1] + [shape[-1] // bs * ts]  # gguf-py takes raw bytes by their byte shape
        w.add_tensor(t.name, np.frombuffer(np.asarray(t.data).tobytes(), np.uint8), raw_shape=byte_shape,
                     raw_dtype=t.tensor_type)
    paths = w.format_shard_names(Path(out))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return paths
