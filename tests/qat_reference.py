"""Numpy reference of the official QAT rounding of the KV path (spec §2,
§3.4-§3.6), grafted onto transformers' DeepseekV4 (a fixture helper, not a test).

transformers runs V4 in plain float math; the official inference code (OFF)
rounds, in place:
  * the window KV after kv_norm + RoPE: act_quant(kv[:nope], block 64, UE8M0),
  * each compressed row after norm + RoPE: the same,
  * indexer keys after norm + RoPE: Hadamard(index_head_dim), fp4_act_quant(32),
  * the indexer query per head after RoPE: Hadamard, fp4_act_quant(32).
pyv4's kv="fp8" stores exactly those values, with the rope dims of main rows in
BF16 (the official record, spec §4.2), so the reference rounds them to BF16 too.

``qat_patched()`` wraps transformers' ``apply_rotary_pos_emb`` and applies the
rounding at exactly those four call sites (found by the calling module and the
source line), so ``tiny_models.reference_logits`` becomes the QAT reference.
Everything here is numpy on float32 and independent of pyv4's C++ code:
e4m3 rounding via frexp/rint, e2m1 by nearest grid point with ties to the even
code, the Walsh-Hadamard butterflies in natural (Sylvester) order.
"""

from __future__ import annotations

import contextlib
import linecache
import sys

import numpy as np
import torch

F32 = np.float32
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=F32)


def _scale_exp(block: np.ndarray, floor: float, max_inv: float) -> np.ndarray:
    """ceil(log2(max(amax, floor) * max_inv)) on the fp32 bits (OFF fast_round_scale)."""
    amax = np.maximum(np.abs(block).max(axis=-1), F32(floor)).astype(F32)
    x = (amax * F32(max_inv)).astype(F32)
    bits = x.view(np.uint32)
    return ((bits >> 23) & 0xFF).astype(np.int32) - 127 + ((bits & 0x7FFFFF) != 0).astype(np.int32)


def round_e4m3(a: np.ndarray) -> np.ndarray:
    """Nearest e4m3fn value (ties to even) of |values| <= 448."""
    a = a.astype(F32)
    sign = np.sign(a)
    a = np.abs(a)
    _, ex = np.frexp(a)
    ulp = np.ldexp(F32(1), (ex - 4).astype(np.int32)).astype(F32)
    normal = np.rint(a / ulp) * ulp
    sub = np.rint(a * F32(512)) / F32(512)
    return (sign * np.where(a < F32(2.0**-6), sub, normal)).astype(F32)


def round_e2m1(a: np.ndarray) -> np.ndarray:
    """Nearest e2m1 value (ties to the even code) of |values| <= 6."""
    a = a.astype(F32)
    d = np.abs(np.abs(a)[..., None] - E2M1_GRID)
    best = d.min(axis=-1, keepdims=True)
    cand = d == best
    even = cand & (np.arange(8) % 2 == 0)
    idx = np.where(even.any(-1), even.argmax(-1), cand.argmax(-1))
    return (np.sign(a) * E2M1_GRID[idx]).astype(F32)


def act_quant(x: np.ndarray, block: int, fmt: str = "fp8") -> np.ndarray:
    """Quantize-dequantize along the last axis in blocks (a partial last block is
    its own block): spec §2 act_quant (fmt="fp8") / fp4_act_quant (fmt="fp4")."""
    x = x.astype(F32)
    out = np.empty_like(x)
    mx, floor, inv, rnd = (
        (448.0, 1e-4, F32(1.0 / 448.0), round_e4m3)
        if fmt == "fp8"
        else (6.0, 6.0 * 2.0**-126, F32(1.0 / 6.0), round_e2m1)
    )
    for i0 in range(0, x.shape[-1], block):
        b = x[..., i0 : i0 + block]
        s = np.ldexp(F32(1), _scale_exp(b, floor, inv))[..., None].astype(F32)
        out[..., i0 : i0 + block] = rnd(np.clip(b / s, -mx, mx)) * s
    return out


def hadamard(x: np.ndarray) -> np.ndarray:
    """x · H_n · n^-1/2 along the last axis, butterflies (i, i+h), h = 1, 2, 4, ..."""
    x = x.astype(F32).copy()
    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :] = a + b
        y[..., 1, :] = a - b
        x = y.reshape(*x.shape[:-1], n)
        h *= 2
    return (x * F32(1.0 / np.sqrt(n))).astype(F32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=F32)).to(torch.bfloat16).float().numpy()


def main_row_qat(x: np.ndarray, rope_dim: int) -> np.ndarray:
    """Window KV / compressed row: FP8 QAT of the nope dims, BF16 rope dims."""
    nope = x.shape[-1] - rope_dim
    out = x.astype(F32).copy()
    out[..., :nope] = act_quant(out[..., :nope], 64, "fp8")
    out[..., nope:] = round_bf16(out[..., nope:])
    return out


def index_qat(x: np.ndarray) -> np.ndarray:
    """Indexer key or query head: Hadamard then FP4 QAT, block 32."""
    return act_quant(hadamard(x), 32, "fp4")


@contextlib.contextmanager
def qat_patched(counts: dict | None = None, sites=("window_kv", "compressed", "index_key", "index_query")):
    """transformers' DeepseekV4 with the official QAT rounding on the KV path."""
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as mod

    orig = mod.apply_rotary_pos_emb
    hits = counts if counts is not None else {}

    def patched(x, cos, sin, unsqueeze_dim=1):
        out = orig(x, cos, sin, unsqueeze_dim)
        frame = sys._getframe(1)
        owner = type(frame.f_locals.get("self")).__name__
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
        rope_dim = cos.shape[-1] * 2
        site = None
        if owner == "DeepseekV4Attention" and line.startswith("kv = apply_rotary_pos_emb(kv"):
            site, fn = "window_kv", lambda a: main_row_qat(a, rope_dim)
        elif owner in ("DeepseekV4HCACompressor", "DeepseekV4CSACompressor") and line.startswith("compressed ="):
            site, fn = "compressed", lambda a: main_row_qat(a, rope_dim)
        elif owner == "DeepseekV4Indexer" and line.startswith("compressed ="):
            site, fn = "index_key", index_qat
        elif owner == "DeepseekV4Indexer" and line.startswith("q = apply_rotary_pos_emb(q"):
            site, fn = "index_query", index_qat
        if site is None or site not in sites:
            return out
        hits[site] = hits.get(site, 0) + 1
        arr = fn(out.detach().float().numpy())
        return torch.from_numpy(arr).to(out.dtype)

    mod.apply_rotary_pos_emb = patched
    try:
        yield hits
    finally:
        mod.apply_rotary_pos_emb = orig


def qat_reference_logits(model, tokens) -> np.ndarray:
    """Full forward of `model` (no cache) with the official QAT rounding."""
    import tiny_models

    hits: dict = {}
    with qat_patched(hits):
        out = tiny_models.reference_logits(model, tokens)
    missing = {"window_kv", "compressed", "index_key", "index_query"} - set(hits)
    assert not missing, f"QAT sites never reached (transformers changed?): {missing}"
    return out
