"""numpy codecs for the converter: source formats in, GGML block types out.

Source side (spec §5.3):

* ``bf16_to_f32``, ``FP8_E4M3_LUT`` / ``fp8_to_f32``, ``e8m0_to_f32``;
* ``dequant_fp8(w, scale)``: FP8 e4m3 with 128x128 UE8M0 block scales;
* ``PackedFP4`` + ``dequant_fp4``: the official FP4 experts (two e2m1 codes per byte,
  element 2j in the low nibble, 2j+1 in the high one; one E8M0 exponent per 1x32).

GGML side (little-endian, one row of ``n`` values is ``n / block`` blocks):

* ``Q8_0``  (34 B / 32): f16 ``d`` + 32 int8; value = q * d.
* ``Q4_0``  (18 B / 32): f16 ``d`` + 16 bytes; byte j = q[j] | q[j+16] << 4; value = (q - 8) * d.
* ``Q4_K`` (144 B / 256): f16 ``d``, f16 ``dmin``, 12 bytes of 6-bit sub-block scales and
  mins (8 sub-blocks of 32), 128 bytes of nibbles (chunk c of 64 values: byte c*32+l holds
  sub-block 2c element l low, sub-block 2c+1 element l high); value = d*sc*q - dmin*m.
* ``MXFP4`` (17 B / 32): one E8M0 byte + 16 bytes; byte j = code[j] | code[j+16] << 4, codes
  index the e2m1 table; value = e2m1[code] * 2^(e-127).

``repack_mxfp4`` turns the official FP4 layout into GGML MXFP4 by moving bits only, so the
dequantized values are identical. Every quantizer here is vectorised over whole rows and
works on float32 input; ``quantize(x, type)`` is the single entry point, ``QUANT_BLOCK``
gives the row-length granularity of each type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T

QUANT_BLOCK = {T.F32: 1, T.F16: 1, T.BF16: 1, T.I32: 1, T.Q8_0: 32, T.Q4_0: 32, T.IQ4_NL: 32, T.MXFP4: 32, T.Q4_K: 256,
               T.Q2_K: 256, T.Q3_K: 256, T.IQ2_XXS: 256, T.IQ4_XS: 256,
               T.IQ3_XXS: 256, T.IQ2_XS: 256, T.IQ1_S: 256, T.IQ1_M: 256,  # these 6 and IQ4_NL: load-only
               T.IQ3_S: 256, T.IQ2_S: 256, T.Q5_K: 256, T.Q6_K: 256}
BLOCK_BYTES = {T.F32: 4, T.F16: 2, T.BF16: 2, T.I32: 4, T.Q8_0: 34, T.Q4_0: 18, T.IQ4_NL: 18, T.MXFP4: 17, T.Q4_K: 144,
               T.Q2_K: 84, T.Q3_K: 110, T.IQ2_XXS: 66, T.IQ4_XS: 136,
               T.IQ3_XXS: 98, T.IQ2_XS: 74, T.IQ1_S: 50, T.IQ1_M: 56, T.IQ3_S: 110, T.IQ2_S: 82,
               T.Q5_K: 176, T.Q6_K: 210}

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def row_bytes(t: T, n: int) -> int:
    return n // QUANT_BLOCK[t] * BLOCK_BYTES[t]


def fits(t: T, row_len: int) -> bool:
    return row_len % QUANT_BLOCK[t] == 0


# ---------------------------------------------------------------------------
# source formats
# ---------------------------------------------------------------------------

def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _fp8_e4m3_lut() -> np.ndarray:
    b = np.arange(256, dtype=np.uint32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 7).astype(np.float64)
    val = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e.astype(np.float64) - 7))
    val = np.where((e == 15) & (m == 7), np.nan, val)  # e4m3fn: only S.1111.111 is NaN
    return (sign * val).astype(np.float32)


FP8_E4M3_LUT = _fp8_e4m3_lut()


def _fp8_e5m2_lut() -> np.ndarray:
    return (np.arange(256, dtype=np.uint16) << 8).view(np.float16).astype(np.float32)


FP8_E5M2_LUT = _fp8_e5m2_lut()


def fp8_to_f32(u8: np.ndarray, dtype: str = "F8_E4M3") -> np.ndarray:
    return (FP8_E4M3_LUT if dtype == "F8_E4M3" else FP8_E5M2_LUT)[u8]


def e8m0_to_f32(u8: np.ndarray) -> np.ndarray:
    e = u8.astype(np.int32)
    out = np.ldexp(np.float32(1.0), e - 127).astype(np.float32)
    return np.where(e == 255, np.float32(np.nan), out)


def to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A source float tensor (safetensors dtype string) as float32."""
    if dtype == "BF16":
        return bf16_to_f32(arr)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return fp8_to_f32(arr, dtype)
    return np.asarray(arr, dtype=np.float32)


def scale_to_f32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A scale tensor (E8M0 bytes, or a float) as float32 multipliers."""
    if dtype in ("F8_E8M0", "U8"):
        return e8m0_to_f32(arr)
    return to_f32(arr, dtype)


def dequant_fp8(w: np.ndarray, w_dtype: str, scale: np.ndarray, s_dtype: str, row0: int = 0) -> np.ndarray:
    """FP8 rows ``row0 .. row0+len(w)`` with their 128x128 block scales (the full scale grid)."""
    rows, cols = w.shape
    s = scale_to_f32(scale, s_dtype)
    r = (np.arange(row0, row0 + rows) // 128)
    s = np.repeat(s[r], 128, axis=1)[:, :cols]
    return fp8_to_f32(w, w_dtype) * s


@dataclass
class PackedFP4:
    """Official FP4 rows: ``codes`` uint8 [rows, n/2] (low nibble = even element), ``exps`` uint8 [rows, n/32]."""
    codes: np.ndarray
    exps: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.codes.shape[0], self.codes.shape[1] * 2)


def dequant_fp4(p: PackedFP4) -> np.ndarray:
    rows, half = p.codes.shape
    vals = np.empty((rows, half, 2), dtype=np.float32)
    vals[..., 0] = E2M1[p.codes & 0x0F]
    vals[..., 1] = E2M1[p.codes >> 4]
    vals = vals.reshape(rows, 2 * half)
    s = e8m0_to_f32(p.exps)
    return (vals.reshape(rows, -1, 32) * s[:, :, None]).reshape(rows, 2 * half)


def repack_mxfp4(p: PackedFP4) -> np.ndarray:
    """Lossless official FP4 -> GGML MXFP4 bytes (uint8 [rows, n/32*17])."""
    rows, half = p.codes.shape
    nb = half // 16
    src = p.codes.reshape(rows, nb, 16)
    codes = np.empty((rows, nb, 32), dtype=np.uint8)
    codes[..., 0::2] = src & 0x0F
    codes[..., 1::2] = src >> 4
    out = np.empty((rows, nb, 17), dtype=np.uint8)
    out[..., 0] = p.exps.reshape(rows, nb)
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    return out.reshape(rows, nb * 17)


# ---------------------------------------------------------------------------
# GGML encoders (float32 rows in, raw bytes out)
# ---------------------------------------------------------------------------

def encode_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and llama.cpp's converter do (NaN kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def encode_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 with q = round(x / d16): per element |x - q*d16| <= d16/2, d16 = f16(amax/127)."""
    rows, n = x.shape
    b = x.reshape(rows, n // 32, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d16 = (amax / 127).astype(np.float16)
    d = d16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d > 0, np.rint(b / d), 0)
    q = np.clip(q, -127, 127).astype(np.int8)
    out = np.empty((rows, n // 32, 34), dtype=np.uint8)
    out[..., :2] = d16.view(np.uint8)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(rows, -1)


def encode_q4_0(x: np.ndarray) -> np.ndarray:
    """Q4_0 as ggml's reference: d = (signed value of largest magnitude) / -8."""
    rows, n = x.shape
    b = x.reshape(rows, n // 32, 32)
    imax = np.abs(b).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(b, imax, axis=-1)
    d16 = (mx / -8).astype(np.float16)
    d = (mx / -8).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(d == 0, 0, 1 / d).astype(np.float32)
    q = np.clip(np.trunc(b * inv + np.float32(8.5)), 0, 15).astype(np.uint8)
    out = np.empty((rows, n // 32, 18), dtype=np.uint8)
    out[..., :2] = d16.view(np.uint8)
    out[..., 2:] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(rows, -1)


_E2M1_MID = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)


def encode_mxfp4(x: np.ndarray) -> np.ndarray:
    """Float rows -> GGML MXFP4: exponent as ggml (floor(log2 amax) - 2), nearest e2m1 code."""
    rows, n = x.shape
    b = x.reshape(rows, n // 32, 32)
    amax = np.abs(b).max(axis=-1)
    with np.errstate(divide="ignore"):
        e = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-38))) - 2 + 127, 0)
    e = np.clip(e, 0, 254).astype(np.uint8)
    s = e8m0_to_f32(e)[..., None]
    y = np.abs(b) / s
    idx = np.searchsorted(_E2M1_MID, y, side="left").astype(np.uint8)  # ties go to the lower value
    code = idx | (np.signbit(b).astype(np.uint8) << 3)
    code = np.where(idx == 0, 0, code).astype(np.uint8)
    out = np.empty((rows, n // 32, 17), dtype=np.uint8)
    out[..., 0] = e
    out[..., 1:] = code[..., :16] | (code[..., 16:] << 4)
    return out.reshape(rows, -1)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per super-block -> the 12-byte Q4_K scale field."""
    out = np.empty(sc.shape[:-1] + (12,), dtype=np.uint8)
    lo_s, hi_s = sc[..., :4], sc[..., 4:]
    lo_m, hi_m = m[..., :4], m[..., 4:]
    out[..., 0:4] = lo_s | ((hi_s >> 4) << 6)
    out[..., 4:8] = lo_m | ((hi_m >> 4) << 6)
    out[..., 8:12] = (hi_s & 0x0F) | ((hi_m & 0x0F) << 4)
    return out


def q4_k_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float rows -> (Q4_K bytes, the float32 values those bytes decode to).

    Per 32-value sub-block: min/max fit (the min clamped to <= 0), then one least-squares
    refit of scale and min on the chosen codes; the 8 scales and mins are stored as 6-bit
    multiples of the super-block's f16 ``d`` and ``dmin``.
    """
    rows, n = x.shape
    b = x.reshape(rows, n // 256, 8, 32).astype(np.float32)
    lo = np.minimum(b.min(axis=-1), 0.0)
    hi = b.max(axis=-1)
    scale = (hi - lo) / 15
    mins = -lo
    # one refinement: codes from the min/max fit, then least-squares (scale, min)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.where(scale[..., None] > 0, np.clip(np.rint((b - lo[..., None]) / scale[..., None]), 0, 15), 0)
        nq = 32.0
        sq, sqq = q0.sum(-1), (q0 * q0).sum(-1)
        sx, sqx = b.sum(-1), (q0 * b).sum(-1)
        det = nq * sqq - sq * sq
        s_ls = (nq * sqx - sq * sx) / det
        m_ls = -(sqq * sx - sq * sqx) / det  # value = s*q - m
    ok = (det > 0) & (s_ls > 0) & (m_ls >= 0) & np.isfinite(s_ls) & np.isfinite(m_ls)
    scale = np.where(ok, s_ls, scale)
    mins = np.where(ok, m_ls, mins)

    d16 = (scale.max(axis=-1) / 63).astype(np.float16)
    dm16 = (mins.max(axis=-1) / 63).astype(np.float16)
    d, dm = d16.astype(np.float32), dm16.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[..., None] > 0, np.clip(np.rint(scale / d[..., None]), 0, 63), 0).astype(np.uint8)
        mq = np.where(dm[..., None] > 0, np.clip(np.rint(mins / dm[..., None]), 0, 63), 0).astype(np.uint8)
    # effective values exactly as the decoder forms them (float32: d*sc, dmin*m, then d*q - dm)
    eff_d = (d[..., None] * sc.astype(np.float32)).astype(np.float32)
    eff_m = (dm[..., None] * mq.astype(np.float32)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff_d[..., None] > 0, np.rint((b + eff_m[..., None]) / eff_d[..., None]), 0)
    q = np.clip(q, 0, 15).astype(np.uint8)
    vals = (eff_d[..., None] * q.astype(np.float32) - eff_m[..., None]).astype(np.float32)

    nsb = n // 256
    out = np.empty((rows, nsb, 144), dtype=np.uint8)
    out[..., 0:2] = d16[..., None].view(np.uint8)
    out[..., 2:4] = dm16[..., None].view(np.uint8)
    out[..., 4:16] = _pack_k_scales(sc, mq)
    qq = q.reshape(rows, nsb, 4, 2, 32)
    out[..., 16:] = (qq[:, :, :, 0, :] | (qq[:, :, :, 1, :] << 4)).reshape(rows, nsb, 128)
    return out.reshape(rows, -1), vals.reshape(rows, n)


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    return q4_k_quantize(x)[0]


_ENCODERS = {
    T.Q8_0: encode_q8_0,
    T.Q4_0: encode_q4_0,
    T.MXFP4: encode_mxfp4,
    T.Q4_K: encode_q4_k,
}
# the importance-weighted ones: the C++ search in pyv4._core (csrc/quant/quantize_lowbit.cpp),
# byte for byte the numpy reference's in convert/quants_lowbit.py, on all cores
_WEIGHTED = (T.Q2_K, T.Q3_K, T.IQ2_XXS, T.IQ4_XS, T.Q5_K, T.Q6_K)


def quantize(x: np.ndarray, t: T, imatrix: np.ndarray | None = None) -> np.ndarray:
    """float32 array (last dim = row) -> raw values of GGML type ``t``, [rows, row] (rows: the
    leading dims flattened).
    ``imatrix``: per-element importance [rows, n] for the low-bit types (IQ2_XXS needs it)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[-1] if x.ndim else 1
    x2 = x.reshape(-1, n)
    if t == T.F32:
        return x2
    if t == T.F16:
        with np.errstate(over="ignore"):
            h = x2.astype(np.float16)
        if np.isinf(h).any() and not np.isinf(x2).any():
            raise OverflowError(f"values beyond the F16 range ({float(np.abs(x2).max()):.3g})")
        return h
    if t == T.BF16:
        return encode_bf16(x2)
    if t not in _ENCODERS and t not in _WEIGHTED:
        raise ValueError(f"no encoder for {t.name}")
    if n % QUANT_BLOCK[t]:
        raise ValueError(f"row of {n} values is not a multiple of the {t.name} block {QUANT_BLOCK[t]}")
    if t in _WEIGHTED:
        from .._core import quantize_lowbit  # the core ships with the converter (pyv4.convert)

        if t == T.IQ2_XXS and imatrix is None:
            raise ValueError("IQ2_XXS needs an importance matrix")
        qw = None if imatrix is None else np.asarray(imatrix, np.float32).reshape(x2.shape)
        return quantize_lowbit(t.name, x2, qw, threads=0)
    return _ENCODERS[t](x2)
