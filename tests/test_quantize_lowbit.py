"""The C++ importance-weighted quantizers (pyv4._core.quantize_lowbit) against their
numpy reference (convert/quants_lowbit.py): the same bytes, block for block.

The C++ search repeats the reference's float32 operations in its order (numpy's pairwise
sums, first-index argmax, float64 where numpy promotes), so equality is exact: no
tolerance. Inputs: Gaussian and heavy-tailed rows at several magnitudes, with and without
an importance matrix (per element, per column), all-zero rows, zero-importance columns,
values whose f16 scales overflow or underflow, strided views; bad arguments raise
ValueError. The hot loops (IQ2_XXS grid search, Q2_K / Q3_K / Q5_K / Q6_K fits) are checked under every ISA the
CPU has. The converter's entry
point (quants.quantize) runs the C++ one.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from pyv4 import _core  # noqa: E402
from pyv4.convert import quants as Q  # noqa: E402
from pyv4.convert import quants_lowbit as L  # noqa: E402

T = gguf.GGMLQuantizationType
F32 = np.float32
REF = {"Q2_K": L.q2_k_quantize, "Q3_K": L.q3_k_quantize, "IQ2_XXS": L.iq2_xxs_quantize,
       "IQ4_XS": L.iq4_xs_quantize, "Q5_K": L.q5_k_quantize, "Q6_K": L.q6_k_quantize}
TYPES = tuple(REF)


def _assert_same(name, x, imp, threads=2):
    ref = REF[name](x, imp)
    got = _core.quantize_lowbit(name, x, imp, threads)
    assert got.shape == ref.shape and got.dtype == np.uint8
    blocks = ref.shape[1] * 256 // x.shape[1]
    differ = (got.reshape(-1, blocks) != ref.reshape(-1, blocks)).any(-1)
    assert not differ.any(), f"{differ.sum()} of {differ.size} {name} blocks differ"
    return got


def _data(seed, rows=24, cols=768):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(F32)
    x[rows // 3:] *= np.exp(rng.standard_normal((rows - rows // 3, cols)) * 1.5).astype(F32)  # heavy tails
    x *= np.exp(rng.uniform(-3, 3, (rows, 1))).astype(F32)  # rows of several magnitudes
    imp = np.exp(2 * rng.standard_normal(cols)).astype(F32)  # per column, widely spread
    return x, imp, rng


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_same_bytes_as_reference(name, seed):
    x, imp, _ = _data(seed)
    imp_rows = np.broadcast_to(imp, x.shape).copy()
    got = _assert_same(name, x, imp_rows)
    # one importance row for all rows is the same matrix
    assert np.array_equal(_core.quantize_lowbit(name, x, imp, 1), got)
    if name != "IQ2_XXS":
        _assert_same(name, x, None)
    # per-expert importance: each row its own vector
    _assert_same(name, x, np.exp(np.random.default_rng(seed + 9).standard_normal(x.shape)).astype(F32))


@pytest.fixture
def restore_isa():
    isa = _core.active_isa()
    yield
    _core.set_isa(isa)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_isa(name, isa, restore_isa):
    # the hot loops (IQ2_XXS grid search, Q2_K / Q3_K / Q5_K / Q6_K sub-block fits) have SSE2
    # ("scalar": the baseline), AVX2 and AVX-512 forms
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    x, imp, _ = _data(8, rows=12, cols=512)
    x[1] = 0
    x[2, ::5] = 0
    x[3] *= F32(1e-30)
    imp = np.broadcast_to(imp, x.shape).copy()
    imp[:, 40:48] = 0  # one grid slot without importance: every point ties at A = B = 0
    imp[:, 64:80] = 0  # one sub-block without importance
    _assert_same(name, x, imp)
    if name != "IQ2_XXS":
        _assert_same(name, x, None)


@pytest.mark.parametrize("name", TYPES)
def test_thread_count_does_not_change_bytes(name):
    x, imp, _ = _data(2, rows=7, cols=512)
    outs = [_core.quantize_lowbit(name, x, imp, th) for th in (1, 3, 0)]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", TYPES)
def test_edge_rows(name):
    x, imp, rng = _data(3, rows=10, cols=512)
    x[2] = 0  # all-zero row
    x[3, :256] = 0  # one all-zero super-block
    x[4, 7:300:3] = 0  # scattered zeros
    x[5] = 3e4 * np.sign(x[5])  # large, equal magnitudes
    x[6] *= F32(1e-30)  # scales below the f16 range
    imp = np.broadcast_to(imp, x.shape).copy()
    imp[:, 5] = 0  # a column that does not matter
    imp[:, 300:316] = 0  # a whole zero-importance sub-block
    imp[8] = 0  # a row without importance
    _assert_same(name, x, imp)
    if name != "IQ2_XXS":
        _assert_same(name, x, None)


@pytest.mark.parametrize("name", TYPES)
def test_huge_values(name):
    # f16 super-block scales overflow (the reference's float16 casts warn; both agree)
    x, imp, _ = _data(4, rows=4, cols=256)
    x = (x / np.abs(x).max() * F32(3e9)).astype(F32)
    with np.errstate(over="ignore", invalid="ignore"):
        _assert_same(name, x, np.broadcast_to(imp, x.shape).copy())


@pytest.mark.parametrize("name", TYPES)
def test_strided_input_and_importance(name):
    x, imp, _ = _data(5, rows=6, cols=1024)
    imp_rows = np.broadcast_to(imp, x.shape).copy()
    xs, ims = x[::2, ::2], imp_rows[::2, ::2]  # views, not contiguous
    want = _core.quantize_lowbit(name, np.ascontiguousarray(xs), np.ascontiguousarray(ims), 2)
    assert np.array_equal(_core.quantize_lowbit(name, xs, ims, 2), want)
    assert np.array_equal(REF[name](np.ascontiguousarray(xs), np.ascontiguousarray(ims)), want)
    # float64 input is converted to float32 first, as the converter's quantize() does
    assert np.array_equal(_core.quantize_lowbit(name, xs.astype(np.float64), ims, 2), want)


def test_bad_arguments_raise_value_error():
    x = np.ones((2, 512), F32)
    with pytest.raises(ValueError, match="not a multiple of the Q2_K super-block of 256"):
        _core.quantize_lowbit("Q2_K", np.ones((2, 300), F32))
    with pytest.raises(ValueError, match="multiple"):
        Q.quantize(np.ones((2, 300), F32), T.Q3_K)
    with pytest.raises(ValueError, match="IQ2_XXS needs an importance matrix"):
        _core.quantize_lowbit("IQ2_XXS", x)
    with pytest.raises(ValueError, match="importance must be"):
        _core.quantize_lowbit("Q2_K", x, np.ones((3, 512), F32))
    with pytest.raises(ValueError, match="importance must be"):
        _core.quantize_lowbit("Q2_K", x, np.ones(256, F32))
    with pytest.raises(ValueError, match=r"no importance-weighted quantizer for Q4_K \(Q2_K, Q3_K, IQ2_XXS, IQ4_XS, Q5_K, Q6_K\)"):
        _core.quantize_lowbit("Q4_K", x)
    with pytest.raises(ValueError, match="unknown GGML type"):
        _core.quantize_lowbit("Q9_Z", x)
    with pytest.raises(ValueError, match="2-D"):
        _core.quantize_lowbit("Q2_K", np.ones(512, F32))
    assert _core.quantize_lowbit("Q3_K", np.ones((0, 512), F32)).shape == (0, 220)


@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K, T.IQ2_XXS, T.IQ4_XS, T.Q5_K, T.Q6_K], ids=lambda t: t.name)
def test_converter_runs_the_cpp_search(t, monkeypatch):
    # quants.quantize (what convert and requantize call) gives the reference's bytes,
    # for stacked leading dims too, without calling the numpy search
    x, imp, _ = _data(6, rows=8, cols=512)
    imp_rows = np.broadcast_to(imp, x.shape).copy()
    want = REF[t.name](x, imp_rows)

    def numpy_search(*a):
        raise AssertionError("the converter ran the numpy reference")

    for fn in REF.values():
        monkeypatch.setattr(L, fn.__name__, numpy_search)
    got = Q.quantize(x.reshape(2, 4, 512), t, imp_rows.reshape(2, 4, 512))
    assert np.array_equal(got.reshape(8, -1), want)


def test_f32_to_f16_rounds_as_numpy():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2 ** 32, 400_000, dtype=np.uint64).astype(np.uint32)
    # every exponent around the f16 range; random f16 mantissas with the bits below
    # them at, under and over the half-way point (and random, for the subnormal halves)
    e = np.arange(96, 146, dtype=np.uint32)
    hi = rng.integers(0, 1 << 10, (e.size, 16)).astype(np.uint32) << 13
    tail = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x5A5A5], np.uint32)
    grid = (e[:, None, None] << 23) | hi[:, :, None] | tail[None, None, :]
    special = np.array([0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x477FF000, 0x477FEFFF,
                        0x33000000, 0x33000001, 0x387FFFFF, 0x38800000], np.uint32)
    for b in (bits, grid.ravel(), grid.ravel() | 0x80000000, special):
        f = b.view(F32)
        with np.errstate(over="ignore"):
            want = f.astype(np.float16).view(np.uint16)
        got = _core.quant_f32_to_f16(f)
        finite = ~np.isnan(f)
        assert np.array_equal(got[finite], want[finite])
        assert np.all((got[~finite] & 0x7C00) == 0x7C00) and np.all(got[~finite] & 0x3FF)


def test_iq4_xs_levels_and_scales():
    # blocks whose values are exactly d * ls * level for some 6-bit ls and IQ4_NL
    # levels come back exactly (codes, scales and the f16 super-block scale), a
    # zero block decodes to zeros, and the weighted error is no worse than a plain
    # round-to-nearest at the block's absmax scale
    rng = np.random.default_rng(9)
    levels = L.IQ4NL_LEVELS
    d = F32(2.0 ** -10)
    ls = rng.integers(-32, 32, (4, 8))
    ls[:, 0] = -32  # the largest |ls| of each super-block at the negative end
    ls[0, 3] = 0  # a zero block
    codes = rng.integers(0, 16, (4, 8, 32))
    codes[:, :, 0] = 0  # each block reaches -127 (the level its search starts from)
    x = (d * ls[..., None].astype(F32) * levels[codes]).astype(F32).reshape(1, -1)
    q = _core.quantize_lowbit("IQ4_XS", x, None, 1)
    assert np.array_equal(q, L.iq4_xs_quantize(x))
    y = _core.quant_dequantize("IQ4_XS", q.reshape(-1), x.size).reshape(x.shape)
    assert np.array_equal(y, x)
    z = rng.standard_normal((16, 1024)).astype(F32)
    imp = np.exp(rng.standard_normal(1024)).astype(F32)
    q = _core.quantize_lowbit("IQ4_XS", z, imp, 2)
    y = _core.quant_dequantize("IQ4_XS", q.reshape(-1), z.size).reshape(z.shape)
    b = z.reshape(16, -1, 32)
    s = np.abs(b).max(-1, keepdims=True) / 127
    naive = (s * levels[np.abs(b[..., None] / s[..., None] - levels).argmin(-1)]).reshape(z.shape)
    assert (imp * (y - z) ** 2).sum() < (imp * (naive - z) ** 2).sum()
