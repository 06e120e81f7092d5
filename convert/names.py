"""Source tensor names (official and transformers) -> llama.cpp ``deepseek4`` GGUF tensors.

``build_plan(hp, source)`` checks every source tensor against the config (name known,
expected shape, supported dtype, nothing missing, nothing left over) *before* anything
is written, and returns the ordered list of output tensors, each with a reader that
streams its data one source tensor (or one expert) at a time.

Every source name is first reduced to its official spelling:
``[model.]layers.N.<suffix>`` / ``mtp.I.<suffix>`` / root names, with transformers'
module names (``self_attn.q_a_proj``, ``mlp.gate.e_score_correction_bias``, ...) and
``save_pretrained``'s quirks (``model.`` prefix, ``attn.norm`` for the kv norm) folded in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .config import HParams
from .errors import ConvertError
from .quants import PackedFP4, dequant_fp8, to_f32
from .source import Source

# ---------------------------------------------------------------------------
# Name tables
# ---------------------------------------------------------------------------

ROOT_GGUF = {
    "embed.weight": "token_embd.weight",
    "head.weight": "output.weight",
    "norm.weight": "output_norm.weight",
    "hc_head_fn": "output_hc_fn.weight",
    "hc_head_base": "output_hc_base.weight",
    "hc_head_scale": "output_hc_scale.weight",
}

ROOT_ALIASES = {
    "embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "hc_head.hc_fn": "hc_head_fn",
    "hc_head.hc_base": "hc_head_base",
    "hc_head.hc_scale": "hc_head_scale",
}

# official per-layer suffix -> GGUF suffix (after "blk.N.")
LAYER_GGUF = {
    "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "hc_attn_fn": "hc_attn_fn.weight",
    "hc_attn_base": "hc_attn_base.weight",
    "hc_attn_scale": "hc_attn_scale.weight",
    "hc_ffn_fn": "hc_ffn_fn.weight",
    "hc_ffn_base": "hc_ffn_base.weight",
    "hc_ffn_scale": "hc_ffn_scale.weight",
    "attn.attn_sink": "attn_sinks.weight",
    "attn.wq_a.weight": "attn_q_a.weight",
    "attn.q_norm.weight": "attn_q_a_norm.weight",
    "attn.wq_b.weight": "attn_q_b.weight",
    "attn.wkv.weight": "attn_kv.weight",
    "attn.kv_norm.weight": "attn_kv_a_norm.weight",
    "attn.wo_a.weight": "attn_output_a.weight",
    "attn.wo_b.weight": "attn_output_b.weight",
    "attn.compressor.wkv.weight": "attn_compressor_kv.weight",
    "attn.compressor.wgate.weight": "attn_compressor_gate.weight",
    "attn.compressor.ape": "attn_compressor_ape.weight",
    "attn.compressor.norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.wq_b.weight": "indexer.attn_q_b.weight",
    "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.norm.weight": "indexer_compressor_norm.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight",
    "ffn.gate.bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight",
    "ffn.shared_experts.w1.weight": "ffn_gate_shexp.weight",
    "ffn.shared_experts.w2.weight": "ffn_down_shexp.weight",
    "ffn.shared_experts.w3.weight": "ffn_up_shexp.weight",
}

# official per-layer suffix -> role: what the recipes choose a tensor's type by
# (convert/recipes.py); the GGUF name gives it back through ``gguf_role``
LAYER_ROLE = {
    **dict.fromkeys(("attn_norm.weight", "ffn_norm.weight", "attn.q_norm.weight", "attn.kv_norm.weight",
                     "attn.compressor.norm.weight", "attn.indexer.compressor.norm.weight"), "norm"),
    **dict.fromkeys(("hc_attn_fn", "hc_attn_base", "hc_attn_scale",
                     "hc_ffn_fn", "hc_ffn_base", "hc_ffn_scale"), "hc"),
    **dict.fromkeys(("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight",
                     "attn.wo_b.weight", "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight",
                     "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight"), "proj"),
    **dict.fromkeys(("attn.compressor.wkv.weight", "attn.compressor.wgate.weight",
                     "attn.indexer.compressor.wkv.weight", "attn.indexer.compressor.wgate.weight"), "dense"),
    **dict.fromkeys(("attn.compressor.ape", "attn.indexer.compressor.ape"), "ape"),
    "attn.attn_sink": "sink",
    "attn.indexer.weights_proj.weight": "index_proj",
    "ffn.gate.weight": "router",
    "ffn.gate.bias": "bias",
    "ffn.gate.tid2eid": "tid2eid",
}

ROOT_ROLE = {"embed.weight": "embed", "head.weight": "output", "norm.weight": "norm",
             "hc_head_fn": "hc", "hc_head_base": "hc", "hc_head_scale": "hc"}

# routed experts: official projection -> GGUF suffix
EXPERT_GGUF = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}

# MTP-only extras: official suffix -> GGUF suffix. e_proj/h_proj become one eh_proj.
MTP_GGUF = {
    "enorm.weight": "nextn.enorm.weight",
    "hnorm.weight": "nextn.hnorm.weight",
    "norm.weight": "nextn.shared_head_norm.weight",
}
# The MTP block's own hc head has no tensor name llama.cpp accepts in a file that also
# holds the trunk (its MTP-only export stores it as the root output_hc_*, which here is
# the trunk's), and llama.cpp refuses any file with an unknown tensor. So these three
# small F32 tensors go into metadata arrays (row-major, float32), which llama.cpp ignores:
# deepseek4.nextn.<i>.hc_head_fn / _base / _scale (with _shape for fn).
MTP_HC_HEAD_KV = {
    "hc_head_fn": "hc_head_fn",
    "hc_head_base": "hc_head_base",
    "hc_head_scale": "hc_head_scale",
}


def mtp_kv_key(i: int, what: str) -> str:
    return f"deepseek4.nextn.{i}.{what}"


MTP_EH_PROJ = "nextn.eh_proj.weight"  # the MTP block's e_proj | h_proj, concatenated by columns


def gguf_role(name: str) -> str | None:
    """The plan's role of a tensor of a ``deepseek4`` GGUF, from its name alone (what
    ``pyv4 requantize`` chooses types by); None for a name the converter never writes."""
    for canon, gname in ROOT_GGUF.items():
        if name == gname:
            return ROOT_ROLE[canon]
    m = re.match(r"^blk\.\d+\.(.+)$", name)
    if m is None:
        return None
    rest = m.group(1)
    if rest in EXPERT_GGUF.values():
        return "experts"
    if rest == MTP_EH_PROJ:
        return "proj"
    if rest in MTP_GGUF.values():
        return "norm"  # the MTP block's enorm / hnorm / shared head norm
    return next((LAYER_ROLE[s] for s, g in LAYER_GGUF.items() if g == rest), None)


# transformers module names (and save_pretrained quirks) -> official suffix
LAYER_ALIASES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "attn_hc.fn": "hc_attn_fn",
    "attn_hc.base": "hc_attn_base",
    "attn_hc.scale": "hc_attn_scale",
    "ffn_hc.fn": "hc_ffn_fn",
    "ffn_hc.base": "hc_ffn_base",
    "ffn_hc.scale": "hc_ffn_scale",
    "self_attn.sinks": "attn.attn_sink",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_norm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_proj.weight": "attn.wkv.weight",
    "self_attn.kv_norm.weight": "attn.kv_norm.weight",
    "attn.norm.weight": "attn.kv_norm.weight",  # save_pretrained writes the kv norm so
    "self_attn.o_a_proj.weight": "attn.wo_a.weight",
    "self_attn.o_b_proj.weight": "attn.wo_b.weight",
    "self_attn.compressor.kv_proj.weight": "attn.compressor.wkv.weight",
    "self_attn.compressor.gate_proj.weight": "attn.compressor.wgate.weight",
    "self_attn.compressor.position_bias": "attn.compressor.ape",
    "self_attn.compressor.kv_norm.weight": "attn.compressor.norm.weight",
    "self_attn.compressor.indexer.kv_proj.weight": "attn.indexer.compressor.wkv.weight",
    "self_attn.compressor.indexer.gate_proj.weight": "attn.indexer.compressor.wgate.weight",
    "self_attn.compressor.indexer.position_bias": "attn.indexer.compressor.ape",
    "self_attn.compressor.indexer.kv_norm.weight": "attn.indexer.compressor.norm.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "attn.indexer.wq_b.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "attn.indexer.weights_proj.weight",
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
    "mlp.gate.tid2eid": "ffn.gate.tid2eid",
    "mlp.shared_experts.gate_proj.weight": "ffn.shared_experts.w1.weight",
    "mlp.shared_experts.down_proj.weight": "ffn.shared_experts.w2.weight",
    "mlp.shared_experts.up_proj.weight": "ffn.shared_experts.w3.weight",
}

_RE_LAYER = re.compile(r"^(layers|mtp)\.(\d+)\.(.+)$")
_RE_EXPERT = re.compile(r"^(?:ffn|mlp)\.experts\.(\d+)\.(w[123])\.(weight|scale)$")
_RE_STACKED = re.compile(r"^(?:ffn|mlp)\.experts\.(gate_up_proj|down_proj)$")

FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
INT_DTYPES = {"I64", "I32", "I16", "U16", "U32"}
FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}
FP4_PACKED_DTYPES = {"I8", "U8"}
SCALE_DTYPES = {"F8_E8M0", "U8", "F32", "BF16", "F16"}


def canonical_name(name: str) -> str:
    """Reduce a source tensor name (official or transformers) to the official spelling."""
    n = name[len("model."):] if name.startswith("model.") else name
    if n in ROOT_ALIASES:
        return ROOT_ALIASES[n]
    m = _RE_LAYER.match(n)
    if m is None:
        return n
    scope, idx, rest = m.groups()
    rest = LAYER_ALIASES.get(rest, rest)
    me = _RE_EXPERT.match(rest)
    if me is not None:
        rest = f"ffn.experts.{me.group(1)}.{me.group(2)}.{me.group(3)}"
    ms = _RE_STACKED.match(rest)
    if ms is not None:
        rest = f"ffn.experts.{ms.group(1)}"
    return f"{scope}.{idx}.{rest}"


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------

@dataclass
class PlanTensor:
    """One GGUF output tensor.

    ``shape`` is the torch (row-major) shape; GGUF ``ne`` is its reverse.
    ``role`` drives the type choice (see recipes): embed, output, router, index_proj,
    proj (the projections the official checkpoint stores in FP8), dense (BF16 matrices
    of the compressors), experts, and the small ones norm, hc, ape, sink, bias, tid2eid.
    ``read(source)`` yields chunks of whole rows (float32 / int arrays, or ``PackedFP4``)
    whose row-major concatenation is the whole tensor.
    """
    name: str
    shape: tuple[int, ...]
    role: str
    sources: list[str]
    read: Callable[[Source], Iterator]
    note: str = ""
    src_kind: str = "F32"   # FP8, FP4, INT, or the source float dtype (BF16, F16, F32, F64)


@dataclass
class Plan:
    tensors: list[PlanTensor]
    n_mtp: int                      # MTP blocks written (blk.{n_layer + i})
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Index:
    """Source tensors keyed by canonical name, tracking which ones were used."""

    def __init__(self, source: Source):
        self.source = source
        self.by_canon: dict[str, str] = {}
        for name in source.names:
            c = canonical_name(name)
            if c in self.by_canon:
                other = self.by_canon[c]
                raise ConvertError(
                    f"{source.info(name).file}: tensors {other!r} and {name!r} are the same weight ({c})")
            self.by_canon[c] = name
        self.used: set[str] = set()

    def has(self, canon: str) -> bool:
        return canon in self.by_canon

    def take(self, canon: str) -> str:
        name = self.by_canon[canon]
        self.used.add(name)
        return name

    def where(self, canon: str | None = None) -> str:
        if canon is not None and canon in self.by_canon:
            return str(self.source.info(self.by_canon[canon]).file)
        return str(self.source.dir)


def _expected_layer(hp: HParams, layer: int, mtp: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """Official suffix -> (torch shape, role) for one layer or MTP block (experts excluded)."""
    D, H, d = hp.n_embd, hp.n_head, hp.head_dim
    ql, g, ol = hp.q_lora_rank, hp.o_groups, hp.o_lora_rank
    E, I = hp.n_expert, hp.n_ff_exp
    hcD, mix = hp.hc_mult * D, hp.hc_mix
    exp: dict[str, tuple[int, ...]] = {
        "attn_norm.weight": (D,),
        "ffn_norm.weight": (D,),
        "hc_attn_fn": (mix, hcD),
        "hc_attn_base": (mix,),
        "hc_attn_scale": (3,),
        "hc_ffn_fn": (mix, hcD),
        "hc_ffn_base": (mix,),
        "hc_ffn_scale": (3,),
        "attn.attn_sink": (H,),
        "attn.wq_a.weight": (ql, D),
        "attn.q_norm.weight": (ql,),
        "attn.wq_b.weight": (H * d, ql),
        "attn.wkv.weight": (d, D),
        "attn.kv_norm.weight": (d,),
        "attn.wo_a.weight": (g * ol, H * d // g),
        "attn.wo_b.weight": (D, g * ol),
        "ffn.gate.weight": (E, D),
        "ffn.shared_experts.w1.weight": (I * hp.n_expert_shared, D),
        "ffn.shared_experts.w3.weight": (I * hp.n_expert_shared, D),
        "ffn.shared_experts.w2.weight": (D, I * hp.n_expert_shared),
    }
    ratio = hp.layer_ratio(layer)
    if ratio != 0:
        coff = 2 if ratio == 4 else 1
        exp.update({
            "attn.compressor.wkv.weight": (coff * d, D),
            "attn.compressor.wgate.weight": (coff * d, D),
            "attn.compressor.ape": (ratio, coff * d),
            "attn.compressor.norm.weight": (d,),
        })
        if ratio == 4:
            ih, idim = hp.index_n_heads, hp.index_head_dim
            exp.update({
                "attn.indexer.wq_b.weight": (ih * idim, ql),
                "attn.indexer.weights_proj.weight": (ih, D),
                "attn.indexer.compressor.wkv.weight": (2 * idim, D),
                "attn.indexer.compressor.wgate.weight": (2 * idim, D),
                "attn.indexer.compressor.ape": (ratio, 2 * idim),
                "attn.indexer.compressor.norm.weight": (idim,),
            })
    if layer < hp.n_hash_layers and not mtp:
        exp["ffn.gate.tid2eid"] = (hp.n_vocab, hp.n_expert_used)
    else:
        exp["ffn.gate.bias"] = (E,)
    return {suffix: (shape, LAYER_ROLE[suffix]) for suffix, shape in exp.items()}


# ---------------------------------------------------------------------------
# Reading and dequantisation
# ---------------------------------------------------------------------------

# Chunks hold at most about this many values (whole rows), so memory stays bounded
# whatever the tensor size (the embedding of V4-Flash is 530M values).
CHUNK_VALUES = 1 << 23


@dataclass
class _Dense:
    """How to read one logical tensor: the weight name and, when quantised, its scale."""
    name: str
    scale: str | None
    kind: str    # "float", "int", "fp8", "fp4"
    dtype: str   # source dtype of the weight


def rows_per_chunk(cols: int) -> int:
    return max(1, CHUNK_VALUES // max(1, cols))


def _read_chunks(source: Source, spec: _Dense) -> Iterator:
    """Row blocks of one logical tensor: float32 arrays, int arrays, or ``PackedFP4``."""
    w = source.raw(spec.name)
    try:
        if spec.kind == "int" or w.ndim < 2:
            yield (np.array(w) if spec.kind == "int" else to_f32(w, spec.dtype))
            return
        rows = w.shape[0]
        step = rows_per_chunk(w.shape[-1] * (2 if spec.kind == "fp4" else 1))
        if spec.kind in ("fp8", "fp4"):
            sst = source.info(spec.scale)
            sc = source.raw(spec.scale)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            if spec.kind == "float":
                yield to_f32(w[r0:r1], spec.dtype)
            elif spec.kind == "fp8":
                yield dequant_fp8(w[r0:r1], spec.dtype, sc, sst.dtype, row0=r0)
            else:
                yield PackedFP4(np.array(w[r0:r1]).view(np.uint8), _fp4_exps(sc[r0:r1], sst.dtype))
            row_bytes = w.strides[0]
            source.release(spec.name, r0 * row_bytes, r1 * row_bytes)  # keep RSS at one chunk
    finally:
        source.release(spec.name)
        if spec.scale is not None:
            source.release(spec.scale)


def _fp4_exps(sc: np.ndarray, dtype: str) -> np.ndarray:
    """FP4 block scales as E8M0 bytes (float scales must be powers of two)."""
    if dtype in ("F8_E8M0", "U8"):
        return np.array(sc).view(np.uint8)
    f = to_f32(sc, dtype)
    m, e = np.frexp(f)
    if not (np.all(m == 0.5) and np.all(f > 0)):
        raise ConvertError("FP4 block scales stored as floats must be positive powers of two")
    return np.clip(e - 1 + 127, 0, 254).astype(np.uint8)


def _dense_spec(ix: _Index, canon: str, want: tuple[int, ...], role: str) -> _Dense:
    """Validate one logical source tensor (dtype, shape, scale companion) and mark it used."""
    name = ix.take(canon)
    st = ix.source.info(name)
    where = f"{st.file}: tensor {name!r}"
    scale_canon = canon[: -len(".weight")] + ".scale" if canon.endswith(".weight") else None
    has_scale = scale_canon is not None and ix.has(scale_canon)
    if role == "tid2eid":
        if st.dtype not in INT_DTYPES:
            raise ConvertError(f"{where}: unsupported dtype {st.dtype} for a hash table (expected an integer type)")
        kind = "int"
    elif st.dtype in FLOAT_DTYPES:
        if has_scale:
            raise ConvertError(f"{st.file}: unexpected tensor {ix.by_canon[scale_canon]!r} "
                               f"(a scale for the unquantised {name!r})")
        kind = "float"
    elif st.dtype in FP8_DTYPES and has_scale and len(st.shape) == 2:
        kind = "fp8"
    elif st.dtype in FP4_PACKED_DTYPES and has_scale and len(st.shape) == 2:
        kind = "fp4"
    else:
        extra = " without its .scale tensor" if st.dtype in FP8_DTYPES | FP4_PACKED_DTYPES else ""
        raise ConvertError(f"{where}: unsupported dtype {st.dtype}{extra}")
    shape = st.shape
    if kind == "fp4":
        shape = (shape[0], shape[1] * 2)
    if tuple(shape) != tuple(want):
        raise ConvertError(f"{where}: shape {list(shape)} does not match the config (expected {list(want)})")
    scale_name = None
    if kind in ("fp8", "fp4"):
        scale_name = ix.take(scale_canon)
        sst = ix.source.info(scale_name)
        if sst.dtype not in SCALE_DTYPES:
            raise ConvertError(f"{sst.file}: tensor {scale_name!r}: unsupported scale dtype {sst.dtype}")
        if kind == "fp8":
            ws = (math.ceil(want[0] / 128), math.ceil(want[1] / 128))
        else:
            if want[1] % 32:
                raise ConvertError(f"{where}: FP4 row length {want[1]} is not a multiple of 32")
            ws = (want[0], want[1] // 32)
        if tuple(sst.shape) != ws:
            raise ConvertError(f"{sst.file}: tensor {scale_name!r}: scale shape {list(sst.shape)} "
                               f"does not match weight {name!r} (expected {list(ws)})")
    return _Dense(name, scale_name, kind, st.dtype)


def _src_kind(spec: _Dense) -> str:
    """What the plan records as the source format: FP8, FP4, INT or the float dtype."""
    return {"fp8": "FP8", "fp4": "FP4", "int": "INT"}.get(spec.kind, spec.dtype)


def _single(spec: _Dense) -> Callable[[Source], Iterator]:
    def read(source: Source):
        yield from _read_chunks(source, spec)
    return read


def _concat_cols(a: _Dense, b: _Dense) -> Callable[[Source], Iterator]:
    def read(source: Source):
        for ca, cb in zip(_read_chunks(source, a), _read_chunks(source, b)):
            yield np.concatenate((ca, cb), axis=1)
    return read


def _experts_unstacked(specs: list[_Dense]) -> Callable[[Source], Iterator]:
    def read(source: Source):
        for s in specs:
            yield from _read_chunks(source, s)
    return read


def _experts_stacked(name: str, dtype: str, n_expert: int, rows: slice) -> Callable[[Source], Iterator]:
    def read(source: Source):
        w = source.raw(name)
        try:
            for e in range(n_expert):
                yield to_f32(w[e, rows.start:rows.stop], dtype)
        finally:
            source.release(name)
    return read


def _stacked_spec(ix: _Index, canon: str, want: tuple[int, ...]) -> str:
    name = ix.take(canon)
    st = ix.source.info(name)
    if st.dtype not in FLOAT_DTYPES:
        raise ConvertError(f"{st.file}: tensor {name!r}: unsupported dtype {st.dtype} for stacked experts")
    if tuple(st.shape) != tuple(want):
        raise ConvertError(f"{st.file}: tensor {name!r}: shape {list(st.shape)} does not match the config "
                           f"(expected {list(want)})")
    return name


def _plan_experts(hp: HParams, ix: _Index, prefix: str, blk: str) -> list[PlanTensor]:
    E, I, D = hp.n_expert, hp.n_ff_exp, hp.n_embd
    shapes = {"w1": (I, D), "w3": (I, D), "w2": (D, I)}
    stacked_gu = f"{prefix}ffn.experts.gate_up_proj"
    stacked_dn = f"{prefix}ffn.experts.down_proj"
    out: list[PlanTensor] = []
    if ix.has(stacked_gu) or ix.has(stacked_dn):
        for c in (stacked_gu, stacked_dn):
            if not ix.has(c):
                raise ConvertError(f"{ix.where()}: missing tensor for {c} (stacked experts need both "
                                   "gate_up_proj and down_proj)")
        gu = _stacked_spec(ix, stacked_gu, (E, 2 * I, D))
        dn = _stacked_spec(ix, stacked_dn, (E, D, I))
        gdt, ddt = ix.source.info(gu).dtype, ix.source.info(dn).dtype
        out.append(PlanTensor(f"{blk}.{EXPERT_GGUF['w1']}", (E, I, D), "experts", [gu],
                              _experts_stacked(gu, gdt, E, slice(0, I)), src_kind=gdt))
        out.append(PlanTensor(f"{blk}.{EXPERT_GGUF['w3']}", (E, I, D), "experts", [gu],
                              _experts_stacked(gu, gdt, E, slice(I, 2 * I)), src_kind=gdt))
        out.append(PlanTensor(f"{blk}.{EXPERT_GGUF['w2']}", (E, D, I), "experts", [dn],
                              _experts_stacked(dn, ddt, E, slice(0, D)), src_kind=ddt))
        return out
    for w in ("w1", "w3", "w2"):
        specs = []
        for e in range(E):
            c = f"{prefix}ffn.experts.{e}.{w}.weight"
            if not ix.has(c):
                raise ConvertError(f"{ix.where()}: missing tensor {c} (routed expert {e} of {E})")
            specs.append(_dense_spec(ix, c, shapes[w], "experts"))
        kinds = {_src_kind(s) for s in specs}
        if len(kinds) > 1:
            raise ConvertError(f"{ix.where(f'{prefix}ffn.experts.0.{w}.weight')}: routed experts of "
                               f"{prefix}ffn {w} mix source formats {sorted(kinds)}")
        out.append(PlanTensor(f"{blk}.{EXPERT_GGUF[w]}", (E,) + shapes[w], "experts",
                              [s.name for s in specs], _experts_unstacked(specs), src_kind=kinds.pop()))
    return out


def _plan_block(hp: HParams, ix: _Index, prefix: str, layer: int, mtp: bool) -> list[PlanTensor]:
    blk = f"blk.{layer}"
    out: list[PlanTensor] = []
    for suffix, (shape, role) in _expected_layer(hp, layer, mtp).items():
        c = prefix + suffix
        if not ix.has(c):
            raise ConvertError(f"{ix.where()}: missing tensor {c} (needed by the config for "
                               f"{'MTP block' if mtp else 'layer'} {prefix.split('.')[1]})")
        spec = _dense_spec(ix, c, shape, role)
        out.append(PlanTensor(f"{blk}.{LAYER_GGUF[suffix]}", shape, role, [spec.name], _single(spec),
                              src_kind=_src_kind(spec)))
    out.extend(_plan_experts(hp, ix, prefix, blk))
    if mtp:
        D = hp.n_embd
        specs = []
        for c in (prefix + "e_proj.weight", prefix + "h_proj.weight"):
            if not ix.has(c):
                raise ConvertError(f"{ix.where()}: missing tensor {c} (MTP block)")
            specs.append(_dense_spec(ix, c, (D, D), "proj"))
        kinds = {_src_kind(s) for s in specs}
        out.append(PlanTensor(f"{blk}.{MTP_EH_PROJ}", (D, 2 * D), "proj",
                              [s.name for s in specs], _concat_cols(*specs),
                              src_kind="FP8" if "FP8" in kinds else specs[0].dtype))
        extra = {
            "enorm.weight": ((D,), "norm"),
            "hnorm.weight": ((D,), "norm"),
            "norm.weight": ((D,), "norm"),
            "hc_head_fn": ((hp.hc_mult, hp.hc_mult * D), "kv"),
            "hc_head_base": ((hp.hc_mult,), "kv"),
            "hc_head_scale": ((1,), "kv"),
        }
        mtp_idx = layer - hp.n_layer
        for suffix, (shape, role) in extra.items():
            c = prefix + suffix
            if not ix.has(c):
                raise ConvertError(f"{ix.where()}: missing tensor {c} (MTP block)")
            spec = _dense_spec(ix, c, shape, "hc" if role == "kv" else role)
            name = (mtp_kv_key(mtp_idx, MTP_HC_HEAD_KV[suffix]) if role == "kv"
                    else f"{blk}.{MTP_GGUF[suffix]}")
            out.append(PlanTensor(name, shape, role, [spec.name], _single(spec), src_kind=_src_kind(spec)))
    return out


def build_plan(hp: HParams, source: Source, mtp: str = "auto") -> Plan:
    """Validate ``source`` against ``hp`` and return the ordered output tensors.

    ``mtp``: ``"auto"`` writes the MTP blocks the checkpoint has (as ``blk.{n_layer+i}``
    with llama.cpp's ``nextn.*`` extras; the block's hc head becomes metadata, role ``kv``);
    ``"skip"`` leaves them out (like llama.cpp's default export).
    """
    if mtp not in ("auto", "skip"):
        raise ValueError(f"mtp must be 'auto' or 'skip', not {mtp!r}")
    ix = _Index(source)
    D, V = hp.n_embd, hp.n_vocab
    root = {
        "embed.weight": (V, D),
        "head.weight": (V, D),
        "norm.weight": (D,),
        "hc_head_fn": (hp.hc_mult, hp.hc_mult * D),
        "hc_head_base": (hp.hc_mult,),
        "hc_head_scale": (1,),
    }
    tensors: list[PlanTensor] = []
    head: list[PlanTensor] = []
    for canon, shape in root.items():
        role = ROOT_ROLE[canon]
        if not ix.has(canon):
            raise ConvertError(f"{ix.where()}: missing tensor {canon}")
        spec = _dense_spec(ix, canon, shape, role)
        pt = PlanTensor(ROOT_GGUF[canon], shape, role, [spec.name], _single(spec), src_kind=_src_kind(spec))
        (tensors if canon == "embed.weight" else head).append(pt)

    for layer in range(hp.n_layer):
        tensors.extend(_plan_block(hp, ix, f"layers.{layer}.", layer, mtp=False))

    notes: list[str] = []
    mtp_ids = sorted({int(c.split(".")[1]) for c in ix.by_canon if c.startswith("mtp.")})
    n_mtp = 0
    if mtp_ids and mtp == "auto":
        if mtp_ids != list(range(len(mtp_ids))):
            raise ConvertError(f"{ix.where()}: MTP blocks {mtp_ids} are not numbered 0..{len(mtp_ids) - 1}")
        for i in mtp_ids:
            tensors.extend(_plan_block(hp, ix, f"mtp.{i}.", hp.n_layer + i, mtp=True))
        n_mtp = len(mtp_ids)
    elif mtp_ids:
        for c, name in ix.by_canon.items():
            if c.startswith("mtp."):
                ix.used.add(name)
        notes.append(f"skipped {len(mtp_ids)} MTP block(s)")
    tensors.extend(head)

    ignored: list[str] = []
    for c, name in ix.by_canon.items():
        if name in ix.used:
            continue
        m = _RE_LAYER.match(c)
        # Hash-routed layers never use a routing bias; llama.cpp's converter drops it too.
        if m and m.group(1) == "layers" and m.group(3) == "ffn.gate.bias" and int(m.group(2)) < hp.n_hash_layers:
            ignored.append(name)
            continue
        raise ConvertError(f"{source.info(name).file}: unexpected tensor {name!r} "
                           f"(not part of a DeepSeek-V4 model with this config)")
    if ignored:
        notes.append(f"ignored {len(ignored)} unused routing bias tensor(s) of hash layers")
    return Plan(tensors=tensors, n_mtp=n_mtp, ignored=ignored, notes=notes)
