"""Choose the GGML type of every output tensor, and turn float data into its bytes.

A recipe names the type for the large matrices; small or precision-critical tensors
keep a fixed type whatever the recipe:

* F32 always: norms, mHC (``hc_*``, ``output_hc_*``), compressor ``ape``, attention
  sinks, biases (``exp_probs_b``), and every 1-D tensor.
* I32 always: the hash-routing table ``ffn_gate_tid2eid``.

Overrides (``pattern -> type``; a later ``--type PATTERN=TYPE`` option feeds them)
are tried first, in order, and may only pick a type that the tensor can hold
(the fixed tensors above cannot be overridden). Quantised types (``q8_0``, ``q4_0``,
``mxfp4``, ...) slot in here: add the type to ``TYPE_NAMES`` and its encoder to
``encode``; ``choose_type`` already checks the row-length block constraint.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T

from .errors import ConvertError

# recipe name -> (type of large matrices, general.file_type value as llama.cpp numbers it)
RECIPES: dict[str, tuple[T, int]] = {
    "f32": (T.F32, 0),   # LlamaFileType.ALL_F32
    "f16": (T.F16, 1),   # MOSTLY_F16
    "bf16": (T.BF16, 32),  # MOSTLY_BF16
}

TYPE_NAMES: dict[str, T] = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}

_FIXED_F32_ROLES = {"norm", "hc", "ape", "sink", "bias"}

_BLOCK = {T.F32: 1, T.F16: 1, T.BF16: 1, T.I32: 1}
_ITEMSIZE = {T.F32: 4, T.F16: 2, T.BF16: 2, T.I32: 4}


@dataclass
class Recipe:
    name: str
    matrix_type: T
    file_type: int
    overrides: list[tuple[str, T]] = field(default_factory=list)

    def choose_type(self, name: str, shape: tuple[int, ...], role: str) -> T:
        return choose_type(self, name, shape, role)


def get_recipe(name: str, overrides: list[tuple[str, str]] | None = None) -> Recipe:
    key = name.lower()
    if key not in RECIPES:
        raise ConvertError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    mtype, ftype = RECIPES[key]
    ov: list[tuple[str, T]] = []
    for pattern, tname in overrides or []:
        t = TYPE_NAMES.get(tname.lower())
        if t is None:
            raise ConvertError(f"unknown tensor type {tname!r} in override {pattern}={tname}; "
                               f"choose from {', '.join(TYPE_NAMES)}")
        ov.append((pattern, t))
    return Recipe(key, mtype, ftype, ov)


def choose_type(recipe: Recipe, name: str, shape: tuple[int, ...], role: str) -> T:
    """The GGML type for one output tensor (``shape`` in torch order)."""
    if role == "tid2eid":
        return T.I32
    if role in _FIXED_F32_ROLES or len(shape) < 2:
        return T.F32
    for pattern, t in recipe.overrides:
        if fnmatch.fnmatchcase(name, pattern):
            if shape[-1] % _BLOCK[t]:
                raise ConvertError(f"type override {pattern}: {name} has rows of {shape[-1]} values, "
                                   f"not a multiple of the {t.name} block {_BLOCK[t]}")
            return t
    t = recipe.matrix_type
    if shape[-1] % _BLOCK[t]:
        return T.F16 if t not in (T.F32,) else T.F32  # fallback for rows a block type cannot hold
    return t


def nbytes(t: T, shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * _ITEMSIZE[t]


def encode(chunk, t: T) -> np.ndarray:
    """Encode a torch chunk (float or int) into the little-endian bytes of GGML type ``t``."""
    import torch

    if t == T.I32:
        return chunk.to(torch.int32).contiguous().numpy()
    x = chunk.to(torch.float32).contiguous()
    if t == T.F32:
        return x.numpy()
    if t == T.F16:
        h = x.to(torch.float16)
        if bool(torch.isinf(h).any()) and not bool(torch.isinf(x).any()):
            raise ConvertError(f"values beyond the F16 range ({float(x.abs().max()):.3g}); use --recipe bf16 or f32")
        return h.numpy()
    if t == T.BF16:
        # torch rounds to nearest even, like llama.cpp's converter
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    raise ConvertError(f"type {t.name} is not supported by this converter yet")


def decode(raw: np.ndarray, t: T) -> np.ndarray:
    """Inverse of ``encode`` for the float types (used by tests): float32 array."""
    if t == T.F32:
        return raw.astype(np.float32)
    if t == T.F16:
        return raw.view(np.float16).astype(np.float32)
    if t == T.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if t == T.I32:
        return raw.view(np.int32)
    raise ValueError(f"cannot decode {t.name}")
