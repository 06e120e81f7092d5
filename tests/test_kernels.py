"""Quantized weight kernels: scalar decode vs gguf.quants, matmul on every ISA.

Oracles:
* dequantize: `gguf.quants.dequantize` (numpy), bit for bit.
* matmul, fast mode: float64 numpy product of the *dequantized* weights. The
  integer kernels (Q8_0, Q4_0, Q4_K, MXFP4) quantize each activation row in
  blocks of 32 to int8 with scale dx = max|x|/127 (round to nearest), so each
  activation moves by at most dx/2 = amax_block/254 and the result by at most
      sum_i |w_i| * amax_block(i) / 254
  (a deterministic bound; we allow amax/250 for float rounding of dx). The float
  weight types (F32/F16/BF16) are an fp32 SIMD dot with no activation
  quantization: error <= 1e-5 * sum |w x|.
* matmul, reference mode: weights decoded by the scalar oracle, fp32 products
  summed sequentially, which equals numpy's sequential float32 cumsum bit for bit.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from pyv4 import _core
from quant_tools import BLOCK, INT_TYPES, TYPES, check_fast, gguf_dequant, random_weight

ISAS = ["scalar", "avx2", "avx512"]


@pytest.fixture(autouse=True)
def _restore_switches():
    isa, mode, ext = _core.active_isa(), _core.compute_mode(), _core.avx512_extensions()
    yield
    _core.set_isa(isa)
    _core.set_compute_mode(mode)
    _core.set_avx512_extensions(ext)


# ---------------------------------------------------------------- decode

@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_gguf(type_name):
    rng = np.random.default_rng(1)
    bs, _ = BLOCK[type_name]
    n = 64 * max(bs, 32)
    raw = random_weight(type_name, 1, n, rng, full_range=True)
    ours = _core.quant_dequantize(type_name, raw.reshape(-1), n)
    with np.errstate(over="ignore"):  # MXFP4 e = 255 scales overflow to inf (both sides)
        ref = gguf_dequant(type_name, raw, 1, n).reshape(-1).astype(np.float32)
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_mxfp4_value_convention():
    # e = 127 -> scale 1: nibble 7 is +6, nibble 15 is -6; element j+16 is the high nibble.
    raw = np.zeros(17, np.uint8)
    raw[0] = 127
    raw[1] = 0xF7
    v = _core.quant_dequantize("MXFP4", raw, 32)
    assert v[0] == 6.0 and v[16] == -6.0 and np.all(v[1:16] == 0) and np.all(v[17:] == 0)


def test_dequantize_rejects_bad_length():
    with pytest.raises(ValueError):
        _core.quant_dequantize("Q8_0", np.zeros(34, np.uint8), 31)
    with pytest.raises(ValueError):
        _core.quant_dequantize("NOPE", np.zeros(34, np.uint8), 32)


# ---------------------------------------------------------------- matmul

def _cols_for(type_name, n_tokens):
    if type_name == "Q4_K":
        return 512
    if type_name in INT_TYPES:
        # 3 or 5 blocks: not a multiple of the 4-block groups (tail paths)
        return 96 if n_tokens in (1, 32) else 160
    return 100 if n_tokens in (1, 32) else 200  # not a multiple of the SIMD width


def _cases():
    out = []
    for t in TYPES:
        for isa in ISAS:
            for n in (1, 3, 4, 13, 32, 130):
                out.append((t, isa, n, 37 if n != 32 else 130))
    return out


@pytest.mark.parametrize("type_name,isa,n_tokens,rows", _cases())
def test_matmul_fast(type_name, isa, n_tokens, rows):
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(hash((type_name, isa, n_tokens)) & 0xFFFF)
    cols = _cols_for(type_name, n_tokens)
    raw = random_weight(type_name, rows, cols, rng)
    W = gguf_dequant(type_name, raw, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, :32] *= 10.0  # one block with larger activations
    if n_tokens > 1:
        x[1, :32] = 0.0  # an all-zero block (dx = 0)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 1)
    assert y.shape == (n_tokens, rows)
    check_fast(type_name, W, x, y)
    # threads split rows only: every output is computed identically
    y2 = _core.quant_matmul(type_name, raw, rows, cols, x, 2)
    assert np.array_equal(y, y2)


def test_q8_0_lane_gemm_avx2():
    """The AVX2 lane GEMM of Q8_0 (from _core.lane_gemm_min_tokens tokens): 21
    blocks a row (two groups of 8, then a zero-padded group of 5), codes -128 and
    127 with every activation at q = 127 (the widest vpmaddubsw pairs, 2 * 128 *
    127), token tails of the 4-token tiles; each token's result is bitwise what it
    gets in a call of the first count."""
    if not _core.isa_supported("avx2"):
        pytest.skip("CPU lacks avx2")
    _core.set_isa("avx2")
    _core.set_compute_mode("fast")
    first = _core.lane_gemm_min_tokens("Q8_0")
    assert first > 0
    rng = np.random.default_rng(5)
    rows, cols = 37, 21 * 32
    raw = random_weight("Q8_0", rows, cols, rng)
    blocks = raw.reshape(rows, -1, 34)
    assert np.shares_memory(blocks, raw)  # the edits below reach raw
    blocks[3, :, 2:] = 0x80  # every code -128
    blocks[4, :, 2:] = 127
    W = gguf_dequant("Q8_0", raw, rows, cols)
    x = rng.standard_normal((first + 11, cols)).astype(np.float32)
    x[1] = 1.0  # q = 127 everywhere
    x[2, 64:96] = 0.0
    ys = {}
    for n in (first, first + 1, first + 3, first + 11):
        ys[n] = _core.quant_matmul("Q8_0", raw, rows, cols, x[:n], 2)
        check_fast("Q8_0", W, x[:n], ys[n])
    for n in (first + 1, first + 3, first + 11):
        assert np.array_equal(ys[n][:first], ys[first])


@pytest.mark.parametrize("type_name", TYPES)
def test_matmul_reference_exact(type_name):
    _core.set_isa("auto")  # reference mode ignores the ISA
    _core.set_compute_mode("reference")
    rng = np.random.default_rng(7)
    rows, cols, n = 37, 512, 5
    raw = random_weight(type_name, rows, cols, rng)
    W = gguf_dequant(type_name, raw, rows, cols).astype(np.float32)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 2)
    # sequential float32 sum of float32 products
    ref = np.cumsum(W[None, :, :] * x[:, None, :], axis=2, dtype=np.float32)[:, :, -1]
    assert np.array_equal(y, ref)


@pytest.mark.parametrize("type_name", ["Q8_0", "MXFP4", "Q4_K", "BF16"])
def test_expert_slice(type_name):
    """A 3-D expert tensor [E, out, in] is E row blocks; expert e = rows [e*out, (e+1)*out)."""
    rng = np.random.default_rng(3)
    E, out, cols = 4, 20, 256
    raw = random_weight(type_name, E * out, cols, rng)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    full = _core.quant_matmul(type_name, raw, E * out, cols, x, 1)
    for e in range(E):
        part = _core.quant_matmul(type_name, raw[e * out:(e + 1) * out], out, cols, x, 1)
        assert np.array_equal(part, full[:, e * out:(e + 1) * out])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type_name", sorted(INT_TYPES))
def test_gemv_and_lane_edges(type_name, isa):
    """Shapes that hit every partial path of the AVX-512 kernels: GEMV (1..3 tokens)
    sums 16 blocks per float step, then single 4-block groups, then a zero-padded
    tail group (Q4_K: super-block pairs, then an odd one); the lane GEMM (>= 20
    tokens, Q4_K >= 6) packs 16-block groups (last one partial) in panels of 16
    rows, tiles of 4 rows x 4 tokens with row and token tails."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(21)
    cols = 1280 if type_name == "Q4_K" else 32 * 39  # 5 super-blocks / 39 blocks
    rows = 37
    raw = random_weight(type_name, rows, cols, rng)
    W = gguf_dequant(type_name, raw, rows, cols)
    for n in (1, 2, 3, 5, 8, 12, 21):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        x[:, 32 * 17:32 * 18] *= 20.0
        y = _core.quant_matmul(type_name, raw, rows, cols, x, 2)
        check_fast(type_name, W, x, y)
        # a token's result does not depend on the other tokens in the call
        # (GEMV kernels: per-token; lane kernels: per tile)
        if n == 21:
            y1 = _core.quant_matmul(type_name, raw, rows, cols, x[20:], 1)
            np.testing.assert_allclose(y1[0], y[20], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_tokens", [2, 3, 5, 8])
def test_wide_rows_small_batches(n_tokens):
    """Q8_0 rows of 8 KB and more take the 4-row tiles from 2 tokens on (short
    rows keep the GEMV up to 3 tokens): here 7712 columns = 241 blocks (a
    partial last 4-block group), 38 rows (tiles of 4 + 2 single rows)."""
    _core.set_isa("auto")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(31)
    rows, cols = 38, 7712
    raw = random_weight("Q8_0", rows, cols, rng)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, 32 * 7:32 * 8] *= 20.0
    y = _core.quant_matmul("Q8_0", raw, rows, cols, x, 1)
    check_fast("Q8_0", gguf_dequant("Q8_0", raw, rows, cols), x, y)
    assert np.array_equal(y, _core.quant_matmul("Q8_0", raw, rows, cols, x, 2))


@pytest.mark.parametrize("type_name,cols,layout", [("Q8_0", 1120, "ggml"), ("MXFP4", 1120, "ggml"),
                                                    ("Q4_0", 1120, "ggml"), ("MXFP4", 1024, "split"),
                                                    ("Q4_0", 1024, "split")])
def test_gemv_small_batches_equal_single_tokens(type_name, cols, layout):
    """AVX-512 GEMV with 2..5 tokens on short rows (x of all tokens within 6 KB):
    transposed codes and activations, each block's dot in its own int32 lane;
    the same integers and float operations as the 1-token GEMV, so every token's
    result is bitwise what it gets alone. 1120 columns = 35 blocks: 2 super-groups
    and a 3-block tail."""
    if not _core.isa_supported("avx512"):
        pytest.skip("CPU lacks avx512")
    _core.set_isa("avx512")
    _core.set_compute_mode("fast")
    try:
        rng = np.random.default_rng(41)
        rows = 21
        raw = random_weight(type_name, rows, cols, rng)
        x = rng.standard_normal((5, cols)).astype(np.float32)
        x[:, 32 * 5:32 * 6] *= 20.0
        alone = np.concatenate([_core.quant_matmul(type_name, raw, rows, cols, x[t:t + 1], 1, layout)
                                for t in range(5)])
        check_fast(type_name, gguf_dequant(type_name, raw, rows, cols), x, alone)
        for n in range(2, 6):
            y = _core.quant_matmul(type_name, raw, rows, cols, x[:n], 2, layout)
            np.testing.assert_array_equal(y, alone[:n], err_msg=f"{n} tokens")
    finally:
        _core.set_isa("auto")


def test_large_tokens_and_rows_fast():
    """Row tiles + token tiles with tails on the best ISA (4-row and 4-token tiles)."""
    _core.set_isa("auto")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(11)
    for type_name in ("Q8_0", "Q4_K"):
        rows, cols, n = 130, 512, 130
        raw = random_weight(type_name, rows, cols, rng)
        W = gguf_dequant(type_name, raw, rows, cols)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        check_fast(type_name, W, x, _core.quant_matmul(type_name, raw, rows, cols, x, 2))


@pytest.mark.parametrize("type_name,layout", [("Q8_0", "ggml"), ("Q4_K", "ggml"), ("MXFP4", "split"),
                                               ("Q4_0", "split")])
def test_lane_token_blocks(type_name, layout):
    """Wide rows and many tokens: the lane GEMM packs 256-row spans and runs the
    tokens in blocks (here 96 + 5 tokens of 4096 columns; spans 256 + 44 rows)."""
    if not _core.isa_supported("avx512"):
        pytest.skip("CPU lacks avx512")
    _core.set_isa("avx512")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(12)
    rows, cols, n = 300, 4096, 101
    raw = random_weight(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 1, layout)
    check_fast(type_name, gguf_dequant(type_name, raw, rows, cols), x, y)
    assert np.array_equal(y, _core.quant_matmul(type_name, raw, rows, cols, x, 2, layout))
    # the same token through the one-block path (fewer tokens) gives the same bits
    assert np.array_equal(y[:40], _core.quant_matmul(type_name, raw, rows, cols, x[:40], 1, layout))


@pytest.mark.parametrize("type_name", sorted(INT_TYPES))
def test_lane_column_chunks(type_name):
    """Rows longer than 4096 columns: the lane GEMM runs them in column chunks of
    16-block groups (here 9216 columns = 18 groups: chunks of 8, 8 and 2; Q4_K
    9472 = 37 super-blocks, a partial last group) and adds the chunks' sums."""
    if not _core.isa_supported("avx512"):
        pytest.skip("CPU lacks avx512")
    _core.set_isa("avx512")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(13)
    rows, n = 37, 21
    cols = 9472 if type_name == "Q4_K" else 9216
    raw = random_weight(type_name, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 2, "auto")  # split rows where they exist
    W = gguf_dequant(type_name, raw, rows, cols)
    check_fast(type_name, W, x, y)
    # the GEMV path (one token at a time) agrees up to float rounding
    for t in (0, 20):
        y1 = _core.quant_matmul(type_name, raw, rows, cols, x[t:t + 1], 1, "auto")
        scale = np.abs(x[t].astype(np.float64)) @ np.abs(W.astype(np.float64)).T
        assert np.all(np.abs(y1[0] - y[t]) <= 1e-6 * scale)


# ---------------------------------------------------------------- switches

def test_isa_switches():
    feats = _core.cpu_features()
    assert feats["sse2"]
    assert _core.isa_supported("scalar")
    _core.set_isa("scalar")
    assert _core.active_isa() == "scalar"
    _core.set_isa("auto")
    assert _core.active_isa() == _core.best_isa()
    with pytest.raises(ValueError):
        _core.set_isa("sse9")
    if not feats["avx512vnni"]:
        with pytest.raises(ValueError):
            _core.set_isa("avx512")
    _core.set_compute_mode("reference")
    assert _core.compute_mode() == "reference"
    with pytest.raises(ValueError):
        _core.set_compute_mode("exact")


def test_env_switches(tmp_path):
    import pyv4
    code = "from pyv4 import _core; print(_core.active_isa(), _core.compute_mode())"
    # import the same pyv4 this test imported (not a source tree in the cwd)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyv4.__file__)))
    path = os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYV4_ISA="scalar", PYV4_COMPUTE="reference", PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == ["scalar", "reference"]


def test_read_bandwidth_positive():
    assert _core.read_bandwidth(1 << 22, 1, 2) > 0.1


def test_int8_peak_probe():
    # The probe of bench/kernels.py: a rate where AVX-512 VNNI exists, 0 where it does not.
    peak = _core.int8_peak(1, 0.02)
    if _core.isa_supported("avx512"):
        assert peak > 1.0
    else:
        assert peak == 0.0


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("tname", ["F32", "F16", "BF16"])
def test_float_results_do_not_depend_on_batch(isa, tname):
    """A token's product with a float weight is bitwise the same alone or in any
    batch: sessions rely on it (chunked prefill = decode = batched decode =
    re-eval after truncate). Every batch size 1..13 (AVX-512: the 1-token GEMV,
    the 2..8-token column-chunked tiles, the prefill tiles) against each token
    alone."""
    if not _core.isa_supported(isa):
        pytest.skip(f"{isa} not supported by this CPU")
    rng = np.random.default_rng(5)
    # 1256 = 19 x 64 + 2 x 16 + 8: every tail path, and column chunks of 512,
    # 512 and 192 in the small-batch tiles; 37 rows: tiles of 4 or 3 rows + 1
    rows, cols = 37, 1256
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = {"F32": w, "F16": w.astype(np.float16), "BF16": (w.view(np.uint32) >> 16).astype(np.uint16)}[tname]
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    x = rng.standard_normal((13, cols)).astype(np.float32)
    _core.set_isa(isa)
    try:
        alone = np.concatenate([_core.quant_matmul(tname, raw, rows, cols, x[t : t + 1], 1)
                                for t in range(13)])
        for n in range(2, 14):
            np.testing.assert_array_equal(_core.quant_matmul(tname, raw, rows, cols, x[:n], 2),
                                          alone[:n], err_msg=f"{n} tokens")
        np.testing.assert_array_equal(_core.quant_matmul(tname, raw, rows, cols, x[3:8], 1), alone[3:8])
    finally:
        _core.set_isa("auto")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_matmul_many_equals_matmul_each(isa, mode):
    """One parallel region for many products (csrc/quant/matmul.h matmul_many):
    every task's result is bitwise what matmul gives it alone, with tasks of
    different types, widths and token counts, tasks sharing an X, and empty ones."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode(mode)
    rng = np.random.default_rng(17)
    x256 = rng.standard_normal((3, 256)).astype(np.float32)
    specs = [("MXFP4", 37, 256, x256), ("MXFP4", 64, 256, x256), ("Q8_0", 21, 256, x256),
             ("Q4_K", 5, 256, rng.standard_normal((3, 256)).astype(np.float32)),
             ("BF16", 19, 96, rng.standard_normal((3, 96)).astype(np.float32)),
             ("Q4_0", 40, 64, rng.standard_normal((13, 64)).astype(np.float32)),
             ("Q8_0", 0, 64, rng.standard_normal((2, 64)).astype(np.float32)),
             ("F32", 3, 32, np.zeros((0, 32), np.float32))]
    def raw(t, rows, cols):
        if rows == 0:
            bs, bb = BLOCK[t]
            return np.zeros((0, cols // bs * bb), np.uint8)
        return random_weight(t, rows, cols, rng)

    weights = [(t, raw(t, rows, cols), rows, cols) for t, rows, cols, _ in specs]
    xs = [x for *_, x in specs]
    for threads in (1, 2, 3):
        ys = _core.quant_matmul_many(weights, xs, threads)
        for (t, raw, rows, cols), x, y in zip(weights, xs, ys):
            assert y.shape == (x.shape[0], rows)
            if rows and len(x):
                np.testing.assert_array_equal(y, _core.quant_matmul(t, raw, rows, cols, x, 1), err_msg=t)
