"""CUDA ops (csrc/cuda/) against the CPU reference, on a machine with a GPU.

Each test runs one GPU op on numpy inputs (copied to the device and back)
and compares it with the CPU path it mirrors, printing the op's worst error
(`pytest -s` shows the "[cuda]" lines; bench/gpu_check.sh runs with -s):

* cuda_dequantize: the element decode of every weight type equals
  quant_dequantize bit for bit (any finite scale);
* cuda_matmul, GEMV (<= 8 tokens at a time, integer types on int8 activations
  with dp4a): within the CPU integer kernels' bound of the float64 product
  (quant_tools.check_fast), and equal to the host run of the same arithmetic
  (cuda_host_gemv) up to fp32 summation order;
* cuda_matmul, GEMM: integer types on int8 tensor cores with the GEMV's
  quantized activations (its bound, and equal to cuda_host_gemv up to fp32
  summation order), float types as fp32 tiles (the fp32-dot bound);
* cuda_moe_matmul (routed experts grouped by expert): each row equal to its
  token's product alone with the kernel of its group size;
* RMSNorm, RoPE (plain and YaRN-like tables, both directions), clamped SwiGLU:
  against ops_rms_norm / ops_rope / ops_swiglu within a few ulps;
* attention with sink softmax over gathered rows (fp32, or kv="fp8" records
  decoded on the GPU): against kv_attend on the gathered rows and float64
  numpy (tolerances of tests/test_kv_kernels.py);
* the kv="fp8" QAT rounding and records (RowCodec round + encode): bit for bit;
* mHC (hc_pre with the Sinkhorn, hc_post, hc_head) and the compressor's block
  pooling: against ops_hc_* / ops_compressor_pool (the CPU's code, which
  tests/test_model_ops.py checks against numpy);
* indexer scores from FP4 key records: against kv_index_scores on the decoded
  keys; the top-k of scores: the same indices as select_topk (ops_select_topk).

Without a usable device every test skips, saying why (cuda_available()).
"""

import zlib

import numpy as np
import pytest

from attention_reference import attend_numpy
from pyv4 import _core
from quant_tools import BLOCK, GPU_INT_TYPES, GPU_TYPES, check_fast, random_weight, reference_dequant
from test_model_ops import hc_inputs, pool_inputs

_OK, _REASON = _core.cuda_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"no CUDA device: {_REASON}")


def report(op, err, scale=None):
    """Prints an op's worst error (absolute, and relative to `scale` if given)."""
    rel = f", {err / scale:.3e} of the output scale" if scale else ""
    print(f"\n[cuda] {op}: max abs error {err:.3e}{rel}")


def test_device_named():
    print(f"\n[cuda] device: {_REASON}")
    assert _OK and _REASON
    info = _core.cuda_device_info()
    assert info["name"] in _REASON and info["sm_count"] > 0 and info["clock_khz"] > 0
    assert f"sm_{info['compute_capability'][0]}{info['compute_capability'][1]}" in _REASON


def test_copy_time_scales_with_bytes():
    # device-to-device copies: a 64x larger copy takes longer, and no copy
    # beats 20 TB/s (a timing that measured nothing would)
    small, big = _core.cuda_copy_time(16 << 20, 5), _core.cuda_copy_time(1 << 30, 5)
    print(f"\n[cuda] device-to-device copy: {2 * (1 << 30) / big / 1e9:.0f} GB/s (reads + writes)")
    assert 0 < small < big and 2 * (1 << 30) / big < 20e12
    with pytest.raises(ValueError):
        _core.cuda_copy_time(0)


def test_cuda_errors_are_runtime_errors():
    # a CUDA error becomes a RuntimeError naming the error, the call and its line
    _core.cuda_alloc(1 << 20)
    with pytest.raises(RuntimeError, match=r"cudaErrorMemoryAllocation.*cudaMalloc of \d+ bytes at buffer\.cu:\d+"):
        _core.cuda_alloc(1 << 60)
    _core.cuda_alloc(1 << 20)  # the error is not sticky: the device still works


# ---------------------------------------------------------------- weights

@pytest.mark.parametrize("type_name", GPU_TYPES)
def test_dequantize_bit_exact(type_name):
    rng = np.random.default_rng(21)
    bs, _ = BLOCK[type_name]
    rows, cols = 7, 8 * max(bs, 32)
    raw = random_weight(type_name, rows, cols, rng, full_range=True)
    ref = reference_dequant(raw, type_name, rows, cols)  # MXFP4 e = 255: inf on both sides
    got = _core.cuda_dequantize(type_name, raw, rows, cols)
    assert got.shape == (rows, cols)
    differ = int(np.count_nonzero(got.view(np.uint32) != ref.view(np.uint32)))
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
        diff = np.where(np.isfinite(ref), got - ref, 0.0)
    report(f"dequantize {type_name}", float(np.max(np.abs(diff))))
    assert differ == 0, f"{differ} elements differ in their bits"


def _cols(type_name, big):
    if big:
        return 4096
    if BLOCK[type_name][0] == 256:  # super-block types
        return 512
    return 160 if type_name in GPU_INT_TYPES else 100  # not a multiple of 32 for the float types


def _case(type_name, n_tokens, big, seed):
    rng = np.random.default_rng(seed)
    rows, cols = (300 if big else 37), _cols(type_name, big)
    raw = random_weight(type_name, rows, cols, rng)
    W = reference_dequant(raw, type_name, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, :32] *= 10.0  # one group with larger activations
    if n_tokens > 1:
        x[1, :32] = 0.0  # an all-zero group (dx = 0)
    return raw, W, x, rows, cols


def _rel_err(y, W, x):
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    scale = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T + 1e-30
    return float(np.max(np.abs(y - ref) / scale))


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("n_tokens", [1, 3, 8, 13])
@pytest.mark.parametrize("type_name", GPU_TYPES)
def test_matmul_gemv(type_name, n_tokens, big):
    raw, W, x, rows, cols = _case(type_name, n_tokens, big, zlib.crc32(f"{type_name}-{n_tokens}-{big}".encode()))
    y = _core.cuda_matmul(type_name, raw, rows, cols, x, "gemv")
    assert y.shape == (n_tokens, rows)
    report(f"gemv {type_name} {n_tokens} tok [{rows}x{cols}]", 0.0 if not y.size else
           float(np.max(np.abs(y - x.astype(np.float64) @ W.astype(np.float64).T))))
    check_fast(type_name, W, x, y)
    if type_name in GPU_INT_TYPES:
        # the same integer dots as the host run of the block math: only the
        # order of the fp32 sums over groups differs
        host = _core.cuda_host_gemv(type_name, raw, rows, cols, x)
        scale = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T + 1e-30
        assert np.max(np.abs(y - host) / scale) <= 1e-5


@pytest.mark.parametrize("n_tokens", [1, 13, 64, 130])
@pytest.mark.parametrize("type_name", GPU_TYPES)
def test_matmul_gemm(type_name, n_tokens):
    raw, W, x, rows, cols = _case(type_name, n_tokens, n_tokens == 130, 1000 + n_tokens)
    y = _core.cuda_matmul(type_name, raw, rows, cols, x, "gemm")
    assert y.shape == (n_tokens, rows)
    err = _rel_err(y, W, x)
    report(f"gemm {type_name} {n_tokens} tok [{rows}x{cols}]", err, 1.0)
    if type_name in GPU_INT_TYPES:
        # int8 tensor cores on the GEMV's quantized activations: its bound, and
        # the host run of the same integer dots up to the order of fp32 sums
        check_fast(type_name, W, x, y)
        host = _core.cuda_host_gemv(type_name, raw, rows, cols, x)
        scale = np.abs(x.astype(np.float64)) @ np.abs(W.astype(np.float64)).T + 1e-30
        assert np.max(np.abs(y - host) / scale) <= 1e-5
    else:
        # decoded weights are exact and x is not quantized: an fp32 dot's error
        check_fast("F32", W, x, y)


@pytest.mark.parametrize("n_tokens", [4, 40])
def test_matmul_auto_picks_a_kernel(n_tokens):
    raw, W, x, rows, cols = _case("Q8_0", n_tokens, False, 5)
    y = _core.cuda_matmul("Q8_0", raw, rows, cols, x)
    want = _core.cuda_matmul("Q8_0", raw, rows, cols, x, "gemv" if n_tokens <= 8 else "gemm")
    assert np.array_equal(y, want)


@pytest.mark.parametrize("type_name", ["MXFP4", "Q4_K", "Q8_0", "BF16"])
def test_moe_matmul_grouped(type_name):
    # 6 experts, 40 tokens x 2 routes: one expert gets > 8 tokens (its group runs
    # the GEMM), others few (GEMV), one none. Each row equals its token's product
    # alone with the kernel of its group, bit for bit, and is within the bound.
    rng = np.random.default_rng(9)
    E, rows, cols, n = 6, 24, 256, 40
    raw = random_weight(type_name, E * rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    tokens = np.repeat(np.arange(n), 2).astype(np.int32)
    experts = rng.choice([0, 1, 2, 4, 5], size=2 * n, p=[0.6, 0.1, 0.1, 0.1, 0.1]).astype(np.int32)
    got = _core.cuda_moe_matmul(type_name, raw, E, rows, cols, x, tokens, experts)
    assert got.shape == (2 * n, rows)
    counts = np.bincount(experts, minlength=E)
    assert counts[0] > 8 and counts[3] == 0
    worst = 0.0
    for i, (t, e) in enumerate(zip(tokens, experts)):
        slice_raw = raw[e * rows:(e + 1) * rows]
        kernel = "gemv" if counts[e] <= 8 else "gemm"
        alone = _core.cuda_matmul(type_name, slice_raw, rows, cols, x[t:t + 1], kernel)[0]
        assert np.array_equal(got[i], alone), (i, e, kernel)
        W = reference_dequant(slice_raw, type_name, rows, cols)
        # both kernels of an integer type work on the int8-quantized activations
        # (the GEMM is gemm_int8.cu, not an fp32 dot): the integer bound for
        # those, the fp32-dot bound for BF16
        check_fast(type_name, W, x[t:t + 1], got[i:i + 1])
        worst = max(worst, float(np.max(np.abs(got[i] - W.astype(np.float64) @ x[t].astype(np.float64)))))
    report(f"moe_matmul {type_name}", worst)
    with pytest.raises(ValueError):
        _core.cuda_moe_matmul(type_name, raw, E, rows, cols, x, tokens, np.full_like(experts, E))


def test_matmul_rejects_bad_input():
    with pytest.raises(ValueError):
        _core.cuda_matmul("Q8_0", np.zeros(34, np.uint8), 1, 32, np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError):
        _core.cuda_matmul("Q8_0", np.zeros(34, np.uint8), 1, 32, np.zeros((1, 32), np.float32), "tiles")
    with pytest.raises(ValueError):
        _core.cuda_matmul("I32", np.zeros(128, np.uint8), 1, 32, np.zeros((1, 32), np.float32))


# ---------------------------------------------------------------- small ops

@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm(weighted):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 4096)) * 3).astype(np.float32)
    w = rng.standard_normal(4096).astype(np.float32) if weighted else None
    ref = _core.ops_rms_norm(x, w, 1e-6)
    got = _core.cuda_rms_norm(x, w, 1e-6)
    err = float(np.max(np.abs(got - ref)))
    report(f"rms_norm weighted={weighted}", err, float(np.max(np.abs(ref))))
    assert err <= 1e-6 * np.max(np.abs(ref))


def _inv_freq(kind, half):
    k = np.arange(half, dtype=np.float32)
    plain = (np.float32(1.0) / np.power(np.float32(10000.0), 2 * k / np.float32(2 * half))).astype(np.float32)
    if kind == "plain":
        return plain
    # YaRN-shaped: unscaled at the fast end, /16 at the slow end, a ramp between
    ramp = np.clip((k - 4) / 20.0, 0.0, 1.0).astype(np.float32)
    return (plain / 16 * ramp + plain * (1 - ramp)).astype(np.float32)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("kind", ["plain", "yarn"])
def test_rope(kind, inverse):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((7, 192)).astype(np.float32)
    pos = np.array([0, 1, 5, 1000, 65535, 1_000_000, 3], np.int64)
    inv_freq = _inv_freq(kind, 32)
    ref = _core.ops_rope(v, pos, inv_freq, inverse)
    got = _core.cuda_rope(v, pos, inv_freq, inverse)
    assert np.array_equal(got[:, :128], v[:, :128])  # only the last 2 * half dims rotate
    err = float(np.max(np.abs(got - ref)))
    report(f"rope {kind} inverse={inverse}", err, float(np.max(np.abs(v))))
    assert err <= 1e-6 * np.max(np.abs(v))
    back = _core.cuda_rope(got, pos, inv_freq, not inverse)
    assert np.max(np.abs(back - v)) <= 1e-5 * np.max(np.abs(v))


@pytest.mark.parametrize("limit", [0.0, 7.0])
def test_swiglu(limit):
    rng = np.random.default_rng(6)
    g = (rng.standard_normal(10_000) * 8).astype(np.float32)
    u = (rng.standard_normal(10_000) * 8).astype(np.float32)
    g[:3] = [-100.0, 100.0, 0.0]  # exp(-g) overflows / vanishes
    ref = _core.ops_swiglu(g, u, limit)
    got = _core.cuda_swiglu(g, u, limit)
    err = np.abs(got - ref)
    report(f"swiglu limit={limit}", float(np.max(err)), float(np.max(np.abs(ref))))
    assert np.all(err <= 2e-6 * np.abs(ref) + 1e-30)


# ---------------------------------------------------------------- attention

@pytest.mark.parametrize("nh,d,nk,spread", [(64, 512, 640, 1.0), (7, 64, 1, 1.0), (5, 72, 33, 1.0),
                                            (8, 16, 0, 1.0), (8, 512, 200, 30.0), (8, 512, 200, 300.0)])
def test_attend_gathered(nh, d, nk, spread):
    rng = np.random.default_rng(nh * 1000 + d + nk + int(spread))
    pool = rng.standard_normal((nk + 9, d)).astype(np.float32)
    idx = rng.integers(0, nk + 9, size=nk).astype(np.int32)  # gathered, repeats allowed
    q = (rng.standard_normal((nh, d)) * spread / np.sqrt(d)).astype(np.float32)
    sinks = (rng.standard_normal(nh) * spread).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    rows = pool[idx]
    got = _core.cuda_attend(q, pool, idx, sinks, scale)
    assert got.shape == (nh, d)
    cpu = _core.kv_attend(q, rows, sinks, scale).reshape(nh, d)
    want = attend_numpy(q, rows, sinks, scale)
    tol = 1e-5 * max(1.0, float(np.abs(rows).max(initial=0.0)))
    err = float(np.max(np.abs(got - cpu)))
    report(f"attend nh={nh} d={d} nk={nk} spread={spread}", err, tol / 1e-5)
    assert err <= tol
    assert np.max(np.abs(got - want)) <= tol
    if nk == 0:
        assert not got.any()


@pytest.mark.parametrize("nh,nk", [(64, 300), (3, 1), (4, 0)])
def test_attend_fp8_records(nh, nk):
    # main KV records of kv="fp8" (584 B: 448 e4m3 dims, 64 bf16 rope dims), decoded
    # on the GPU as they are read, against the CPU on the decoded rows
    rng = np.random.default_rng(nh + nk)
    d, rope = 512, 64
    pool = rng.standard_normal((nk + 5, d)).astype(np.float32)
    recs = np.stack([_core.kv_codec_encode("fp8", "main", r, rope) for r in pool])
    rows = np.stack([_core.kv_codec_roundtrip("fp8", "main", r, rope)[1] for r in pool])
    idx = rng.integers(0, nk + 5, size=nk).astype(np.int32)
    q = (rng.standard_normal((nh, d)) / np.sqrt(d)).astype(np.float32)
    sinks = rng.standard_normal(nh).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    got = _core.cuda_attend_fp8(q, recs, idx, sinks, scale, rope)
    cpu = _core.kv_attend(q, rows[idx], sinks, scale).reshape(nh, d)
    tol = 1e-5 * max(1.0, float(np.abs(rows).max()))
    err = float(np.max(np.abs(got - cpu)))
    report(f"attend fp8 records nh={nh} nk={nk}", err, tol / 1e-5)
    assert err <= tol
    # the same as fp32 attention over the decoded rows, bit for bit
    assert np.array_equal(got, _core.cuda_attend(q, rows, idx, sinks, scale))


@pytest.mark.parametrize("kind,width,rope", [("main", 512, 64), ("main", 200, 72), ("index", 128, 0),
                                             ("index", 64, 0)])
def test_kv_encode_fp8(kind, width, rope):
    # the QAT rounding and the record bytes of kv="fp8" rows, GPU vs CPU, bit for bit
    rng = np.random.default_rng(width + rope)
    rows = np.concatenate([(rng.standard_normal((8, width)) * mag).astype(np.float32)
                           for mag in (1e-30, 1e-6, 1.0, 300.0, 1e6)])
    rows[0, :] = 0.0
    rounded, recs = _core.cuda_kv_encode(kind, rows, rope)
    for i, r in enumerate(rows):
        want_rounded = _core.kv_codec_roundtrip("fp8", kind, r, rope)[0]
        assert np.array_equal(rounded[i].view(np.uint32), want_rounded.view(np.uint32)), i
        assert np.array_equal(recs[i], _core.kv_codec_encode("fp8", kind, r, rope)), i
    report(f"kv_encode fp8 {kind} width={width}", 0.0)


@pytest.mark.parametrize("kv", ["f32", "bf16"])
@pytest.mark.parametrize("kind,width", [("main", 512), ("index", 128), ("main", 72)])
def test_kv_encode_plain_types(kv, kind, width):
    # f32 / bf16 rows (what the GPU's KV copy encodes for those sessions), GPU vs CPU, bit for bit
    rng = np.random.default_rng(width)
    rows = (rng.standard_normal((9, width)) * 10.0).astype(np.float32)
    rows[0, :3] = [0.0, -0.0, 1e-40]
    rounded, recs = _core.cuda_kv_encode(kind, rows, 0 if kind == "index" else 64, kv)
    for i, r in enumerate(rows):
        rope = 0 if kind == "index" else 64
        assert np.array_equal(rounded[i].view(np.uint32), _core.kv_codec_roundtrip(kv, kind, r, rope)[0].view(np.uint32))
        assert np.array_equal(recs[i], _core.kv_codec_encode(kv, kind, r, rope)), i
    report(f"kv_encode {kv} {kind} width={width}", 0.0)


@pytest.mark.parametrize("kv", ["f32", "bf16", "fp8"])
def test_attend_records_through_addresses(kv):
    # the GPU KV's attention: records of any type where they lie, through a
    # table of addresses (here a shuffled order), = attention over the decoded rows
    rng = np.random.default_rng(len(kv))
    nh, d, rope, n_rec, nk = 16, 512, 64, 40, 57
    pool = rng.standard_normal((n_rec, d)).astype(np.float32)
    recs = np.stack([_core.kv_codec_encode(kv, "main", r, rope) for r in pool])
    rows = np.stack([_core.kv_codec_roundtrip(kv, "main", r, rope)[1] for r in pool])
    order = rng.permutation(n_rec).astype(np.int64)
    idx = rng.integers(0, n_rec, size=nk).astype(np.int32)
    q = (rng.standard_normal((nh, d)) / np.sqrt(d)).astype(np.float32)
    sinks = rng.standard_normal(nh).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    got = _core.cuda_attend_records(q, kv, recs, order, idx, sinks, scale, rope)
    # bit for bit the fp32 kernel over the decoded rows in table order
    assert np.array_equal(got, _core.cuda_attend(q, rows[order], idx, sinks, scale))
    cpu = _core.kv_attend(q, rows[order][idx], sinks, scale).reshape(nh, d)
    err = float(np.max(np.abs(got - cpu)))
    report(f"attend_records {kv}", err, 1.0)
    assert err <= 1e-5 * max(1.0, float(np.abs(rows).max()))
    with pytest.raises(ValueError, match="order out of range"):
        _core.cuda_attend_records(q, kv, recs, np.array([n_rec], np.int64), idx[:0], sinks, scale, rope)


@pytest.mark.parametrize("nih,dim,n", [(64, 128, 1000), (4, 32, 3), (16, 512, 77)])
def test_index_scores_fp4(nih, dim, n):
    # FP4 indexer key records of kv="fp8" (spec §3.6), scored on the GPU, against
    # the CPU's scores of the decoded keys
    rng = np.random.default_rng(nih + dim + n)
    raw = rng.standard_normal((n, dim)).astype(np.float32)
    recs = np.stack([_core.kv_codec_encode("fp8", "index", k) for k in raw])
    keys = np.stack([_core.kv_codec_roundtrip("fp8", "index", k)[1] for k in raw])
    q = rng.standard_normal((nih, dim)).astype(np.float32)
    w = rng.uniform(0.0, 1.0, nih).astype(np.float32)
    got = _core.cuda_index_scores_fp4(q, w, recs)
    cpu = _core.kv_index_scores(q, w, keys)
    scale = (np.abs(q.astype(np.float64)) @ np.abs(keys.astype(np.float64)).T * w[:, None]).sum(axis=0) + 1e-30
    err = float(np.max(np.abs(got - cpu) / scale))
    report(f"index_scores_fp4 nih={nih} dim={dim} n={n}", err, 1.0)
    assert err <= 1e-5


@pytest.mark.parametrize("m,n,k", [(3, 5000, 512), (2, 100, 100), (1, 7, 20), (4, 4096, 1), (1, 1, 1)])
def test_topk(m, n, k):
    # the indexer's top-k with many ties (ties go to the lower index), in row order
    rng = np.random.default_rng(m * n + k)
    scores = (np.round(rng.standard_normal((m, n)) * 4) / 4).astype(np.float32)
    scores[0, : n // 2] = 0.0  # a long run of equal scores
    if m > 1:
        scores[1] = np.abs(scores[1])
        scores[1, ::3] = -0.0  # equal to +0 on the CPU too
    got = _core.cuda_topk(scores, k)
    assert got.shape == (m, min(k, n))
    for r in range(m):
        assert np.array_equal(got[r], _core.ops_select_topk(scores[r], k)), r
    report(f"topk m={m} n={n} k={k}", 0.0)


def test_attend_rejects_bad_rows():
    q = np.zeros((2, 16), np.float32)
    with pytest.raises(ValueError):
        _core.cuda_attend(q, np.zeros((4, 16), np.float32), np.array([0, 4], np.int32), np.zeros(2, np.float32), 1.0)


# ---------------------------------------------------------------- mHC and compressor pooling

@pytest.mark.parametrize("n", [1, 7])
def test_hc_pre(n):
    fn, base, X = hc_inputs(n, 256, 24, 30 + n)
    scale = np.array([0.7, 1.3, 0.9], np.float32)
    got = _core.cuda_hc_pre(fn, base, scale, X, 20, 1e-6, 1e-6)
    want = _core.ops_hc_pre(fn, base, scale, X, 20, 1e-6, 1e-6)
    for name, g, w, tol in zip(("y", "post", "comb"), got, want, (1e-5, 1e-5, 1e-5)):
        err = float(np.max(np.abs(g - w)))
        report(f"hc_pre {name} n={n}", err, float(np.max(np.abs(w))))
        assert g.shape == w.shape and err <= tol * max(1.0, float(np.max(np.abs(w))))


def test_hc_post():
    rng = np.random.default_rng(33)
    n, D = 5, 256
    X = rng.standard_normal((n, 4 * D)).astype(np.float32)
    f = rng.standard_normal((n, D)).astype(np.float32)
    post = rng.random((n, 4)).astype(np.float32)
    comb = rng.random((n, 4, 4)).astype(np.float32)
    got, want = _core.cuda_hc_post(post, comb, f, X), _core.ops_hc_post(post, comb, f, X)
    err = float(np.max(np.abs(got - want)))
    report("hc_post", err, float(np.max(np.abs(want))))
    assert err <= 1e-6 * float(np.max(np.abs(want)))  # the CPU's order of rounded products and sums


@pytest.mark.parametrize("n", [1, 6])
def test_hc_head(n):
    fn, base, X = hc_inputs(n, 256, 4, 40 + n)
    got, want = _core.cuda_hc_head(fn, base, 0.8, X, 1e-6, 1e-6), _core.ops_hc_head(fn, base, 0.8, X, 1e-6, 1e-6)
    err = float(np.max(np.abs(got - want)))
    report(f"hc_head n={n}", err, float(np.max(np.abs(want))))
    assert err <= 1e-5 * float(np.max(np.abs(want)))


@pytest.mark.parametrize("overlap,b", [(True, 0), (True, 5), (False, 1)])
def test_compressor_pool(overlap, b):
    ratio, width = (4, 512) if overlap else (128, 512)
    kv, gate, tail_start = pool_inputs(overlap, b, ratio, width, 50 + b)
    got = _core.cuda_compressor_pool(kv, gate, tail_start, b, ratio, width, overlap)
    want = _core.ops_compressor_pool(kv, gate, tail_start, b, ratio, width, overlap)
    err = float(np.max(np.abs(got - want)))
    report(f"compressor pool ratio={ratio} b={b}", err, float(np.max(np.abs(want))))
    assert err <= 1e-6 * float(np.max(np.abs(want)))
