"""Converter side of the 2- and 3-bit types: quantizers, importance matrices, q2 / q2q4.

Oracles:
* the quantizers' bytes decode with gguf.quants (the format oracle) and pyv4's scalar
  decode to the same values; the error on Gaussian rows stays within what 2 / 3 bits
  give (relative RMSE bounds below), every code is the nearest level for the scales the
  decoder forms, and an importance matrix moves the error off the columns it marks;
* importance matrix files: written here in llama.cpp's two formats (GGUF and legacy
  .dat, as documented in convert/imatrix.py) from the same values, read back equal;
* conversion of the official-layout fixture with --recipe q2 / q2q4: the recipe's types,
  values close to the checkpoint's, IQ2_XXS refused without an imatrix.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

import official_fixtures as of  # noqa: E402
import pyv4  # noqa: E402
from pyv4 import _core  # noqa: E402
from pyv4.convert import ConvertError, main  # noqa: E402
from pyv4.convert import quants as Q  # noqa: E402
from pyv4.convert.imatrix import load_imatrix, matrix_weights  # noqa: E402
from pyv4.convert.recipes import choose_type, get_recipe  # noqa: E402

T = gguf.GGMLQuantizationType
LOW = (T.Q2_K, T.Q3_K, T.IQ2_XXS, T.IQ4_XS)
# relative RMSE on N(0, 1) rows, importance all ones (measured ~0.27 / 0.15 / 0.33 / 0.076)
RMSE_BOUND = {T.Q2_K: 0.30, T.Q3_K: 0.17, T.IQ2_XXS: 0.36, T.IQ4_XS: 0.085}


def _decode(raw, t, rows, n):
    ours = np.stack([_core.quant_dequantize(t.name, r, n) for r in raw])
    ref = gguf.quants.dequantize(raw, t).reshape(rows, n)
    assert np.array_equal(ours, ref)
    return ref


def _rows(seed=0, rows=48, n=1024):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, n)).astype(np.float32), rng


@pytest.mark.parametrize("t", LOW, ids=lambda t: t.name)
def test_quantizer_round_trip_and_error(t):
    x, rng = _rows()
    rows, n = x.shape
    y = _decode(Q.quantize(x, t, np.ones_like(x)), t, rows, n)
    rmse = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    assert rmse <= RMSE_BOUND[t], rmse
    # scaled inputs (tiny and large) quantize the same way up to the f16 scales
    for s in (1e-4, 300.0):
        ys = _decode(Q.quantize(x * np.float32(s), t, np.ones_like(x)), t, rows, n)
        assert np.sqrt(((ys - x * s) ** 2).mean() / ((x * s) ** 2).mean()) <= RMSE_BOUND[t] * 1.05
    # zero rows give zero blocks
    z = _decode(Q.quantize(np.zeros((2, 256), np.float32), t, np.ones((2, 256), np.float32)), t, 2, 256)
    assert not z.any()


@pytest.mark.parametrize("t", LOW, ids=lambda t: t.name)
def test_importance_moves_the_error(t):
    """With importance 100 on a quarter of the columns the weighted error drops well
    below that of the unweighted (all-ones) quantization of the same rows."""
    x, rng = _rows(1)
    rows, n = x.shape
    im = np.ones(n, np.float32)
    im[rng.permutation(n)[: n // 4]] = 100.0
    imr = np.broadcast_to(im, x.shape)
    flat = _decode(Q.quantize(x, t, np.ones_like(x)), t, rows, n)
    weighted = _decode(Q.quantize(x, t, imr), t, rows, n)

    def werr(y):
        return float((im * (y - x) ** 2).sum())

    assert werr(weighted) <= 0.8 * werr(flat), (werr(weighted), werr(flat))


@pytest.mark.parametrize("t", [T.Q2_K, T.Q3_K], ids=lambda t: t.name)
def test_k_codes_are_nearest_levels(t):
    """Every element's code is the level nearest to it for its sub-block's decoded scale
    (and min), unless the nearest level lies outside the code range."""
    x, _ = _rows(2, rows=8)
    rows, n = x.shape
    raw = Q.quantize(x, t)
    y = _decode(raw, t, rows, n)
    blocks = raw.reshape(-1, 84 if t == T.Q2_K else 110).copy()
    if t == T.Q2_K:  # all codes 0 -> -m; all codes 1 -> step - m
        b0, b1 = blocks.copy(), blocks.copy()
        b0[:, 16:80] = 0
        b1[:, 16:80] = 0x55
        lo = gguf.quants.dequantize(b0, t).reshape(rows, n)
        step = gguf.quants.dequantize(b1, t).reshape(rows, n) - lo
        top = lo + 3 * step
    else:  # low bits 01 and the high bit set: code 5 -> value = step * 1
        b1 = blocks.copy()
        b1[:, 0:32] = 0xFF
        b1[:, 32:96] = 0x55
        step = gguf.quants.dequantize(b1, t).reshape(rows, n)
        lo, top = -4 * step, 3 * step
    inside = (x > np.minimum(lo, top)) & (x < np.maximum(lo, top))
    tol = np.abs(step) * (0.5 + 1e-3) + 1e-6
    assert (np.abs(y - x)[inside] <= tol[inside]).all()
    # outside the range the code sits at the nearer end
    out = ~inside
    assert (np.abs(y - x)[out] <= np.minimum(np.abs(lo - x), np.abs(top - x))[out] + tol[out]).all()


@pytest.mark.parametrize("t", LOW, ids=lambda t: t.name)
def test_quantizers_rows_are_independent(t):
    """Rows go through the search in slices on a thread pool: quantizing rows one at a
    time gives the same bytes as quantizing them all at once (several slices)."""
    x, rng = _rows(3, rows=300 if t != T.IQ2_XXS else 150, n=1024)
    im = rng.uniform(0.5, 2.0, x.shape).astype(np.float32)
    whole = Q.quantize(x, t, im)
    for r in (0, 63, 64, 149, len(x) - 1):
        assert np.array_equal(Q.quantize(x[r:r + 1], t, im[r:r + 1]), whole[r:r + 1])


def test_iq2_xxs_refused_without_imatrix():
    with pytest.raises(ValueError, match="importance matrix"):
        Q.quantize(np.ones((1, 256), np.float32), T.IQ2_XXS)


# ---------------------------------------------------------------- imatrix files

def _write_gguf_imatrix(path, entries: dict[str, np.ndarray], counts: dict[str, np.ndarray]):
    w = gguf.GGUFWriter(str(path), arch="imatrix")
    w.add_array("imatrix.datasets", ["calibration.txt"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, sums in entries.items():  # sums [n_mat, cols], counts [n_mat]
        w.add_tensor(f"{name}.in_sum2", sums.astype(np.float32))
        w.add_tensor(f"{name}.counts", counts[name].astype(np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_legacy_imatrix(path, entries: dict[str, np.ndarray], ncall: int, trailer=True):
    out = [struct.pack("<i", len(entries))]
    for name, sums in entries.items():
        nb = name.encode()
        out += [struct.pack("<i", len(nb)), nb, struct.pack("<ii", ncall, sums.size),
                sums.astype("<f4").tobytes()]
    if trailer:
        out += [struct.pack("<ii", 10, 15), b"calibration.txt"]
    path.write_bytes(b"".join(out))


def test_imatrix_formats(tmp_path):
    rng = np.random.default_rng(4)
    sums = {"blk.0.ffn_gate_exps.weight": rng.uniform(0, 5, (4, 256)).astype(np.float32),
            "blk.0.attn_q_a.weight": rng.uniform(0, 5, (1, 64)).astype(np.float32)}
    counts = {"blk.0.ffn_gate_exps.weight": np.array([4, 4, 0, 4]), "blk.0.attn_q_a.weight": np.array([4])}
    _write_gguf_imatrix(tmp_path / "im.gguf", sums, counts)
    g = load_imatrix(tmp_path / "im.gguf")
    exp = sums["blk.0.ffn_gate_exps.weight"] / 4
    exp[2] = 1.0  # an expert that never saw a token
    np.testing.assert_allclose(matrix_weights(g, "blk.0.ffn_gate_exps.weight", (4, 128, 256)), exp, rtol=1e-6)
    assert matrix_weights(g, "blk.1.ffn_gate_exps.weight", (4, 128, 256)) is None
    with pytest.raises(ConvertError, match="another model"):
        matrix_weights(g, "blk.0.ffn_gate_exps.weight", (8, 128, 256))
    for trailer in (True, False):
        _write_legacy_imatrix(tmp_path / "im.dat", sums, ncall=4, trailer=trailer)
        d = load_imatrix(tmp_path / "im.dat")
        np.testing.assert_allclose(d["blk.0.attn_q_a.weight"], sums["blk.0.attn_q_a.weight"].ravel() / 4,
                                   rtol=1e-6)
    data = (tmp_path / "im.dat").read_bytes()
    (tmp_path / "bad.dat").write_bytes(data[:100])
    with pytest.raises(ConvertError, match="truncated"):
        load_imatrix(tmp_path / "bad.dat")
    (tmp_path / "junk.dat").write_bytes(b"\xff\xff\xff\xff" + data[4:])
    with pytest.raises(ConvertError, match="not an imatrix"):
        load_imatrix(tmp_path / "junk.dat")
    with pytest.raises(ConvertError, match="does not exist"):
        load_imatrix(tmp_path / "none.gguf")


# ---------------------------------------------------------------- recipes

def test_q2_recipes_choose_types():
    q2, q2q4 = get_recipe("q2", n_layer=43), get_recipe("q2q4", n_layer=43)
    shp = (256, 2048, 4096)
    assert choose_type(q2, "blk.3.ffn_gate_exps.weight", shp, "experts", "FP4") == (T.IQ2_XXS, None)
    assert choose_type(q2, "blk.3.ffn_up_exps.weight", shp, "experts", "FP4") == (T.IQ2_XXS, None)
    assert choose_type(q2, "blk.3.ffn_down_exps.weight", shp, "experts", "FP4") == (T.Q2_K, None)
    assert choose_type(q2, "blk.3.attn_q_a.weight", (1024, 4096), "proj", "FP8") == (T.Q8_0, None)
    assert choose_type(q2, "token_embd.weight", (129280, 4096), "embed", "BF16") == (T.BF16, None)
    assert choose_type(q2q4, "blk.36.ffn_down_exps.weight", shp, "experts", "FP4") == (T.Q2_K, None)
    for blk in (37, 42, 43):  # the last 6 layers and the MTP block
        assert choose_type(q2q4, f"blk.{blk}.ffn_up_exps.weight", shp, "experts", "FP4") == (T.Q4_K, None)
    # rows that are not a multiple of 256 fall back
    assert choose_type(q2, "blk.0.ffn_down_exps.weight", (8, 256, 128), "experts") == (T.Q4_0, T.Q2_K)


# ---------------------------------------------------------------- conversion

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowbit-src")
    fx = of.build_official(root / "official-fp8", seed=0)
    return root / "official-fp8", fx


def _types(path):
    return {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}


def _values(path, name):
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name == name:
            shape = tuple(int(s) for s in reversed(list(t.shape)))
            return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    raise KeyError(name)


def test_convert_q2_needs_imatrix(official, tmp_path, capsys):
    src, _ = official
    assert main([str(src), str(tmp_path / "o.gguf"), "--recipe", "q2"]) == 2
    err = capsys.readouterr().err
    assert "IQ2_XXS" in err and "--imatrix" in err and "pyv4 imatrix" in err
    assert not (tmp_path / "o.gguf").exists()


def test_convert_q2_with_imatrix(official, tmp_path, capsys):
    src, fx = official
    # imatrix of the routed gate/up experts (IQ2_XXS) from the fixture's shapes
    first = str(tmp_path / "first.gguf")
    assert main([str(src), first, "--recipe", "q8", "-q"]) == 0
    shapes = {t.name: tuple(int(s) for s in reversed(list(t.shape)))
              for t in gguf.GGUFReader(first).tensors}
    rng = np.random.default_rng(6)
    sums, counts = {}, {}
    for name, shp in shapes.items():
        if "_exps" in name:
            sums[name] = rng.uniform(0.1, 10.0, (shp[0], shp[-1])).astype(np.float32)
            counts[name] = np.full(shp[0], 8.0)
    _write_gguf_imatrix(tmp_path / "im.gguf", sums, counts)
    _write_legacy_imatrix(tmp_path / "im.dat", sums, ncall=8)
    out = tmp_path / "q2.gguf"
    assert main([str(src), str(out), "--recipe", "q2", "--imatrix", str(tmp_path / "im.gguf")]) == 0
    err = capsys.readouterr().err
    assert "imatrix im.gguf" in err
    types = _types(out)
    assert types["blk.0.ffn_gate_exps.weight"] == T.IQ2_XXS and types["blk.0.ffn_up_exps.weight"] == T.IQ2_XXS
    assert types["blk.0.ffn_down_exps.weight"] == T.Q4_0  # rows of 128: Q2_K does not fit
    assert types["blk.0.attn_q_a.weight"] == T.Q8_0
    deq = fx["dequantized"]
    n_exp = sum(1 for k in deq if k.startswith("layers.0.ffn.experts.") and k.endswith(".w1.weight"))
    want = np.stack([deq[f"layers.0.ffn.experts.{e}.w1.weight"].numpy() for e in range(n_exp)])
    got = _values(out, "blk.0.ffn_gate_exps.weight")
    assert np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()) < 0.45
    # the legacy file holds the same values: the same bytes
    out2 = tmp_path / "q2-dat.gguf"
    assert main([str(src), str(out2), "--recipe", "q2", "--imatrix", str(tmp_path / "im.dat"), "-q"]) == 0
    assert out.read_bytes() == out2.read_bytes()
    # and other importance values give other codes
    _write_gguf_imatrix(tmp_path / "im2.gguf", {k: v[:, ::-1].copy() for k, v in sums.items()}, counts)
    out3 = tmp_path / "q2-other.gguf"
    assert main([str(src), str(out3), "--recipe", "q2", "--imatrix", str(tmp_path / "im2.gguf"), "-q"]) == 0
    assert out.read_bytes() != out3.read_bytes()
    # the model runs: fast mode near the reference mode
    import pyv4

    m = pyv4.Model(out)
    toks = np.arange(3, 13)
    old = _core.compute_mode()
    try:
        _core.set_compute_mode("reference")
        ref = m.new_session(kv="f32").eval(toks, logits="all")
        _core.set_compute_mode("fast")
        fast = m.new_session(kv="f32").eval(toks, logits="all")
    finally:
        _core.set_compute_mode(old)
    assert np.isfinite(fast).all()
    assert (np.abs(fast - ref).max(axis=1) / np.abs(ref).max(axis=1)).max() < 0.05


def test_convert_q2q4_and_type_overrides(official, tmp_path, capsys):
    src, _ = official
    out = tmp_path / "o.gguf"
    # q3_k / q2_k by --type without an imatrix: allowed, reported
    assert main([str(src), str(out), "--recipe", "q8", "--type", "*ffn_gate_exps*=q3_k",
                 "--type", "*ffn_up_exps*=q2_k", "--type", "*ffn_gate_shexp*=iq4_xs"]) == 0
    err = capsys.readouterr().err
    assert "without an importance matrix" in err
    types = _types(out)
    assert types["blk.1.ffn_gate_exps.weight"] == T.Q3_K and types["blk.1.ffn_up_exps.weight"] == T.Q2_K
    assert types["blk.1.ffn_gate_shexp.weight"] == T.IQ4_XS
    assert np.isfinite(pyv4.Model(out).new_session().eval([1, 2, 3])).all()
    # q2q4 on this 4-layer fixture: every block is among the last 6, so all experts Q4_K
    # (no IQ2_XXS left, so no imatrix needed)
    assert main([str(src), str(out), "--recipe", "q2q4", "-q"]) == 0
    types = _types(out)
    assert types["blk.0.ffn_gate_exps.weight"] == T.Q4_K and types["blk.4.ffn_up_exps.weight"] == T.Q4_K
