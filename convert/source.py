"""Open a safetensors checkpoint (single file or sharded) and read one tensor at a time.

Only the headers are read up front (names, shapes, dtypes, owning file); tensor data is
fetched lazily through ``safetensors.safe_open``, which memory-maps the file, so at most
one source tensor (or one slice of it) is resident at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ConvertError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class SourceTensor:
    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string: F32, BF16, F16, F8_E4M3, F8_E8M0, I8, I64, ...


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
        self._handles: dict[Path, object] = {}
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
        for name, meta in header.items():
            if expected is not None and name not in expected:
                # present in the shard but the index points elsewhere (or nowhere): trust the index
                continue
            try:
                shape = tuple(int(x) for x in meta["shape"])
                dtype = str(meta["dtype"])
            except (KeyError, TypeError, ValueError):
                raise ConvertError(f"{path}: bad header entry for tensor {name!r}") from None
            if name in self.tensors:
                raise ConvertError(f"{path}: tensor {name!r} also appears in {self.tensors[name].file.name}")
            self.tensors[name] = SourceTensor(name, path, shape, dtype)
        if expected is not None:
            missing = sorted(expected - set(header))
            if missing:
                raise ConvertError(f"{path}: tensor {missing[0]!r} listed in the index is not in this shard")

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> SourceTensor:
        return self.tensors[name]

    def _handle(self, path: Path):
        h = self._handles.get(path)
        if h is None:
            from safetensors import safe_open

            h = safe_open(str(path), framework="pt")
            self._handles[path] = h
        return h

    def get(self, name: str):
        """The whole tensor as a torch tensor (memory-mapped read)."""
        st = self.tensors[name]
        try:
            return self._handle(st.file).get_tensor(name)
        except Exception as e:  # safetensors raises its own error types
            raise ConvertError(f"{st.file}: cannot read tensor {name!r} ({e})") from None

    def get_slice(self, name: str):
        """A lazy slice object: ``src.get_slice(name)[i]`` reads only that part."""
        st = self.tensors[name]
        try:
            return self._handle(st.file).get_slice(name)
        except Exception as e:
            raise ConvertError(f"{st.file}: cannot read tensor {name!r} ({e})") from None

    def close(self) -> None:
        self._handles.clear()
