"""Quantizers of the 2- to 6-bit GGML types, minimising the importance-weighted error.

Formats (value of element i of a 256-element super-block; layouts as csrc/quant/blocks.h):

* ``Q2_K`` (84 B): 16 sub-blocks of 16, ``d*sc*q - dmin*m`` with 4-bit ``sc``, ``m``, 2-bit ``q``;
* ``Q3_K`` (110 B): 16 sub-blocks of 16, ``d*(sc-32)*(q-4)`` with 6-bit ``sc``, 3-bit ``q``;
* ``IQ2_XXS`` (66 B): 8 groups of 32, each 4 points of GGML's 256-entry grid of 8 magnitudes
  (8, 25 or 43) with 7 sign bits per point (the 8th is their parity) and a 4-bit scale
  ``s``: ``d*(0.5+s)/4 * grid * sign``;
* ``IQ4_XS`` (136 B): 8 blocks of 32, ``d*(ls-32) * level`` with a 6-bit ``ls`` per block and
  a 4-bit code per element indexing the 16 non-linear IQ4_NL levels (-127 .. 113);
* ``Q5_K`` (176 B): 8 sub-blocks of 32, ``d*sc*q - dmin*m`` with 6-bit ``sc``, ``m``, 5-bit ``q``;
* ``Q6_K`` (210 B): 16 sub-blocks of 16, ``d*sc*(q-32)`` with int8 ``sc``, 6-bit ``q``.

The search follows the approach of GGML's reference quantizers (our own code): each
element weighs ``imatrix[col] * sqrt(sigma2 + x^2)`` (``sigma2`` the super-block's mean
square; without an imatrix the factor is 1); per sub-block a set of candidate scales is
tried, the codes rounded for each and the scale (and min) refitted by weighted least
squares, keeping the fit with the smallest weighted squared error; the sub-block scales
are then quantized against the super-block scale with the same kind of search, weighted
by each sub-block's total weight, and the codes are rounded again for the scales the
decoder will actually use. ``imatrix`` is the per-column mean of x^2 over a calibration
set (llama.cpp's importance matrix, convert/imatrix.py), one row of ``cols`` values per
row of the input (callers expand the per-expert vectors).

This module is the readable reference: the converter runs the C++ port
(csrc/quant/quantize_lowbit.cpp, ``pyv4._core.quantize_lowbit``), which repeats these
float32 operations in the same order and returns the same bytes
(tests/test_quantize_lowbit.py), about 10x faster per core.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

F32 = np.float32


def element_weights(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """[rows, n] weights of each element's squared error, per 256-element super-block."""
    rows, n = x.shape
    sb = x.reshape(rows, n // 256, 256)
    sigma2 = (sb * sb).mean(axis=-1, keepdims=True)
    w = np.sqrt(sigma2 + sb * sb).reshape(rows, n)
    return w if imatrix is None else w * np.asarray(imatrix, F32).reshape(rows, n)


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0).astype(F32)


def _fit_affine(x, w, nmax: int, steps=np.arange(-9, 10) * F32(0.1)):
    """Per row of x (last axis): (scale >= 0, offset >= 0) with x ~ scale*q - offset,
    q in 0..nmax, minimising sum w*(x - scale*q + offset)^2 over candidate roundings."""
    lo = np.minimum(x.min(-1), 0)
    span = x.max(-1) - lo
    best_err = np.full(x.shape[:-1], np.inf, F32)
    best_s = np.zeros(x.shape[:-1], F32)
    best_m = -lo
    sw, swx = w.sum(-1), (w * x).sum(-1)
    for st in steps:
        iscale = _div(F32(nmax) + st, span)
        q = np.clip(np.rint(iscale[..., None] * (x - lo[..., None])), 0, nmax)
        swq, swqq, swqx = (w * q).sum(-1), (w * q * q).sum(-1), (w * q * x).sum(-1)
        det = sw * swqq - swq * swq
        s = _div(sw * swqx - swq * swx, det)
        m = _div(swq * swqx - swqq * swx, det)  # x ~ s*q - m
        neg = m < 0  # an offset below zero is not representable: refit the scale alone
        s = np.where(neg, _div(swqx, swqq), s)
        m = np.where(neg, 0, m)
        ok = (det > 0) & (s > 0)
        err = (w * (s[..., None] * q - m[..., None] - x) ** 2).sum(-1)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, s, best_s)
        best_m = np.where(better, m, best_m)
    return best_s, best_m


def _fit_symmetric(x, w, nmax: int, steps=np.arange(-9, 10) * F32(0.1)):
    """Per row of x: scale with x ~ scale*q, q in -nmax..nmax-1 (the value of largest
    magnitude maps near -nmax), maximising (sum w x q)^2 / sum w q^2."""
    idx = np.abs(x).argmax(-1)
    amax = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    best = np.full(x.shape[:-1], -1.0, F32)
    best_s = np.zeros(x.shape[:-1], F32)
    for st in steps:
        iscale = _div(-(F32(nmax) + st), amax)
        q = np.clip(np.rint(iscale[..., None] * x), -nmax, nmax - 1)
        swqx, swqq = (w * q * x).sum(-1), (w * q * q).sum(-1)
        score = _div(swqx * swqx, swqq)
        better = (swqq > 0) & (score > best)
        best = np.where(better, score, best)
        best_s = np.where(better, _div(swqx, swqq), best_s)
    return best_s


def _super_scale(v, sw, lo: int, hi: int):
    """f16 super-block scale d and integer L in [lo, hi] with v ~ d*L per sub-block
    (last axis), minimising sum sw*(v - d*L)^2 over a few candidate d and one refit."""
    amax_i = np.abs(v).argmax(-1)
    amax = np.take_along_axis(v, amax_i[..., None], -1)[..., 0]
    top = np.where(amax < 0, lo, hi).astype(F32)  # the extreme level the largest value maps to
    best_err = np.full(v.shape[:-1], np.inf, F32)
    best_d = np.zeros(v.shape[:-1], np.float16)
    for f in (0.9, 0.95, 1.0, 1.05, 1.1):
        d0 = _div(amax, top * F32(f))
        q = np.clip(np.rint(_div(v, d0[..., None])), lo, hi)
        d1 = _div((sw * v * q).sum(-1), (sw * q * q).sum(-1))  # refit
        for d in (d0, d1):
            d16 = d.astype(np.float16)
            d32 = d16.astype(F32)
            L = np.clip(np.rint(_div(v, d32[..., None])), lo, hi)
            err = (sw * (v - (d32[..., None] * L).astype(F32)) ** 2).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_d = np.where(better, d16, best_d)
    d32 = best_d.astype(F32)
    L = np.clip(np.rint(_div(v, d32[..., None])), lo, hi).astype(np.int32)
    return best_d, L


def _in_slices(fn, x: np.ndarray, imatrix: np.ndarray | None, block_bytes: int,
               slice_values: int) -> np.ndarray:
    """fn(x rows, imatrix rows) over slices of about slice_values values (bounding the
    search's temporaries), on a thread pool: numpy releases the GIL in its array loops,
    so slices run on several cores. Rows are independent: the result does not depend on
    the slicing."""
    rows, n = x.shape
    step = max(1, slice_values // n)
    out = np.empty((rows, n // 256 * block_bytes), np.uint8)

    def run(r0: int) -> None:
        sl = slice(r0, r0 + step)
        out[sl] = fn(x[sl], None if imatrix is None else imatrix[sl])

    starts = range(0, rows, step)
    if len(starts) == 1:
        run(0)
    else:
        with ThreadPoolExecutor(min(len(starts), os.cpu_count() or 1, 32)) as pool:
            list(pool.map(run, starts))
    return out


def _affine_codes(x, imatrix, sub: int, nmax: int, smax: int):
    """Q2_K / Q5_K: per sub-block of `sub` values x ~ d*sc*q - dmin*m with q in
    0..nmax and sc, m in 0..smax against f16 d, dmin. Returns d16, sc, dm16, m, q
    ([rows, nsb, 256 / sub, sub] codes for the scale and min the decoder forms:
    float32 d*sc, dmin*m)."""
    rows, n = x.shape
    nsb = n // 256
    w = element_weights(x, imatrix).reshape(rows, nsb, 256 // sub, sub)
    b = x.reshape(rows, nsb, 256 // sub, sub).astype(F32)
    scale, mins = _fit_affine(b, w, nmax)
    sw = w.sum(-1)
    d16, sc = _super_scale(scale, sw, 0, smax)
    dm16, mq = _super_scale(mins, sw, 0, smax)
    eff_d = (d16.astype(F32)[..., None] * sc.astype(F32)).astype(F32)
    eff_m = (dm16.astype(F32)[..., None] * mq.astype(F32)).astype(F32)
    q = np.clip(np.rint(_div(b + eff_m[..., None], eff_d[..., None])), 0, nmax).astype(np.uint8)
    return d16, sc, dm16, mq, q


def _symmetric_codes(x, imatrix, nmax: int, slo: int, shi: int):
    """Q3_K / Q6_K: per sub-block of 16 x ~ d*sc*(q - nmax) with q in 0..2 nmax - 1
    and sc in slo..shi against an f16 d. Returns d16, sc, q ([rows, nsb, 16, 16])."""
    rows, n = x.shape
    nsb = n // 256
    w = element_weights(x, imatrix).reshape(rows, nsb, 16, 16)
    b = x.reshape(rows, nsb, 16, 16).astype(F32)
    scale = _fit_symmetric(b, w, nmax)
    d16, sc = _super_scale(scale, w.sum(-1), slo, shi)
    eff = (d16.astype(F32)[..., None] * sc.astype(F32)).astype(F32)
    q = np.clip(np.rint(_div(b, eff[..., None])), -nmax, nmax - 1).astype(np.int32) + nmax
    return d16, sc, q


def _pack2(v: np.ndarray) -> np.ndarray:
    """2-bit values [..., 4, m] -> bytes [..., m], value j at bits 2j."""
    return (v[..., 0, :] | (v[..., 1, :] << 2) | (v[..., 2, :] << 4) | (v[..., 3, :] << 6)).astype(np.uint8)


def q2_k_quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Float rows [rows, n] -> Q2_K bytes [rows, n/256*84]."""
    return _in_slices(_q2_k_rows, x, imatrix, 84, 1 << 18)


def _q2_k_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows, n = x.shape
    nsb = n // 256
    d16, sc, dm16, mq, q = _affine_codes(x, imatrix, 16, 3, 15)
    out = np.empty((rows, nsb, 84), np.uint8)
    out[..., 0:16] = (sc | (mq << 4)).astype(np.uint8)
    # element 128h + 32j + l -> byte 32h + l, bits 2j
    qq = q.reshape(rows, nsb, 2, 4, 32)
    out[..., 16:80] = _pack2(qq).reshape(rows, nsb, 64)
    out[..., 80:82] = d16[..., None].view(np.uint8)
    out[..., 82:84] = dm16[..., None].view(np.uint8)
    return out.reshape(rows, -1)


def pack_q3_k_scales(sc: np.ndarray) -> np.ndarray:
    """[..., 16] unsigned 6-bit scales -> the 12-byte Q3_K field: scale s has its low
    nibble in byte s % 8 (low half for s < 8), its top 2 bits at bit 2*(s // 4) of
    byte 8 + s % 4."""
    sc = sc.astype(np.uint8)
    out = np.zeros(sc.shape[:-1] + (12,), np.uint8)
    out[..., 0:8] = (sc[..., 0:8] & 15) | ((sc[..., 8:16] & 15) << 4)
    hi = sc >> 4
    for k in range(4):
        out[..., 8:12] |= hi[..., 4 * k:4 * k + 4] << (2 * k)
    return out


def q3_k_quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Float rows [rows, n] -> Q3_K bytes [rows, n/256*110]."""
    return _in_slices(_q3_k_rows, x, imatrix, 110, 1 << 18)


def _q3_k_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows, n = x.shape
    nsb = n // 256
    d16, sc, q = _symmetric_codes(x, imatrix, 4, -32, 31)  # q in 0..7
    out = np.empty((rows, nsb, 110), np.uint8)
    qq = q.reshape(rows, nsb, 2, 4, 32)  # element 128h + 32j + l
    hm = np.zeros((rows, nsb, 32), np.int32)
    for h in range(2):
        for j in range(4):
            hm |= (qq[:, :, h, j] >> 2) << (4 * h + j)
    out[..., 0:32] = hm.astype(np.uint8)
    out[..., 32:96] = _pack2(qq & 3).reshape(rows, nsb, 64)
    out[..., 96:108] = pack_q3_k_scales(sc + 32)
    out[..., 108:110] = d16[..., None].view(np.uint8)
    return out.reshape(rows, -1)


def q6_k_quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Float rows [rows, n] -> Q6_K bytes [rows, n/256*210]."""
    return _in_slices(_q6_k_rows, x, imatrix, 210, 1 << 18)


def _q6_k_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows, n = x.shape
    nsb = n // 256
    d16, sc, q = _symmetric_codes(x, imatrix, 32, -128, 127)  # q in 0..63
    qq = q.reshape(rows, nsb, 2, 4, 32)  # element 128h + 32j + l
    out = np.empty((rows, nsb, 210), np.uint8)
    # ql byte 64h + 32 (j % 2) + l: low 4 bits of j (j < 2) in its low nibble, of j + 2 in its high one
    lo = qq & 15
    out[..., 0:128] = (lo[:, :, :, 0:2] | (lo[:, :, :, 2:4] << 4)).astype(np.uint8).reshape(rows, nsb, 128)
    out[..., 128:192] = _pack2(qq >> 4).reshape(rows, nsb, 64)  # qh byte 32h + l: the top 2 bits of j at bits 2j
    out[..., 192:208] = sc.astype(np.int8).view(np.uint8)
    out[..., 208:210] = d16[..., None].view(np.uint8)
    return out.reshape(rows, -1)


def q5_k_quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Float rows [rows, n] -> Q5_K bytes [rows, n/256*176]."""
    return _in_slices(_q5_k_rows, x, imatrix, 176, 1 << 18)


def _q5_k_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    from .quants import _pack_k_scales

    rows, n = x.shape
    nsb = n // 256
    d16, sc, dm16, mq, q = _affine_codes(x, imatrix, 32, 31, 63)
    out = np.empty((rows, nsb, 176), np.uint8)
    out[..., 0:2] = d16[..., None].view(np.uint8)
    out[..., 2:4] = dm16[..., None].view(np.uint8)
    out[..., 4:16] = _pack_k_scales(sc.astype(np.uint8), mq.astype(np.uint8))
    # qh byte l: bit j = the fifth bit of element 32j + l; qs byte 32c + l: sub-block 2c's
    # low nibble, 2c + 1's high one
    out[..., 16:48] = ((q >> 4) << np.arange(8, dtype=np.uint8)[:, None]).sum(-2, dtype=np.uint8)
    lo = (q & 15).reshape(rows, nsb, 4, 2, 32)
    out[..., 48:176] = (lo[:, :, :, 0] | (lo[:, :, :, 1] << 4)).reshape(rows, nsb, 128)
    return out.reshape(rows, -1)


_GRID: np.ndarray | None = None


def iq2xxs_grid() -> np.ndarray:
    """GGML's IQ2_XXS grid [256, 8] (magnitudes 8, 25, 43), as gguf-py carries it."""
    global _GRID
    if _GRID is None:
        from gguf import quants as gq

        gq.IQ2_XXS.init_grid()
        _GRID = np.asarray(gq.IQ2_XXS.grid, F32).reshape(256, 8)
    return _GRID


def iq2_xxs_quantize(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Float rows [rows, n] -> IQ2_XXS bytes [rows, n/256*66]. Needs an importance matrix:
    with 2 bits per weight the error only stays tolerable where it is steered away from
    the columns that matter. Small slices: the grid search holds 256 floats per 8 values."""
    return _in_slices(_iq2_xxs_rows, x, np.asarray(imatrix, F32).reshape(x.shape), 66, 1 << 16)


def _grid_dots(v: np.ndarray, G: np.ndarray) -> np.ndarray:
    """[N, 8] x [256, 8] -> [N, 256]: sum_k v[:, k] * G[:, k], accumulated in k order."""
    out = v[:, :1] * G[:, 0]
    for k in range(1, 8):
        out += v[:, k:k + 1] * G[:, k]
    return out


def _iq2_xxs_rows(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    rows, n = x.shape
    nsb = n // 256
    G = iq2xxs_grid()
    w = element_weights(x, imatrix).reshape(rows, nsb, 8, 4, 8)
    b = x.reshape(rows, nsb, 8, 4, 8).astype(F32)
    # signs: an even count of minus signs per 8; when odd, the element that costs least
    # (smallest w*x^2) takes the wrong sign, i.e. a negative magnitude
    neg = b < 0
    odd = neg.sum(-1) % 2 == 1
    cheap = (w * b * b).argmin(-1)
    flip = odd[..., None] & (np.arange(8) == cheap[..., None])
    sign_bits = neg ^ flip
    a = np.where(flip, -np.abs(b), np.abs(b))
    # per 8: A[g] = sum w a G[g], B[g] = sum w G[g]^2; error(t, g) = sum w a^2 - 2t A + t^2 B;
    # summed k = 0..7 in order (not a BLAS product, whose order is the library's), so the
    # C++ quantizer (csrc/quant/quantize_lowbit.cpp) reproduces the sums bit for bit
    A = _grid_dots((w * a).reshape(-1, 8), G).reshape(rows, nsb, 8, 4, 256)
    B = _grid_dots(w.reshape(-1, 8), G * G).reshape(rows, nsb, 8, 4, 256)

    buf = np.empty_like(A)

    def pick(t):  # best grid point of each 8 for group scales t [rows, nsb, 8]: max of A - t/2 B
        np.multiply(B, (t * F32(0.5))[..., None, None], out=buf)
        np.subtract(A, buf, out=buf)
        return buf.argmax(-1)

    amax = np.abs(a).max(axis=(-1, -2))
    best = np.full(amax.shape, -1.0, F32)
    best_t = np.zeros(amax.shape, F32)
    best_b = np.zeros(amax.shape, F32)
    for f in np.linspace(0.7, 1.4, 15, dtype=F32):
        t = _div(amax, F32(43.0) * f)  # the top magnitude 43 lands on 1/f of the largest value
        idx = pick(t)
        sa = np.take_along_axis(A, idx[..., None], -1)[..., 0].sum(-1)
        sb = np.take_along_axis(B, idx[..., None], -1)[..., 0].sum(-1)
        score = _div(sa * sa, sb)
        better = (sa > 0) & (score > best)
        best = np.where(better, score, best)
        best_t = np.where(better, _div(sa, sb), best_t)
        best_b = np.where(better, sb, best_b)
    # 4-bit group scales t ~ d*(2s+1)/8; a group's error grows by (t - t')^2 sum w G^2
    gw = best_b
    tmax = best_t.max(-1)
    best_err = np.full(tmax.shape, np.inf, F32)
    best_d = np.zeros(tmax.shape, np.float16)
    for f in (0.9, 0.95, 1.0, 1.05, 1.1):
        d16 = _div(tmax * F32(8.0 / 31.0), F32(f)).astype(np.float16)
        d = d16.astype(F32)[..., None]
        s = np.clip(np.rint((_div(best_t * 8, d) - 1) / 2), 0, 15)
        err = (gw * (best_t - d * (F32(0.5) + s) * F32(0.25)) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_d = np.where(better, d16, best_d)
    d = best_d.astype(F32)[..., None]
    s = np.clip(np.rint((_div(best_t * 8, d) - 1) / 2), 0, 15).astype(np.uint32)
    t_eff = (d * (F32(0.5) + s.astype(F32)) * F32(0.25)).astype(F32)  # as the decoder forms it
    idx = pick(t_eff).astype(np.uint32)  # [rows, nsb, 8, 4]
    bits = (sign_bits[..., :7].astype(np.uint32) << np.arange(7, dtype=np.uint32)).sum(-1, dtype=np.uint32)
    word0 = idx[..., 0] | (idx[..., 1] << 8) | (idx[..., 2] << 16) | (idx[..., 3] << 24)
    word1 = bits[..., 0] | (bits[..., 1] << 7) | (bits[..., 2] << 14) | (bits[..., 3] << 21) | (s << 28)
    out = np.empty((rows, nsb, 66), np.uint8)
    out[..., 0:2] = best_d[..., None].view(np.uint8)
    words = np.stack([word0, word1], axis=-1).astype("<u4")  # [rows, nsb, 8, 2]
    out[..., 2:] = words.view(np.uint8).reshape(rows, nsb, 64)
    return out.reshape(rows, -1)


# The 16 non-linear IQ4_NL / IQ4_XS levels (format data: GGML's kvalues_iq4nl,
# csrc/quant/blocks.h kIq4nlValues).
IQ4NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)


def _nearest_level(v: np.ndarray) -> np.ndarray:
    """Index of the IQ4_NL level nearest each value (the first of equals)."""
    return np.abs(v[..., None] - IQ4NL_LEVELS).argmin(-1)


def iq4_xs_quantize(x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Float rows [rows, n] -> IQ4_XS bytes [rows, n/256*136]."""
    return _in_slices(_iq4_xs_rows, x, imatrix, 136, 1 << 17)


def _iq4_xs_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows, n = x.shape
    nsb = n // 256
    w = element_weights(x, imatrix).reshape(rows, nsb, 8, 32)
    b = x.reshape(rows, nsb, 8, 32).astype(F32)
    # per block: the value of largest magnitude maps to levels near the outermost
    # (-127 + st, st = -7..7, i.e. scales a little smaller and larger than the
    # plain max / -127); codes rounded to the nearest level, the scale refitted by
    # weighted least squares, the fit with the best (sum w q x)^2 / sum w q^2 kept
    amax = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)[..., 0]
    best = np.full(amax.shape, -1.0, F32)
    best_s = np.zeros(amax.shape, F32)
    for st in range(-7, 8):
        iscale = _div(F32(st - 127), amax)
        q = IQ4NL_LEVELS[_nearest_level(iscale[..., None] * b)]
        swqx, swqq = (w * q * b).sum(-1), (w * q * q).sum(-1)
        score = _div(swqx * swqx, swqq)
        better = (swqq > 0) & (score > best)
        best = np.where(better, score, best)
        best_s = np.where(better, _div(swqx, swqq), best_s)
    d16, L = _super_scale(best_s, w.sum(-1), -32, 31)
    eff = (d16.astype(F32)[..., None] * L.astype(F32)).astype(F32)  # as the decoder forms it
    codes = _nearest_level(_div(b, eff[..., None])).astype(np.uint8)  # [rows, nsb, 8, 32]
    ls = (L + 32).astype(np.uint16)
    out = np.empty((rows, nsb, 136), np.uint8)
    out[..., 0:2] = d16[..., None].view(np.uint8)
    hi = ((ls >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(-1, dtype=np.uint16)
    out[..., 2:4] = hi[..., None].astype("<u2").view(np.uint8)
    lo = (ls & 15).astype(np.uint8)
    out[..., 4:8] = lo[..., 0::2] | (lo[..., 1::2] << 4)
    out[..., 8:] = (codes[..., :16] | (codes[..., 16:] << 4)).reshape(rows, nsb, 128)
    return out.reshape(rows, -1)
