"""Importance matrices (llama.cpp's ``llama-imatrix`` output) for the low-bit quantizers.

An importance matrix holds, per weight matrix (by GGUF tensor name), the mean of x^2 of
each input column over a calibration set: the quantizers weigh each element's squared
error by it (convert/quants_lowbit.py). Two file formats exist, both read here:

* GGUF (llama.cpp since mid 2025): per matrix ``NAME.in_sum2`` (F32, ne = [cols, n_mat])
  and ``NAME.counts`` (F32, ne = [1, n_mat]); the value is in_sum2 / count per matrix
  (an expert that never saw a token gets all ones), metadata ``imatrix.datasets``,
  ``imatrix.chunk_count``, ``imatrix.chunk_size``;
* legacy binary ``.dat``: int32 entry count, then per entry int32 name length, the name,
  int32 ncall, int32 nval, nval float32 sums; the value is sum / ncall; optionally a
  trailer (int32 last chunk, int32 length, dataset file name).

``n_mat`` is 1 for a 2-D weight and the expert count for a stacked expert tensor
(``ffn_*_exps``): one vector of ``cols`` values per expert.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import ConvertError

HOWTO = ("make one from calibration text on a higher-precision conversion of the same checkpoint, "
         "e.g. `pyv4 convert SRC q8.gguf --recipe q8`, then "
         "`pyv4 imatrix q8.gguf -f calibration.txt -o q8.imatrix` (llama.cpp's llama-imatrix writes the "
         "same format), and pass --imatrix q8.imatrix")


def load_imatrix(path: Path | str) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 importance values (flat: n_mat * cols)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: imatrix file does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    entries = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    if not entries:
        raise ConvertError(f"{path}: the imatrix file holds no entries")
    for name, v in entries.items():
        if not np.isfinite(v).all() or (v < 0).any():
            raise ConvertError(f"{path}: imatrix entry {name!r} has negative or non-finite values")
    return entries


def expert_counts(path: Path | str) -> dict[int, np.ndarray]:
    """Layer -> tokens routed to each of its experts during calibration: the
    per-expert ``counts`` of the layer's stacked ``ffn_gate_exps`` (else up /
    down) entry of a GGUF imatrix (the routing frequency the GPU placement
    uses, pyv4/placement.py, which tells a legacy .dat file apart first: it
    keeps one call count per tensor, not per expert)."""
    path = Path(path)
    out: dict[int, np.ndarray] = {}
    counts = _read_gguf(path)[1]
    for kind in ("down", "up", "gate"):  # gate wins: its entry is written per routed token
        for name, c in counts.items():
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blk" and parts[2] == f"ffn_{kind}_exps" and parts[1].isdigit():
                c = c.reshape(-1)
                if not np.isfinite(c).all() or (c < 0).any():
                    raise ConvertError(f"{path}: imatrix entry {name!r} has negative or non-finite counts")
                out[int(parts[1])] = c
    if not out:
        raise ConvertError(f"{path}: the imatrix has no routed-expert entries (blk.N.ffn_*_exps.weight)")
    return out


def _read_gguf(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(in_sum2 by matrix name, counts by matrix name) of a GGUF imatrix."""
    from gguf import GGUFReader

    try:
        r = GGUFReader(str(path))
    except Exception as e:  # gguf-py raises several types for a damaged file
        raise ConvertError(f"{path}: not a readable GGUF imatrix file ({e})") from None
    sums, counts = {}, {}
    for t in r.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                into[t.name[: -len(suffix)]] = np.asarray(t.data, np.float32)
    return sums, counts


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    sums, counts = _read_gguf(path)
    out = {}
    for name, s in sums.items():
        if name not in counts:
            raise ConvertError(f"{path}: imatrix entry {name!r} has sums but no counts")
        c = counts[name].reshape(-1)
        s = s.reshape(c.size, -1)
        safe = np.where(c > 0, c, 1)[:, None]
        out[name] = np.where(c[:, None] > 0, s / safe, 1.0).astype(np.float32).reshape(-1)
    missing = sorted(set(counts) - set(sums))
    if missing:
        raise ConvertError(f"{path}: imatrix entry {missing[0]!r} has counts but no sums")
    return out


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ConvertError(f"{path}: truncated legacy imatrix file (at byte {pos})")
        v = struct.unpack_from(fmt, data, pos)
        pos += size
        return v

    (n,) = take("<i")
    if n < 1:
        raise ConvertError(f"{path}: not an imatrix file (entry count {n})")
    out = {}
    for _ in range(n):
        (ln,) = take("<i")
        if ln < 1 or ln > 4096:
            raise ConvertError(f"{path}: not an imatrix file (name length {ln})")
        name = bytes(take(f"<{ln}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise ConvertError(f"{path}: imatrix entry {name!r} has {nval} values")
        v = np.frombuffer(data, "<f4", nval, pos).astype(np.float32) if pos + 4 * nval <= len(data) else None
        if v is None:
            raise ConvertError(f"{path}: truncated legacy imatrix file (entry {name!r})")
        pos += 4 * nval
        out[name] = v / ncall if ncall > 0 else v
    return out


def matrix_weights(entries: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The importance vectors of one output tensor as [n_mat, cols] (n_mat = the expert
    count of a stacked 3-D tensor, else 1), or None if the file has no entry for it."""
    v = entries.get(name)
    if v is None:
        return None
    cols = int(shape[-1])
    n_mat = int(shape[0]) if len(shape) == 3 else 1
    if v.size != cols * n_mat:
        raise ConvertError(f"imatrix entry {name!r} has {v.size} values; the tensor {list(shape)} "
                           f"needs {cols * n_mat} ({n_mat} x {cols}): was it made for another model?")
    return v.reshape(n_mat, cols)
