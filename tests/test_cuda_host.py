"""The CUDA kernels' block math (csrc/cuda/block_math.h), run on the host.

The GPU kernels decode weights and quantize activations with __host__ __device__
functions; the bindings call the same functions on the CPU, so these checks run
on every build, with or without CUDA or a GPU:

* element decode (the GEMM's and cuda_dequantize's) and group decode (the
  GEMV's packed int8 codes with d, m) equal the scalar reference
  `quant_dequantize` bit for bit, for every weight type and any finite scale;
* the activation quantization is the CPU fast path's rule (max|x|/127,
  round half to even), checked bit for bit against numpy float32;
* the integer GEMV's arithmetic (dp4a group dots) stays within the same error
  bound as the CPU's integer kernels (quant_tools.check_fast);
* the element decode of kv="fp8" records (e4m3 + UE8M0 main rows, FP4 indexer
  keys) equals RowCodec::decode bit for bit.
"""

import zlib

import numpy as np
import pytest

from pyv4 import _core
from quant_tools import BLOCK, F16_AT, GPU_INT_TYPES, GPU_TYPES, LOWBIT, check_fast, random_weight, reference_dequant


DECODE_CASES = [(t, "elem") for t in GPU_TYPES] + [(t, "group") for t in sorted(GPU_INT_TYPES)]


@pytest.mark.parametrize("type_name,via", DECODE_CASES)
def test_decode_matches_reference(type_name, via):
    rng = np.random.default_rng(11)
    bs, _ = BLOCK[type_name]
    n = 256 * 32 if type_name == "MXFP4" else 64 * max(bs, 32)
    raw = random_weight(type_name, 1, n, rng, full_range=True).reshape(-1)
    if type_name == "MXFP4":
        raw[0:17 * 256:17] = np.arange(256)  # every E8M0 exponent, subnormal halves included
    if type_name in LOWBIT:
        # boundary super-blocks: all bits set (top codes and scales, every IQ2_XXS sign
        # index 127), all clear, alternating; their f16 scales stay finite
        blocks = raw.reshape(-1, LOWBIT[type_name])
        for k, pat in enumerate((0xFF, 0x00, 0xAA, 0x55)):
            keep = {off + j: blocks[k, off + j] for off in F16_AT[type_name] for j in (0, 1)}
            blocks[k, :] = pat
            for i, v in keep.items():
                blocks[k, i] = v
    with np.errstate(over="ignore"):  # MXFP4 e = 255 overflows to inf on both sides
        ref = _core.quant_dequantize(type_name, raw, n)
        ours = _core.cuda_host_dequantize(type_name, raw, n, via)
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_e2m1_codes():
    # MXFP4 with scale 1 (e = 127; GGML halves it against the doubled codes): code c is E2M1[c].
    raw = np.zeros(17, np.uint8)
    raw[0] = 127
    raw[1:9] = np.arange(8) | (np.arange(8, 16) << 4)
    v = _core.cuda_host_dequantize("MXFP4", raw, 32, "group")
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert list(v[:8]) == e2m1 and list(v[16:24]) == [-x for x in e2m1]


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError):
        _core.cuda_host_dequantize("Q8_0", np.zeros(34, np.uint8), 64)  # buffer too small
    with pytest.raises(ValueError):
        _core.cuda_host_dequantize("F16", np.zeros(64, np.uint8), 32, "group")
    with pytest.raises(ValueError):
        _core.cuda_host_dequantize("Q8_0", np.zeros(34, np.uint8), 32, "rows")


def _quantize_numpy(x):
    """The CPU fast path's rule in float32: dx = amax/127, q = rint(x * (127/amax))."""
    n, cols = x.shape
    g = x.reshape(n, cols // 32, 32)
    amax = np.abs(g).max(axis=2)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(g * inv[:, :, None]).astype(np.int8)
    qsum = q.astype(np.int32).reshape(n, cols // 32, 2, 16).sum(axis=3)  # per half of 16
    return q.reshape(n, cols), (amax / np.float32(127.0)).astype(np.float32), qsum


def test_quantize_act_matches_rule():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[0, 32:64] = 0.0                      # a zero group: dx = 0, q = 0
    x[1, :32] = np.float32(2.5) * np.sign(x[1, :32])  # every element at max|x|: q = +-127
    x[2, 64:96] *= np.float32(1e-30)       # tiny values (127 / amax is large but finite)
    q, dx, qsum = _core.cuda_host_quantize_act(x)
    q_ref, dx_ref, qsum_ref = _quantize_numpy(x)
    assert np.array_equal(q, q_ref)
    assert np.array_equal(dx.view(np.uint32), dx_ref.view(np.uint32))
    assert np.array_equal(qsum, qsum_ref)
    assert np.all(np.abs(q[1, :32]) == 127) and not q[0, 32:64].any()


@pytest.mark.parametrize("n_tokens", [1, 3, 9])
@pytest.mark.parametrize("type_name", sorted(GPU_INT_TYPES))
def test_gemv_arithmetic_within_bound(type_name, n_tokens):
    rng = np.random.default_rng(zlib.crc32(f"{type_name}-{n_tokens}".encode()))
    rows, cols = 19, 512
    raw = random_weight(type_name, rows, cols, rng)
    W = reference_dequant(raw, type_name, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, :32] *= 10.0
    x[:, 256 + 16:256 + 32] *= -5.0  # one half group of 16 (Q2_K / Q3_K scale) with larger ones
    if n_tokens > 1:
        x[1, :32] = 0.0
    y = _core.cuda_host_gemv(type_name, raw, rows, cols, x)
    assert y.shape == (n_tokens, rows)
    check_fast(type_name, W, x, y)


def test_gemv_host_rejects_float_types():
    with pytest.raises(ValueError):
        _core.cuda_host_gemv("F32", np.zeros(128, np.uint8), 1, 32, np.zeros((1, 32), np.float32))


@pytest.mark.parametrize("kind,width,rope", [("main", 512, 64), ("main", 200, 72), ("index", 128, 0)])
def test_kv_record_decode(kind, width, rope):
    # kv="fp8" records (spec §4.2) decoded by the GPU's element decode equal
    # RowCodec::decode bit for bit, over magnitudes from subnormal-scale to large.
    rng = np.random.default_rng(width + rope)
    for mag in (1e-30, 1e-6, 1.0, 1e4):
        x = (rng.standard_normal(width) * mag).astype(np.float32)
        x[:5] = 0.0
        _, decoded, _ = _core.kv_codec_roundtrip("fp8", kind, x, rope)
        rec = _core.kv_codec_encode("fp8", kind, x, rope)
        got = _core.cuda_host_decode_kv(kind, rec, width, rope)
        assert np.array_equal(got.view(np.uint32), decoded.view(np.uint32)), mag
    with pytest.raises(ValueError):
        _core.cuda_host_decode_kv(kind, rec[:-1], width, rope)


def test_fp8_and_ue8m0_values():
    # every e4m3 code next to the CPU's table (through a main record of 64 nope
    # dims with scale byte 127 = 2^0) and the UE8M0 extremes through the scale byte
    rec = np.zeros(64 + 2 * 64 + 1, np.uint8)
    rec = np.concatenate([rec, np.zeros((-rec.size) % 8, np.uint8)])
    rec[128 + 64] = 127
    for lo in (0, 64, 128, 192):
        rec[:64] = np.arange(lo, lo + 64)
        got = _core.cuda_host_decode_kv("main", rec, 128, 64)[:64]
        want = np.array([_fp8(c) for c in range(lo, lo + 64)], np.float32)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    rec[:64] = 0x38  # 1.0
    for e, scale in ((0, 2.0 ** -127), (1, 2.0 ** -126), (254, 2.0 ** 127)):
        rec[128 + 64] = e
        assert _core.cuda_host_decode_kv("main", rec, 128, 64)[0] == np.float32(scale)


def _fp8(c):
    """e4m3fn by its definition: 1 sign, 4 exponent (bias 7), 3 mantissa bits."""
    e, m = (c >> 3) & 15, c & 7
    if c & 0x7F == 0x7F:
        return np.nan
    v = m * 2.0 ** -9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
    return -v if c & 0x80 else v


def test_cuda_available_reports_a_reason():
    ok, reason = _core.cuda_available()
    assert isinstance(ok, bool) and reason
    if not _core.cuda_built:
        assert (ok, reason) == (False, "built without CUDA")
    elif not ok:
        # every device op then raises a RuntimeError that says why
        with pytest.raises(RuntimeError, match=reason.split(" (")[0]):
            _core.cuda_swiglu(np.zeros(4, np.float32), np.zeros(4, np.float32), 0.0)
