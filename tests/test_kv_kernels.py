"""KV kernels (csrc/kv/kv_kernels.*): the fast AVX2 (and, where the CPU has it,
AVX-512) kernels against the plain reference loops and against float64 numpy.

* attend: softmax attention of a token's heads over shared rows with the
  per-head sink in the denominator (spec §3.4); fast vs reference to 1e-5 of
  the output scale, both vs float64 numpy, also with logits spread over
  hundreds (underflowing exponentials, sink-dominated heads).
* index_scores: Σ_h w_h·ReLU(q_h·k) over keys (spec §3.6); same tolerances.
* decode_fp4: exact, so fast and reference agree bit for bit (signed zeros
  included) and equal the value table times the UE8M0 scale.
* index_round_fp4: Hadamard + FP4 QAT of an indexer query or key and its
  record; exact, so fast and reference agree bit for bit, equal the numpy QAT
  (tests/qat_reference.py) and the record decodes to the rounded row.
"""

import numpy as np
import pytest

import qat_reference as Q
from attention_reference import attend_numpy
from pyv4 import _core

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)


@pytest.fixture
def kernels():
    """Yields a function that switches between the reference and the fast path."""
    isa, mode = _core.active_isa(), _core.compute_mode()

    def use(path: str):
        if path == "reference":
            _core.set_isa("auto")
            _core.set_compute_mode("reference")
        else:
            isa = "avx2" if path == "fast" else path
            if not _core.isa_supported(isa):
                pytest.skip(f"CPU without {isa}")
            _core.set_isa(isa)
            _core.set_compute_mode("fast")

    yield use
    _core.set_isa(isa)
    _core.set_compute_mode(mode)


# attend has an AVX-512 kernel of its own beside the AVX2 one ("fast").
ATTEND_PATHS = ["reference", "fast"] + (["avx512"] if _core.isa_supported("avx512") else [])


@pytest.mark.parametrize("nh,d,nk", [(4, 512, 640), (7, 64, 1), (5, 72, 33), (1, 13, 2), (8, 16, 0)])
def test_attend(kernels, nh, d, nk):
    rng = np.random.default_rng(nh * 1000 + d + nk)
    q = rng.standard_normal((nh, d)).astype(np.float32)
    rows = rng.standard_normal((nk, d)).astype(np.float32)
    sinks = rng.standard_normal(nh).astype(np.float32)
    scale = 1.0 / np.sqrt(d)
    want = attend_numpy(q, rows, sinks, scale)
    out = {}
    for path in ATTEND_PATHS:
        kernels(path)
        out[path] = _core.kv_attend(q, rows, sinks, scale).reshape(nh, d)
        tol = 1e-5 * max(1.0, np.abs(rows).max(initial=0.0))
        assert np.abs(out[path] - want).max() <= tol, path
    for path in ATTEND_PATHS[1:]:
        assert np.abs(out[path] - out["reference"]).max() <= 1e-5 * max(1.0, np.abs(rows).max(initial=0.0))
        if nk == 0:
            assert not out[path].any()  # only the sink: no row contributes


@pytest.mark.parametrize("spread", [30.0, 300.0])
def test_attend_wide_logits(kernels, spread):
    # Logits spread over hundreds: most exponentials underflow to (near) zero, and
    # for some heads the sink dominates; the SIMD exp must agree with libm there.
    rng = np.random.default_rng(int(spread))
    nh, d, nk = 8, 512, 200
    q = (rng.standard_normal((nh, d)) * spread / np.sqrt(d)).astype(np.float32)
    rows = rng.standard_normal((nk, d)).astype(np.float32)
    sinks = (rng.standard_normal(nh) * spread).astype(np.float32)
    want = attend_numpy(q, rows, sinks, 1.0)
    for path in ATTEND_PATHS:
        kernels(path)
        got = _core.kv_attend(q, rows, sinks, 1.0).reshape(nh, d)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(rows).max(), path


@pytest.mark.parametrize("nih,dim,n", [(64, 128, 513), (12, 64, 7), (8, 32, 1), (3, 40, 2)])
def test_index_scores(kernels, nih, dim, n):
    rng = np.random.default_rng(nih * 100 + dim + n)
    q = rng.standard_normal((nih, dim)).astype(np.float32)
    w = rng.uniform(0.0, 1.0, nih).astype(np.float32)
    keys = rng.standard_normal((n, dim)).astype(np.float32)
    want = (np.maximum(q.astype(np.float64) @ keys.T.astype(np.float64), 0.0) * w[:, None]).sum(axis=0)
    scale = np.abs(q).sum(1).max() * np.abs(keys).max() * w.sum()
    got = {}
    for path in ("reference", "fast"):
        kernels(path)
        got[path] = _core.kv_index_scores(q, w, keys)
        assert np.abs(got[path] - want).max() <= 1e-6 * scale, path
    assert np.abs(got["fast"] - got["reference"]).max() <= 1e-6 * scale


def test_index_scores_rejects_bad_shapes():
    with pytest.raises(ValueError, match="q \\[heads, dim\\]"):
        _core.kv_index_scores(np.zeros((4, 8), np.float32), np.zeros(3, np.float32), np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("width", [128, 32, 64])
def test_decode_fp4_exact(kernels, width):
    rng = np.random.default_rng(width)
    nb = width // 32
    got = {}
    for trial in range(40):
        nib = rng.integers(0, 16, width)
        if trial == 0:
            nib[:16] = np.arange(16)  # every code, +0 and -0 included
        scales = rng.integers(0, 255, nb)
        if trial == 1:
            scales[:] = 0  # the subnormal scale 2^-127
        rec = np.concatenate([(nib[0::2] | (nib[1::2] << 4)).astype(np.uint8), scales.astype(np.uint8)])
        with np.errstate(over="ignore"):  # 6 · 2^127 is inf in fp32, in both kernels too
            want = (np.where(nib & 8, -1.0, 1.0) * E2M1[nib & 7] * np.repeat(np.exp2(scales - 127.0), 32)).astype(np.float32)
        for path in ("reference", "fast"):
            kernels(path)
            got[path] = _core.kv_decode_fp4(rec, width)
            assert np.array_equal(got[path], want), path
            assert np.array_equal(np.signbit(got[path]), (nib & 8) != 0), path
        assert np.array_equal(got["fast"].view(np.uint32), got["reference"].view(np.uint32))


@pytest.mark.parametrize("width,pad", [(128, 4), (32, 0), (64, 0), (512, 12)])
def test_index_round_fp4_exact(kernels, width, pad):
    rng = np.random.default_rng(width + pad)
    nbytes = width // 2 + width // 32 + pad
    for trial in range(60):
        x = (rng.standard_normal(width) * np.exp2(rng.integers(-140, 120))).astype(np.float32)
        if trial == 0:
            x[:] = 0.0  # every block at the amax floor
        elif trial == 1:
            x[:] = 0.0
            x[rng.integers(0, width)] = 3.0  # rotated to equal magnitudes: every value at its block's amax
        elif trial == 2:
            x[rng.integers(0, width, 3)] = [np.nan, np.inf, -np.inf]
        elif trial == 3:
            x = rng.choice(np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], np.float32), width)
            x = Q.hadamard(x).astype(np.float32)  # H is its own inverse: back at or near the e2m1 thresholds
        got = {}
        for path in ("reference", "fast"):
            kernels(path)
            with np.errstate(all="ignore"):
                got[path] = _core.kv_index_round_fp4(x, nbytes)
        for a, b in zip(got["fast"], got["reference"]):
            assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)), trial
        rounded, rec = got["reference"]
        assert not rec[width // 2 + width // 32:].any()  # the padding stays zero
        if np.isfinite(x).all():
            with np.errstate(all="ignore"):
                want = Q.index_qat(x)
            assert np.array_equal(rounded.view(np.uint32), want.astype(np.float32).view(np.uint32)), trial
            assert np.array_equal(_core.kv_decode_fp4(rec[: nbytes - pad], width), rounded), trial


def test_index_round_fp4_rejects_bad_shapes():
    with pytest.raises(ValueError, match="power of two"):
        _core.kv_index_round_fp4(np.zeros(96, np.float32), 64)
    with pytest.raises(ValueError, match="record needs"):
        _core.kv_index_round_fp4(np.zeros(128, np.float32), 67)


def _e4m3_values():
    """The 256 e4m3fn codes' values (0x7F / 0xFF: NaN)."""
    c = np.arange(256)
    e, m = (c >> 3) & 15, c & 7
    mag = np.where(e == 0, m * 2.0**-9, (1 + m / 8) * np.exp2(e - 7.0))
    mag = np.where((c & 0x7F) == 0x7F, np.nan, mag)
    return np.where(c & 0x80, -mag, mag)


@pytest.mark.parametrize("width,rope", [(512, 64), (128, 0), (96, 8), (200, 8), (100, 4)])
def test_decode_fp8_main_exact(kernels, width, rope):
    """The fp8 main-row decode: every code (NaN and -0 included), scales from the
    subnormal 2^-127 to 2^127 (the fast kernel's fallback above 2^119), blocks
    shorter than 64 and than 16: fast and reference agree bit for bit and equal
    the e4m3 value times the scale."""
    rng = np.random.default_rng(width + rope)
    nope = width - rope
    nb = (nope + 63) // 64
    vals = _e4m3_values()
    got = {}
    for trial in range(30):
        codes = rng.integers(0, 256, nope)
        if trial == 0:
            codes[:min(256, nope)] = np.arange(min(256, nope))
        scales = rng.integers(100, 140, nb)
        if trial == 1:
            scales[:] = rng.choice([0, 1, 246, 247, 254, 255], nb)
        rope_vals = rng.standard_normal(rope).astype(np.float32)
        rope_bits = (rope_vals.view(np.uint32) >> 16).astype(np.uint16)
        rec = np.concatenate([codes.astype(np.uint8), rope_bits.view(np.uint8), scales.astype(np.uint8)])
        with np.errstate(over="ignore", invalid="ignore"):  # scale 2^128 is inf in fp32 (0 * inf: NaN)
            s32 = np.exp2(scales - 127.0).astype(np.float32)
            want = np.concatenate([vals[codes].astype(np.float32) * np.repeat(s32, 64)[:nope],
                                   (rope_bits.astype(np.uint32) << 16).view(np.float32)])
        for path in ("reference", "fast"):
            kernels(path)
            got[path] = _core.kv_decode_fp8(rec, width, rope)
            ok = (got[path] == want) | (np.isnan(got[path]) & np.isnan(want))
            assert ok.all(), (path, np.flatnonzero(~ok)[:5])
            assert np.array_equal(np.signbit(got[path]), np.signbit(want)), path
        assert np.array_equal(got["fast"].view(np.uint32), got["reference"].view(np.uint32))


def _fp4_records(rng, n, dim):
    """Random FP4 index records (nibbles, then UE8M0 scales near 2^0) and their values."""
    nib = rng.integers(0, 16, (n, dim))
    scales = rng.integers(120, 134, (n, dim // 32))
    rec = np.concatenate([(nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8), scales.astype(np.uint8)], axis=1)
    vals = np.where(nib & 8, -1.0, 1.0) * E2M1[nib & 7] * np.repeat(np.exp2(scales - 127.0), 32, axis=1)
    return rec, vals


@pytest.mark.parametrize("nih,dim,n,pad", [(64, 128, 70, 0), (16, 64, 9, 2), (16, 32, 1, 0), (48, 256, 9, 4),
                                           (32, 512, 3, 0)])
def test_index_scores_fp4(nih, dim, n, pad):
    """AVX-512 VNNI scoring straight from FP4 records equals the reference
    (index_scores on the decoded rows) to float rounding: the block dots are exact."""
    if not _core.isa_supported("avx512"):
        pytest.skip("CPU without AVX-512 VNNI")
    isa, mode = _core.active_isa(), _core.compute_mode()
    rng = np.random.default_rng(nih + dim + n)
    q, qv = _fp4_records(rng, nih, dim)
    keys, kv = _fp4_records(rng, n, dim)
    w = rng.uniform(-0.5, 1.0, nih).astype(np.float32)
    if pad:  # records padded as RowCodec pads them (e.g. 34 -> 36 bytes)
        q, keys = (np.pad(a, ((0, 0), (0, pad)), constant_values=0xAA) for a in (q, keys))
    want = (np.maximum(qv @ kv.T, 0.0) * w[:, None]).sum(axis=0)
    try:
        _core.set_isa("avx512")
        _core.set_compute_mode("fast")
        got = _core.kv_index_scores_fp4(q, w, keys, dim)
        _core.set_compute_mode("reference")
        ref = _core.kv_index_scores(qv.astype(np.float32), w, kv.astype(np.float32))
        with pytest.raises(ValueError, match="no FP4 scoring kernel"):
            _core.kv_index_scores_fp4(q, w, keys, dim)
    finally:
        _core.set_isa(isa)
        _core.set_compute_mode(mode)
    scale = np.abs(qv).sum(1).max() * np.abs(kv).max() * np.abs(w).sum()
    assert np.abs(got - want).max() <= 1e-6 * scale
    assert np.abs(got - ref).max() <= 1e-6 * scale
