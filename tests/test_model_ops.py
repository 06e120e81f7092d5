"""The small fp32 ops of the forward pass (csrc/model/ops.h) through their
bindings (ops_*), against float64 numpy: these are the CPU references the
CUDA ops are compared with (tests/test_cuda_ops.py)."""

import numpy as np
import pytest

from pyv4 import _core


@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm(weighted):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 300)) * 5).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32) if weighted else None
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-6)
    if weighted:
        want = want * w
    got = _core.ops_rms_norm(x, w, 1e-6)
    assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))


def test_rope_rotates_the_last_pairs():
    rng = np.random.default_rng(2)
    v = rng.standard_normal((3, 20)).astype(np.float32)
    pos = np.array([0, 7, 1000], np.int64)
    inv_freq = np.array([1.0, 0.1, 0.001], np.float32)
    got = _core.ops_rope(v, pos, inv_freq)
    assert np.array_equal(got[:, :14], v[:, :14])
    ang = pos[:, None].astype(np.float64) * inv_freq.astype(np.float64)[None, :]
    a, b = v[:, 14::2].astype(np.float64), v[:, 15::2].astype(np.float64)
    assert np.allclose(got[:, 14::2], a * np.cos(ang) - b * np.sin(ang), atol=1e-4)
    assert np.allclose(got[:, 15::2], b * np.cos(ang) + a * np.sin(ang), atol=1e-4)
    assert np.allclose(_core.ops_rope(got, pos, inv_freq, True), v, atol=1e-5)
    with pytest.raises(ValueError):
        _core.ops_rope(v, pos, np.zeros(11, np.float32))  # 22 rotated dims > 20


@pytest.mark.parametrize("limit", [0.0, 3.0])
def test_swiglu(limit):
    rng = np.random.default_rng(3)
    g, u = (rng.standard_normal((2, 500)) * 5).astype(np.float32)
    gc, uc = g.astype(np.float64), u.astype(np.float64)
    if limit:
        gc, uc = np.minimum(gc, limit), np.clip(uc, -limit, limit)
    want = gc / (1 + np.exp(-gc)) * uc
    got = _core.ops_swiglu(g, u, limit)
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    if limit:
        assert np.max(np.abs(got)) <= limit * limit  # silu(min(g, l)) < l and |u| <= l


def test_select_topk_order_and_ties():
    # strict order: higher score first, ties to the lower index; result in row order
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, -0.0, 0.0], np.float32)
    assert list(_core.ops_select_topk(scores, 3)) == [1, 2, 3]
    assert list(_core.ops_select_topk(scores, 4)) == [1, 2, 3, 4]
    assert list(_core.ops_select_topk(scores, 6)) == [0, 1, 2, 3, 4, 5]  # -0 == +0: the lower index
    assert list(_core.ops_select_topk(scores, 10)) == list(range(7))
    rng = np.random.default_rng(4)
    s = (np.round(rng.standard_normal(1000) * 3) / 3).astype(np.float32)
    want = np.sort(np.lexsort((np.arange(1000), -s.astype(np.float64)))[:100])
    assert np.array_equal(_core.ops_select_topk(s, 100), want)


# ---------------------------------------------------------------- mHC and compressor pooling

def hc_inputs(n, D, mix_rows, seed):
    """(fn [mix_rows, 4D], base [mix_rows], X [n, 4D]) of an mHC site (also tests/test_cuda_ops.py's)."""
    rng = np.random.default_rng(seed)
    fn = (rng.standard_normal((mix_rows, 4 * D)) * 0.05).astype(np.float32)
    base = (rng.standard_normal(mix_rows) * 0.5).astype(np.float32)
    X = (rng.standard_normal((n, 4 * D)) * 2).astype(np.float32)
    return fn, base, X


def hc_mixes_numpy(fn, X, rms_eps):
    X64 = X.astype(np.float64)
    return (X64 @ fn.astype(np.float64).T) / np.sqrt((X64 ** 2).mean(axis=1, keepdims=True) + rms_eps)


def hc_pre_numpy(fn, base, scale, X, iters, hc_eps, rms_eps):
    """spec §3.3 in float64: (y, post, comb)."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    mu = hc_mixes_numpy(fn, X, rms_eps)
    b = base.astype(np.float64)
    pre = sig(mu[:, :4] * scale[0] + b[:4]) + hc_eps
    post = 2 * sig(mu[:, 4:8] * scale[1] + b[4:8])
    logits = (mu[:, 8:] * scale[2] + b[8:]).reshape(-1, 4, 4)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    comb = e / e.sum(axis=2, keepdims=True) + hc_eps
    comb = comb / (comb.sum(axis=1, keepdims=True) + hc_eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(axis=2, keepdims=True) + hc_eps)
        comb = comb / (comb.sum(axis=1, keepdims=True) + hc_eps)
    D = X.shape[1] // 4
    y = np.einsum("ni,nid->nd", pre, X.astype(np.float64).reshape(-1, 4, D))
    return y, post, comb


def test_hc_pre_against_numpy():
    fn, base, X = hc_inputs(5, 48, 24, 4)
    scale = np.array([0.7, 1.3, 0.9], np.float32)
    y, post, comb = _core.ops_hc_pre(fn, base, scale, X, 20, 1e-6, 1e-6)
    wy, wpost, wcomb = hc_pre_numpy(fn, base, scale, X, 20, 1e-6, 1e-6)
    assert np.max(np.abs(y - wy)) <= 1e-5 * np.max(np.abs(wy))
    assert np.max(np.abs(post - wpost)) <= 1e-5
    assert np.max(np.abs(comb - wcomb)) <= 1e-5
    assert np.allclose(comb.sum(axis=1), 1, atol=1e-4)  # Sinkhorn ends on columns
    with pytest.raises(ValueError, match="fn must be"):
        _core.ops_hc_pre(fn[:23], base, scale, X, 20, 1e-6, 1e-6)


def test_hc_post_against_numpy():
    rng = np.random.default_rng(5)
    n, D = 3, 40
    X = rng.standard_normal((n, 4 * D)).astype(np.float32)
    f = rng.standard_normal((n, D)).astype(np.float32)
    post = rng.random((n, 4)).astype(np.float32)
    comb = rng.random((n, 4, 4)).astype(np.float32)
    got = _core.ops_hc_post(post, comb, f, X)
    Xs = X.astype(np.float64).reshape(n, 4, D)
    want = post[:, :, None] * f[:, None, :] + np.einsum("nij,nid->njd", comb.astype(np.float64), Xs)
    assert np.max(np.abs(got - want.reshape(n, 4 * D))) <= 1e-5 * np.max(np.abs(want))


def test_hc_head_against_numpy():
    fn, base, X = hc_inputs(4, 32, 4, 6)
    got = _core.ops_hc_head(fn, base, 0.8, X, 1e-6, 1e-6)
    mu = hc_mixes_numpy(fn, X, 1e-6)
    pre = 1 / (1 + np.exp(-(mu * 0.8 + base))) + 1e-6
    want = np.einsum("ni,nid->nd", pre, X.astype(np.float64).reshape(4, 4, 32))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def compressor_pool_numpy(kv, gate, tail_start, b, ratio, width, overlap):
    """spec §3.5: per channel a softmax over the block's slots of the gate logits, in float64."""
    slots = []
    if overlap and b > 0:
        slots += [(q, 0) for q in range((b - 1) * ratio, b * ratio)]
    slots += [(q, width if overlap else 0) for q in range(b * ratio, (b + 1) * ratio)]
    g = np.array([gate[q - tail_start, o:o + width] for q, o in slots], np.float64)
    v = np.array([kv[q - tail_start, o:o + width] for q, o in slots], np.float64)
    e = np.exp(g - g.max(axis=0))
    return (v * e / e.sum(axis=0)).sum(axis=0)


def pool_inputs(overlap, b, ratio, width, seed):
    """(kv, gate, tail_start): the raw projections a compressor holds when block b closes."""
    rng = np.random.default_rng(seed)
    pw = (2 if overlap else 1) * width
    tail_start = max(0, (b - 1) * ratio) if overlap else b * ratio
    L = (b + 1) * ratio - tail_start
    kv = rng.standard_normal((L, pw)).astype(np.float32)
    gate = (rng.standard_normal((L, pw)) * 3).astype(np.float32)
    return kv, gate, tail_start


@pytest.mark.parametrize("overlap,b", [(True, 0), (True, 3), (False, 2)])
def test_compressor_pool_against_numpy(overlap, b):
    ratio, width = 4, 24
    kv, gate, tail_start = pool_inputs(overlap, b, ratio, width, 7 + b)
    got = _core.ops_compressor_pool(kv, gate, tail_start, b, ratio, width, overlap)
    want = compressor_pool_numpy(kv, gate, tail_start, b, ratio, width, overlap)
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    with pytest.raises(ValueError, match="does not cover"):
        _core.ops_compressor_pool(kv[1:], gate[1:], tail_start + 1, b, ratio, width, overlap)
