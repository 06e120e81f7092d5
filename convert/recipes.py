"""Choose the GGML type of every output tensor, and turn chunks into its bytes.

Fixed whatever the recipe (llama.cpp's converter does the same):

* F32: norms, mHC (``hc_*``, ``output_hc_*``), compressor ``ape``, attention sinks, the
  routing bias (``exp_probs_b``) and every 1-D tensor;
* I32: the hash-routing table ``ffn_gate_tid2eid``.

Recipes for the rest (``role`` comes from the plan, ``src`` is the source format):

=========  ================  ==================  ===============================  =================
recipe     routed experts    FP8-class proj (*)  embed / output / compressor      router, idx proj
=========  ================  ==================  ===============================  =================
mxfp4      MXFP4 (FP4: bit-  Q8_0                source float type (BF16 stays    source float type
           exact repack)                         BF16; F16 -> F16; F32 -> F32)
q4         Q4_K              Q8_0                Q8_0                             F32
q8         Q8_0              Q8_0                Q8_0                             F32
q2         gate/up IQ2_XXS,  as mxfp4            as mxfp4                         as mxfp4
           down Q2_K
q2q4       as q2; the last   as mxfp4            as mxfp4                         as mxfp4
           6 blocks (and
           MTP) Q4_K
bf16/f16/  that type         that type           that type                        that type
f32
=========  ================  ==================  ===============================  =================

(*) the tensors the official checkpoint stores as FP8: attention ``wq_a/wq_b/wkv/wo_a/wo_b``,
the indexer ``wq_b``, the shared experts and the MTP ``eh_proj``. In ``mxfp4`` any FP8
source tensor becomes Q8_0, as llama.cpp's ``conversion/deepseek.py`` writes it; on the
official checkpoint the ``mxfp4`` recipe therefore gives exactly llama.cpp's per-tensor types.

``--type PATTERN=TYPE`` overrides (``fnmatch`` on the GGUF tensor name, first match wins)
apply to every tensor except the fixed ones. A type whose block does not divide the row
length falls back (Q4_K -> Q4_0 -> F16; Q8_0, Q4_0, MXFP4 -> F16, llama.cpp's fallback;
Q2_K, Q3_K, IQ2_XXS, IQ4_XS -> Q4_0; Q5_K, Q6_K -> Q8_0); ``choose_type`` returns the fallback and
the pipeline reports it. The low-bit types (q2 / q2q4 and ``--type`` q2_k / q3_k / iq2_xxs / iq4_xs,
and q5_k / q6_k) are quantized against an importance matrix (``--imatrix FILE``, convert/imatrix.py);
IQ2_XXS refuses to go without one.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as T

from .errors import ConvertError
from .quants import BLOCK_BYTES, QUANT_BLOCK, PackedFP4, dequant_fp4, fits, quantize, repack_mxfp4

# recipe name -> general.file_type as llama.cpp numbers it (LlamaFileType)
RECIPES: dict[str, int] = {
    "mxfp4": 38,  # MOSTLY_MXFP4_MOE
    "q4": 15,     # MOSTLY_Q4_K_M (closest llama.cpp label: Q4_K experts, Q8_0 rest)
    "q8": 7,      # MOSTLY_Q8_0
    "bf16": 32,   # MOSTLY_BF16
    "f16": 1,     # MOSTLY_F16
    "f32": 0,     # ALL_F32
    "q2": 19,     # MOSTLY_IQ2_XXS (ds4's 2-bit experts mix)
    "q2q4": 19,   # the same, last 6 layers' experts Q4_K
}
DEFAULT_RECIPE = "mxfp4"

TYPE_NAMES: dict[str, T] = {
    "f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0,
    "q4_k": T.Q4_K, "mxfp4": T.MXFP4, "q2_k": T.Q2_K, "q3_k": T.Q3_K, "iq2_xxs": T.IQ2_XXS,
    "iq4_xs": T.IQ4_XS, "q5_k": T.Q5_K, "q6_k": T.Q6_K,
}
# Types pyv4 loads and runs (community GGUFs use them) but has no quantizer for:
# asking the converter for one is an error that says so.
LOAD_ONLY: dict[str, T] = {"iq3_xxs": T.IQ3_XXS, "iq2_xs": T.IQ2_XS, "iq1_s": T.IQ1_S, "iq1_m": T.IQ1_M,
                           "iq3_s": T.IQ3_S, "iq2_s": T.IQ2_S, "iq4_nl": T.IQ4_NL}
# quantized with the importance matrix when there is one
LOWBIT = (T.Q2_K, T.Q3_K, T.IQ2_XXS, T.IQ4_XS, T.Q5_K, T.Q6_K)
Q2Q4_TAIL = 6  # q2q4: experts of the last this many blocks stay Q4_K

_FIXED_F32_ROLES = {"norm", "hc", "ape", "sink", "bias"}
_FLOAT_OF_SRC = {"BF16": T.BF16, "F16": T.F16, "F32": T.F32, "F64": T.F32}
_FALLBACK = {T.Q4_K: T.Q4_0, T.Q4_0: T.F16, T.Q8_0: T.F16, T.MXFP4: T.F16,
             T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.IQ2_XXS: T.Q4_0, T.IQ4_XS: T.Q4_0, T.Q5_K: T.Q8_0, T.Q6_K: T.Q8_0,
             **{t: T.Q4_0 for t in LOAD_ONLY.values()}}


@dataclass
class Recipe:
    name: str
    file_type: int
    overrides: list[tuple[str, T]] = field(default_factory=list)
    n_layer: int = 0  # main blocks of the model (q2q4 needs it)

    def choose_type(self, name: str, shape: tuple[int, ...], role: str, src: str = "F32") -> tuple[T, T | None]:
        return choose_type(self, name, shape, role, src)


def get_recipe(name: str, overrides: list[tuple[str, str]] | None = None, n_layer: int = 0,
               load_only: bool = False) -> Recipe:
    """load_only: overrides may name the LOAD_ONLY types too (random-block models,
    pyv4/synthetic.py: nothing is quantized)."""
    key = name.lower()
    if key not in RECIPES:
        raise ConvertError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    ov: list[tuple[str, T]] = []
    for pattern, tname in overrides or []:
        t = TYPE_NAMES.get(tname.lower())
        if t is None and tname.lower() in LOAD_ONLY:
            t = LOAD_ONLY[tname.lower()]
            if not load_only:
                raise ConvertError(f"{t.name} (override {pattern}={tname}) can only be loaded, not produced: "
                                   f"pyv4 runs {t.name} files but has no {t.name} quantizer; "
                                   f"choose from {', '.join(TYPE_NAMES)}")
        if t is None:
            raise ConvertError(f"unknown tensor type {tname!r} in override {pattern}={tname}; "
                               f"choose from {', '.join(TYPE_NAMES)}")
        ov.append((pattern, t))
    return Recipe(key, RECIPES[key], ov, n_layer)


def parse_override(text: str) -> tuple[str, str]:
    """``PATTERN=TYPE`` -> (pattern, type name)."""
    pattern, sep, tname = text.rpartition("=")
    if not sep or not pattern or not tname:
        raise ConvertError(f"bad --type {text!r}: expected PATTERN=TYPE, e.g. '*ffn_*_exps*=q4_k'")
    return pattern, tname


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else None


def _recipe_type(recipe: Recipe | str, role: str, src: str, name: str = "") -> T:
    if isinstance(recipe, Recipe):
        if recipe.name in ("q2", "q2q4") and role == "experts":
            blk = _block_index(name)
            if recipe.name == "q2q4" and blk is not None and blk >= recipe.n_layer - Q2Q4_TAIL:
                return T.Q4_K  # (the MTP block, numbered after the last layer, counts as tail)
            return T.Q2_K if "ffn_down_exps" in name else T.IQ2_XXS
        recipe = "mxfp4" if recipe.name in ("q2", "q2q4") else recipe.name
    if recipe in ("f32", "f16", "bf16"):
        return TYPE_NAMES[recipe]
    if recipe == "mxfp4":
        if role == "experts":
            return T.MXFP4
        if role == "proj" or src == "FP8":
            return T.Q8_0
        return _FLOAT_OF_SRC.get(src, T.F32)
    # q8 / q4
    if role in ("router", "index_proj"):
        return T.F32
    if role == "experts" and recipe == "q4":
        return T.Q4_K
    return T.Q8_0


def choose_type(recipe: Recipe, name: str, shape: tuple[int, ...], role: str,
                src: str = "F32") -> tuple[T, T | None]:
    """(GGML type, the type it replaces when the row length forced a fallback, else None)."""
    if role == "tid2eid":
        return T.I32, None
    if role in _FIXED_F32_ROLES or len(shape) < 2:
        return T.F32, None
    want = None
    for pattern, t in recipe.overrides:
        if fnmatch.fnmatchcase(name, pattern):
            want = t
            break
    if want is None:
        want = _recipe_type(recipe, role, src, name)
    t = want
    while not fits(t, shape[-1]):
        t = _FALLBACK[t]
    return t, (want if t != want else None)


def nbytes(t: T, shape: tuple[int, ...]) -> int:
    rows = 1
    for s in shape[:-1]:
        rows *= int(s)
    n = int(shape[-1]) if shape else 1
    return rows * (n // QUANT_BLOCK[t]) * BLOCK_BYTES[t]


def encode(chunk, t: T, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Encode one chunk of whole rows (float32/int array or ``PackedFP4``) as GGML type ``t``
    (``imatrix``: the importance of each element, [rows, n], for the low-bit types)."""
    if isinstance(chunk, PackedFP4):
        if t == T.MXFP4:
            return repack_mxfp4(chunk)
        chunk = dequant_fp4(chunk)
    if t == T.I32:
        a = np.asarray(chunk)
        if a.dtype.kind not in "iu":
            raise ConvertError(f"expected integers for I32, got {a.dtype}")
        return a.astype(np.int32)
    try:
        return quantize(np.asarray(chunk, dtype=np.float32), t, imatrix)
    except OverflowError as e:
        raise ConvertError(f"{e}; use --recipe bf16 or f32, or --type PATTERN=bf16") from None


def decode(raw: np.ndarray, t: T) -> np.ndarray:
    """Raw GGUF tensor bytes -> float32 (I32 stays int32); used by tests and checks."""
    if t == T.I32:
        return np.asarray(raw).view(np.int32)
    if t == T.F32:
        return np.asarray(raw).view(np.float32)
    import gguf

    return gguf.quants.dequantize(np.asarray(raw), t)
