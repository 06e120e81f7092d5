"""Super-block weight types of issue #16: Q2_K, Q3_K, IQ2_XXS (and IQ4_XS), the
load-only i-quants IQ3_XXS, IQ2_XS, IQ1_S, IQ1_M (more of them in test_iq_types.py)
and Q5_K, Q6_K (more in test_k_types.py).

Oracles as in test_kernels.py: `gguf.quants.dequantize` bit for bit for the
scalar decode; for the fast kernels the float64 product of the dequantized
weights, within the bound of the int8 activation quantization (each activation
moves by at most amax_block/254, so an output by at most
sum_i |w_i| * amax_block(i) / 254; amax/250 leaves room for fp32 rounding).
The sub-block scales of Q2_K / Q3_K are small integers folded into the int32
dots exactly, so the same bound holds for them.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

from quant_tools import LOWBIT, check_fast, f16_bits, put_f16_bits, random_blocks
from test_kernels import _restore_switches  # noqa: F401 (autouse: ISA and compute mode restored)

from pyv4 import _core

ISAS = ["scalar", "avx2", "avx512"]


def gguf_dequant(type_name, raw, rows, cols):
    raw = np.ascontiguousarray(raw).reshape(rows, -1)
    return gq.dequantize(raw, QT[type_name]).reshape(rows, cols)


# ---------------------------------------------------------------- decode

@pytest.mark.parametrize("type_name", sorted(LOWBIT))
def test_dequantize_matches_gguf(type_name):
    rng = np.random.default_rng(11)
    nb = 64
    raw = random_blocks(type_name, nb, rng, full_range=True)
    # extreme blocks: all bits set (max codes, scales, every sign index 127), all
    # clear, the largest finite scale, alternating bit patterns
    raw[0, :] = 0xFF
    raw[1, :] = 0
    raw[2, :] = 0xAA
    raw[3, :] = 0x55
    n_scales = f16_bits(type_name, raw).shape[1]
    put_f16_bits(type_name, raw[:4], np.full((4, n_scales), 0x7BFF))  # 65504
    raw[4, :] = 0xFF
    put_f16_bits(type_name, raw[4:5], np.full((1, n_scales), 0x8001))  # -subnormal
    n = nb * 256
    ours = _core.quant_dequantize(type_name, raw.reshape(-1), n)
    ref = gguf_dequant(type_name, raw, 1, n).reshape(-1).astype(np.float32)
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_iq2xxs_signs_and_grid():
    # group 0: grid indices (0, 1, 2, 255), sign index 1 for the first 8 (element 0
    # negative and, by parity, element 7 too), scale nibble 3: db = d * 3.5 / 4
    raw = np.zeros(66, np.uint8)
    raw[0:2] = np.array([1.0], np.float16).view(np.uint8)
    raw[2:6] = [0, 1, 2, 255]
    raw[6:10] = np.array([1 | (3 << 28)], np.uint32).view(np.uint8)
    v = _core.quant_dequantize("IQ2_XXS", raw, 256)
    db = 3.5 / 4
    assert v[0] == -8 * db and v[7] == -8 * db and np.all(v[1:7] == 8 * db)
    ref = gguf_dequant("IQ2_XXS", raw, 1, 256).reshape(-1)
    assert np.array_equal(v, ref)
    assert set(np.abs(v[:32] / db).tolist()) <= {8.0, 25.0, 43.0}


def test_iq4xs_levels_and_scales():
    # block 3: scale 6 bits = 0b10_0101 (low nibble in scales_l[1] high half, high bits
    # at bit 6 of scales_h) -> ls - 32 = 5; codes 0 and 15 -> levels -127 and 113
    raw = np.zeros(136, np.uint8)
    raw[0:2] = np.array([0.5], np.float16).view(np.uint8)
    raw[2:4] = np.array([2 << 6], np.uint16).view(np.uint8)
    raw[4 + 1] = 0x5 << 4
    raw[8 + 16 * 3] = 0xF0  # element 0 of block 3: code 0; element 16: code 15
    v = _core.quant_dequantize("IQ4_XS", raw, 256)
    assert v[96] == 0.5 * 5 * -127 and v[96 + 16] == 0.5 * 5 * 113
    assert np.array_equal(v, gguf_dequant("IQ4_XS", raw, 1, 256).reshape(-1))


def test_dequantize_rejects_bad_length():
    for t in LOWBIT:
        with pytest.raises(ValueError):
            _core.quant_dequantize(t, np.zeros(LOWBIT[t], np.uint8), 128)


# ---------------------------------------------------------------- matmul

def _cases():
    # 2: the AVX-512 GEMVs' middle tile; 4: a group of 3 and one of 1 in the types'
    # own AVX-512 GEMVs (those that take the lane GEMM from 5-10 tokens: quant/matmul.cpp
    # own_gemv_avx512), the first count of the lane GEMM for the others (Q5_K / Q6_K:
    # their quad GEMV); 13: the lane GEMM on AVX-512; avx512-base: the AVX-512-set GEMVs that CPUs without VBMI / GFNI / BITALG
    # run instead of the own GEMVs of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S (quant/matmul.cpp)
    base = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")
    return ([(t, isa, n) for t in sorted(LOWBIT) for isa in ISAS for n in (1, 2, 3, 4, 13, 32, 130)] +
            [(t, "avx512-base", n) for t in base for n in (1, 2, 3, 13)])


@pytest.mark.parametrize("type_name,isa,n_tokens", _cases())
def test_matmul_fast(type_name, isa, n_tokens):
    base = isa == "avx512-base"
    isa = "avx512" if base else isa
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_avx512_extensions(not base)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(hash((type_name, isa, n_tokens)) & 0xFFFF)
    rows = 130 if n_tokens == 32 else 37  # odd: the single-row tail of the 2-row tiles
    cols = 768 if n_tokens in (1, 32) else 512
    raw = random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
    W = gguf_dequant(type_name, raw, rows, cols)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, :32] *= 10.0  # one block with larger activations
    x[:, 256 + 16:256 + 32] *= -5.0  # one 16-element sub-block with larger ones
    if n_tokens > 1:
        x[1, :32] = 0.0  # an all-zero block (dx = 0)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 1)
    assert y.shape == (n_tokens, rows)
    worst = check_fast(type_name, W, x, y)
    if isa != "scalar":
        assert worst > 0.0  # the int8 path really ran (the scalar one is exact fp32)
    # threads split rows only: every output is computed identically
    y2 = _core.quant_matmul(type_name, raw, rows, cols, x, 2)
    assert np.array_equal(y, y2)


@pytest.mark.parametrize("type_name,needs", [("IQ2_XXS", "gfni"), ("IQ3_XXS", "avx512bitalg")])
def test_vbmi_lane_packers_agree(type_name, needs):
    """The IQ2_XXS / IQ3_XXS lane GEMM packs by the GEMV's table lookups where the CPU has
    VBMI (+ GFNI / BITALG) and by grid gathers elsewhere: the same codes and scales, so
    the same bits."""
    feats = _core.cpu_features()
    if not (_core.isa_supported("avx512") and feats.get("avx512vbmi") and feats.get(needs)):
        pytest.skip(f"CPU lacks AVX-512 VBMI + {needs}")
    _core.set_isa("avx512")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(7)
    rows, cols = 37, 768  # 3 super-blocks: a full group and a zero-padded half
    raw = random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
    x = rng.standard_normal((32, cols)).astype(np.float32)
    ys = []
    for ext in (True, False):
        _core.set_avx512_extensions(ext)
        ys.append(_core.quant_matmul(type_name, raw, rows, cols, x, 2))
    assert np.array_equal(ys[0], ys[1])


def _extreme_rows(type_name, raw, rng):
    """Overwrite whole rows with boundary bit patterns (f16 scales kept): all
    zero, all one bits, (Q3_K) 6-bit scales 63 with codes 0, where the lane
    GEMM's code a * (c - 4) + 124 hits its ends 252 / 0, and (IQ1_M) scales 7
    with grid entry 2047 (all +1) and delta +1/8, its lane code a * c = 15 * 9 = 135."""
    patterns = [np.zeros(LOWBIT[type_name], np.uint8), np.full(LOWBIT[type_name], 255, np.uint8)]
    if type_name == "Q3_K":
        p = np.zeros(LOWBIT[type_name], np.uint8)
        p[96:108] = 255
        patterns.append(p)
    if type_name == "IQ1_M":
        p = np.full(LOWBIT[type_name], 255, np.uint8)
        p[32:48] = 0x77  # high index bits 7, delta sign bits clear
        patterns.append(p)
    if type_name == "Q6_K":  # scales -128 with codes 0 and 63: the widest products
        for code_bits in (0, 255):
            p = np.full(LOWBIT[type_name], code_bits, np.uint8)
            p[192:208] = 0x80
            patterns.append(p)
    per_row = raw.shape[1] // LOWBIT[type_name]
    for r, pat in zip(rng.choice(raw.shape[0], len(patterns), replace=False), patterns):
        blocks = raw[r].reshape(per_row, -1)
        h = f16_bits(type_name, blocks)
        blocks[:] = pat
        put_f16_bits(type_name, blocks, h)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("type_name", sorted(LOWBIT))
def test_lane_gemm_edges(type_name, isa):
    """The lane GEMMs of the super-block types: 5 super-blocks per row (AVX-512: a
    group of two, then a zero-padded half group; Q2_K's sub-block sums hs padded
    alike; AVX2: one group per super-block, the last in the first half of a
    16-block activation group), 37 rows (panels of 16, AVX-512 row tiles of 4 with a
    tail of 1), token tiles of 4 with tails, boundary bit patterns; a token's result
    does not depend on the other tokens of the call (the same bits in a call of the
    lane GEMM's first count, which is per type: _core.lane_gemm_min_tokens)."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    if _core.lane_gemm_min_tokens(type_name) == 0:
        assert isa == "avx2" and type_name == "IQ4_XS"  # its signed levels: the plain tiles only
        return
    rng = np.random.default_rng(17)
    rows, cols = 37, 1280
    raw = random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
    _extreme_rows(type_name, raw, rng)
    W = gguf_dequant(type_name, raw, rows, cols)
    first = _core.lane_gemm_min_tokens(type_name)  # by type and ISA (quant/matmul.cpp)
    x = rng.standard_normal((first + 11, cols)).astype(np.float32)
    x[:, 1024 + 16:1024 + 32] *= 8.0  # a sub-block of the half group
    x[2, 256:512] = 0.0  # a whole super-block of zero activations
    x[4] = 1.0  # every q = 127: the widest int16 sums of the AVX2 small-code types
    ys = {}
    for n in (first, first + 1, first + 3, first + 11):
        ys[n] = _core.quant_matmul(type_name, raw, rows, cols, x[:n], 2)
        check_fast(type_name, W, x[:n], ys[n])
    for n in (first + 1, first + 3, first + 11):
        assert np.array_equal(ys[n][:first], ys[first])


# The types with an AVX-512 GEMV of their own (quant/matmul.cpp own_gemv_avx512)
OWN_GEMV = ("Q2_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")


@pytest.mark.parametrize("isa,type_name", [("avx2", "Q2_K"), ("avx2", "IQ2_XXS")] +
                         [("avx512", t) for t in OWN_GEMV])
def test_gemv_tokens_alone_and_together(type_name, isa):
    """The GEMVs within the bound for every token count they take; on AVX-512
    (the types' own GEMVs, activations re-laid per call, tokens in groups of up to 3
    up to the lane GEMM's first count) each token's result is bitwise what it gets
    alone (the same integers and float steps per token, whichever group it falls in;
    the AVX2 kernels spread 1 and 2 tokens over more accumulators). 1280 columns: an
    odd number of super-blocks (the IQ2_XXS and IQ2_XS GEMVs decode them in pairs)."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    last = max(3, _core.lane_gemm_min_tokens(type_name) - 1)  # the GEMV's largest count
    rng = np.random.default_rng(23)
    rows, cols = 19, 1280
    raw = random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
    W = gguf_dequant(type_name, raw, rows, cols)
    x = rng.standard_normal((last, cols)).astype(np.float32)
    x[0, 512 + 16:512 + 32] *= 30.0  # one sub-block with large activations
    x[2, 1024:1056] = 0.0  # an all-zero block
    alone = np.concatenate([_core.quant_matmul(type_name, raw, rows, cols, x[t:t + 1], 1)
                            for t in range(last)])
    check_fast(type_name, W, x, alone)
    for n in range(2, last + 1):
        y = _core.quant_matmul(type_name, raw, rows, cols, x[:n], 2)
        check_fast(type_name, W, x[:n], y)
        if isa == "avx512":
            np.testing.assert_array_equal(y, alone[:n], err_msg=f"{n} tokens")


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_iq2xxs_gemv_every_grid_entry_and_sign_field(isa):
    """Each of the 256 grid entries at every position of a group and each of the 128
    sign fields at every field position (the AVX-512 GEMV looks the grid up by its bit
    planes and forms the 8th sign by a parity), read back one weight at a time: token
    k is the unit vector e_k, so every output is one weight, and a wrong magnitude or
    sign (an error of at least 16 * db) exceeds the bound (~32 weights / 250)."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(3)
    rows, cols = 64, 512  # 128 super-blocks, 4096 grid entries and sign fields
    raw = random_blocks("IQ2_XXS", rows * 2, rng)
    g = raw[:, 2:].reshape(rows * 2, 8, 8)  # [super-block, group, 4 indices + sign word]
    n = rows * 2 * 8 * 4
    g[:, :, :4] = (np.arange(n) % 256).reshape(rows * 2, 8, 4).astype(np.uint8)
    f = ((np.arange(n) * 37) % 128).reshape(rows * 2, 8, 4).astype(np.uint32)
    word = f[..., 0] | f[..., 1] << 7 | f[..., 2] << 14 | f[..., 3] << 21
    word |= rng.integers(0, 16, size=word.shape).astype(np.uint32) << 28
    g[:, :, 4:] = word.astype("<u4").view(np.uint8).reshape(rows * 2, 8, 4)
    raw = raw.reshape(rows, -1)
    W = gguf_dequant("IQ2_XXS", raw, rows, cols)
    check_fast("IQ2_XXS", W, np.eye(cols, dtype=np.float32), unit_products("IQ2_XXS", raw, rows, cols))


def unit_products(type_name, raw, rows, cols):
    """The weights [cols, rows] read back through the 1..3-token GEMVs: the unit
    vectors e_k as the tokens, 3 at a time (2 for the last)."""
    eye = np.eye(cols, dtype=np.float32)
    return np.concatenate([_core.quant_matmul(type_name, raw, rows, cols, eye[k:k + 3], 1)
                           for k in range(0, cols - 2, 3)] +
                          [_core.quant_matmul(type_name, raw, rows, cols, eye[-2:], 1)])


@pytest.mark.parametrize("type_name", sorted(LOWBIT))
def test_matmul_reference_exact(type_name):
    _core.set_isa("auto")  # reference mode ignores the ISA
    _core.set_compute_mode("reference")
    rng = np.random.default_rng(7)
    rows, cols, n = 37, 512, 5
    raw = random_blocks(type_name, rows * cols // 256, rng).reshape(rows, -1)
    W = gguf_dequant(type_name, raw, rows, cols).astype(np.float32)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y = _core.quant_matmul(type_name, raw, rows, cols, x, 2)
    ref = np.cumsum(W[None, :, :] * x[:, None, :], axis=2, dtype=np.float32)[:, :, -1]
    assert np.array_equal(y, ref)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_matmul_many_shares_activations(isa):
    """Tasks of one type on the same X share one quantization (and its half sums)."""
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(5)
    cols = 512
    x = rng.standard_normal((3, cols)).astype(np.float32)
    specs = []
    for t in ("Q2_K", "Q3_K", "IQ2_XXS", "IQ4_XS", "Q2_K", "IQ3_XXS", "IQ2_XS", "IQ1_S", "IQ1_M", "Q5_K", "Q6_K"):
        rows = int(rng.integers(5, 40))
        specs.append((t, random_blocks(t, rows * cols // 256, rng).reshape(-1), rows, cols))
    ys = _core.quant_matmul_many(specs, [x] * len(specs), 2)
    for (t, raw, rows, c), y in zip(specs, ys):
        assert np.array_equal(y, _core.quant_matmul(t, raw, rows, c, x, 1))


# ---------------------------------------------------------------- model level

# ds4's 2-bit mix: routed gate/up IQ2_XXS, down Q2_K; shared experts Q3_K
LOWBIT_OVERRIDES = [("*ffn_gate_exps*", "iq2_xxs"), ("*ffn_up_exps*", "iq2_xxs"),
                    ("*ffn_down_exps*", "q2_k"), ("*ffn_*_shexp*", "q3_k")]


@pytest.fixture(scope="module")
def lowbit_model(tmp_path_factory):
    from pyv4.demo import DEMO_CONFIG
    from pyv4.synthetic import write_random_gguf_typed

    config = dict(DEMO_CONFIG, vocab_size=512, max_position_embeddings=1024, hidden_size=256,
                  moe_intermediate_size=256, num_hidden_layers=3, compress_ratios=[0, 4, 128],
                  num_hash_layers=1)
    path = tmp_path_factory.mktemp("lowbit") / "lowbit.gguf"
    write_random_gguf_typed(path, config, None, recipe="mxfp4", seed=9, overrides=LOWBIT_OVERRIDES)
    return path


def _run(model, toks):
    s = model.new_session(kv="f32")
    out = [s.eval(toks, logits="all")]
    for t in (7, 300):  # decode steps: the 1-token kernels
        out.append(s.eval([t]))
    return np.concatenate([o.reshape(-1, o.shape[-1]) for o in out])


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_model_with_lowbit_experts(lowbit_model, isa):
    """A model whose experts are IQ2_XXS / Q2_K / Q3_K loads and runs; fast-mode
    logits on each ISA stay close to the reference mode's (scalar decode, fp32)."""
    import pyv4
    from gguf import GGUFReader

    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(lowbit_model)).tensors}
    assert types["blk.1.ffn_gate_exps.weight"] == "IQ2_XXS" and types["blk.1.ffn_up_exps.weight"] == "IQ2_XXS"
    assert types["blk.1.ffn_down_exps.weight"] == "Q2_K" and types["blk.1.ffn_up_shexp.weight"] == "Q3_K"
    check_fast_model(pyv4.Model(lowbit_model, threads=2), isa)


def check_fast_model(m, isa):
    """Fast-mode logits of a prefill and two decode steps on `isa` stay close to
    the reference mode's (scalar decode to fp32, sequential fp32 dots): the int8
    activations cost ~1.5-3.5 % of the largest logit in these tiny models."""
    toks = np.arange(5, 17)
    _core.set_compute_mode("reference")
    ref = _run(m, toks)
    _core.set_isa(isa)
    _core.set_compute_mode("fast")
    fast = _run(m, toks)
    assert np.isfinite(fast).all() and not np.array_equal(fast, ref)
    rel = np.abs(fast - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert rel.max() < 0.05, rel
    assert (fast.argmax(axis=1) == ref.argmax(axis=1)).mean() >= 0.8
