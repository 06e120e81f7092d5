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
