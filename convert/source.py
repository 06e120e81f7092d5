"""Open a safetensors checkpoint (single file or sharded) and read one tensor at a time.

Only the headers are read up front (names, shapes, dtypes, data offsets, owning file).
Tensor data is read through a read-only memory map of each shard as numpy views (no torch,
no copies until a chunk is decoded); ``release(name)`` drops a finished tensor's pages from
the process again, so resident memory stays bounded by the chunk being converted.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConvertError

NP_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "F8_E4M3": np.uint8, "F8_E5M2": np.uint8, "F8_E8M0": np.uint8,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class SourceTensor:
    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: F32, BF16, F16, F8_E4M3, F8_E8M0, I8, I64, ...
    offsets: tuple[int, int] = (0, 0)  # data_offsets, relative to the end of the header


def _read_header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > 512 * 1024 * 1024:
                raise ValueError(f"implausible header size {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: not a safetensors file (bad header)")
    header.pop("__metadata__", None)
    return header


class Source:
    """The tensors of a checkpoint folder: ``names``, ``info(name)``, ``get(name)``, ``get_slice(name)``."""

    def __init__(self, src_dir: Path | str):
        self.dir = Path(src_dir)
        self.tensors: dict[str, SourceTensor] = {}
        self._handles: dict[Path, tuple] = {}
        index = self.dir / INDEX_NAME
        if index.is_file():
            self._open_index(index)
        elif (self.dir / SINGLE_NAME).is_file():
            self._add_file(self.dir / SINGLE_NAME, None)
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if len(files) == 1:
                self._add_file(files[0], None)
            elif not files:
                raise ConvertError(f"{self.dir}: no model.safetensors or {INDEX_NAME} in the source folder")
            else:
                raise ConvertError(f"{self.dir}: {len(files)} safetensors files but no {INDEX_NAME}")

    def _open_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict):
                raise ValueError("weight_map is not an object")
        except (OSError, ValueError, KeyError) as e:
            raise ConvertError(f"{index}: invalid safetensors index ({e})") from None
        by_file: dict[str, set[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        for fname in sorted(by_file):
            path = self.dir / fname
            if not path.is_file():
                example = sorted(by_file[fname])[0]
                raise ConvertError(f"{path}: shard listed in {index.name} is missing (holds e.g. tensor {example!r})")
            self._add_file(path, by_file[fname])

    def _add_file(self, path: Path, expected: set[str] | None) -> None:
        header = _read_header(path)
        with open(path, "rb") as f:
            (hlen,) = struct.unpack("<Q", f.read(8))
        data_size = path.stat().st_size - 8 - hlen
        for name, meta in header.items():
            if expected is not None and name not in expected:
                # present in the shard but the index points elsewhere (or nowhere): trust the index
                continue
            try:
                shape = tuple(int(x) for x in meta["shape"])
                dtype = str(meta["dtype"])
                offs = (int(meta["data_offsets"][0]), int(meta["data_offsets"][1]))
            except (KeyError, TypeError, ValueError, IndexError):
                raise ConvertError(f"{path}: bad header entry for tensor {name!r}") from None
            if not 0 <= offs[0] <= offs[1] <= data_size:
                raise ConvertError(f"{path}: tensor {name!r}: data offsets {list(offs)} lie outside the "
                                   f"file's {data_size} data bytes (truncated or corrupt file?)")
            if name in self.tensors:
                raise ConvertError(f"{path}: tensor {name!r} also appears in {self.tensors[name].file.name}")
            self.tensors[name] = SourceTensor(name, path, shape, dtype, offs)
        if expected is not None:
            missing = sorted(expected - set(header))
            if missing:
                raise ConvertError(f"{path}: tensor {missing[0]!r} listed in the index is not in this shard")

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> SourceTensor:
        return self.tensors[name]

    def _map(self, path: Path) -> tuple[mmap.mmap, int]:
        h = self._handles.get(path)
        if h is None:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            h = (mm, 8 + n)
            self._handles[path] = h
        return h

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only numpy view of the memory-mapped shard.

        The numpy dtype is the storage type: BF16 and the F8 types come back as uint16 /
        uint8 codes (decode with ``quants.to_f32``).
        """
        st = self.tensors[name]
        np_dtype = NP_DTYPES.get(st.dtype)
        if np_dtype is None:
            raise ConvertError(f"{st.file}: tensor {name!r} has unsupported dtype {st.dtype}")
        mm, base = self._map(st.file)
        start, end = st.offsets
        count = 1
        for s in st.shape:
            count *= s
        if end - start != count * np.dtype(np_dtype).itemsize or base + end > len(mm):
            raise ConvertError(f"{st.file}: tensor {name!r}: data offsets {[start, end]} do not match "
                               f"shape {list(st.shape)} {st.dtype} (truncated or corrupt file?)")
        return np.frombuffer(mm, dtype=np_dtype, count=count, offset=base + start).reshape(st.shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the tensor's pages (bytes ``start:stop`` of it) from this process; they stay
        in the page cache."""
        st = self.tensors[name]
        h = self._handles.get(st.file)
        if h is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        mm, base = h
        end = st.offsets[1] if stop is None else min(st.offsets[1], st.offsets[0] + stop)
        a = (base + st.offsets[0] + start) // mmap.PAGESIZE * mmap.PAGESIZE
        b = min(len(mm), base + end)
        if b > a:
            try:
                mm.madvise(mmap.MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        for mm, _ in self._handles.values():
            try:
                mm.close()
            except BufferError:  # a numpy view is still alive; the map goes with it
                pass
        self._handles.clear()
