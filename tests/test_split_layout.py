"""The split row layout of Q4_0 / MXFP4 matrices (csrc/quant/split_layout.h).

Oracles:
* the layout itself: split rows built here with numpy from the format the header
  documents, byte for byte, and unsplit(split(raw)) == raw;
* products: the same bits as on the GGML layout (every path computes the same
  sums in the same order), on every ISA and in both compute modes, and within
  the activation-quantization bound of test_kernels against float64;
* a model: logits with split_weights on and off are the same bits.
"""

import mmap

import numpy as np
import pytest
from quant_tools import check_fast, gguf_dequant, random_weight
from test_kernels import _restore_switches  # noqa: F401 (autouse)

import pyv4
from pyv4 import _core
from pyv4.demo import DEMO_CONFIG
from pyv4.synthetic import write_random_gguf_typed

SPLIT_TYPES = ["MXFP4", "Q4_0"]
SCALE_BYTES = {"MXFP4": 1, "Q4_0": 2}
BLOCK_BYTES = {"MXFP4": 17, "Q4_0": 18}
ISAS = ["scalar", "avx2", "avx512"]


def numpy_split(type_name, raw, rows, cols):
    """Split rows from the documented format: chunks of 64 / sb blocks, each a
    64-byte line of scales (block o's at o * sb, zero after the last block) and
    then 16 code bytes per block."""
    sb, bb = SCALE_BYTES[type_name], BLOCK_BYTES[type_name]
    cb = 64 // sb
    nb = cols // 32
    blocks = raw.reshape(rows, nb, bb)
    out = []
    for c0 in range(0, nb, cb):
        ch = blocks[:, c0:c0 + cb]
        scales = np.zeros((rows, 64), np.uint8)
        scales[:, : ch.shape[1] * sb] = ch[:, :, :sb].reshape(rows, -1)
        out += [scales, ch[:, :, sb:].reshape(rows, -1)]
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("type_name", SPLIT_TYPES)
@pytest.mark.parametrize("cols", [512, 1024, 1536, 2048, 3072, 4096])
def test_split_format_and_round_trip(type_name, cols):
    rng = np.random.default_rng(cols)
    rows = 5
    raw = random_weight(type_name, rows, cols, rng, full_range=True)
    sp = _core.quant_split(type_name, raw, rows, cols)
    want = numpy_split(type_name, raw, rows, cols)
    assert sp.shape == want.shape and sp.shape[1] % 64 == 0
    assert np.array_equal(sp, want)
    if cols % (32 * 64 // SCALE_BYTES[type_name]) == 0:  # only full chunks: no padding
        assert sp.shape[1] == raw.shape[1]
    assert np.array_equal(_core.quant_unsplit(type_name, sp, rows, cols), raw)


def test_split_rejects_what_has_no_split_form():
    rng = np.random.default_rng(0)
    for type_name, cols in [("Q8_0", 512), ("Q4_K", 512), ("MXFP4", 480), ("Q4_0", 96)]:
        raw = random_weight(type_name, 3, cols, rng)
        with pytest.raises(ValueError, match="no split layout"):
            _core.quant_split(type_name, raw, 3, cols)
        with pytest.raises(ValueError, match="no split layout"):
            _core.quant_matmul(type_name, raw, 3, cols, np.ones((1, cols), np.float32), 1, "split")
        # "auto" falls back to the GGML layout
        x = np.ones((1, cols), np.float32)
        assert np.array_equal(_core.quant_matmul(type_name, raw, 3, cols, x, 1, "auto"),
                              _core.quant_matmul(type_name, raw, 3, cols, x, 1, "ggml"))
    with pytest.raises(ValueError, match="layout must be"):
        _core.quant_matmul("MXFP4", random_weight("MXFP4", 1, 512, rng), 1, 512,
                           np.ones((1, 512), np.float32), 1, "packed")


def test_matmul_many_takes_split_rows():
    """quant_matmul_many's (type, raw, rows, cols, "split") tuples use quant_split's
    rows as they are (bench/experts_decode.py): the same bits as the GGML rows; a
    split buffer off a 64-byte boundary, a type without a split form or an unknown
    layout is refused."""
    _core.set_isa("auto")
    _core.set_compute_mode("fast")
    rng = np.random.default_rng(2)
    rows, cols = 21, 1024
    raw = random_weight("MXFP4", rows, cols, rng)
    s = _core.quant_split("MXFP4", raw, rows, cols)
    page = np.frombuffer(mmap.mmap(-1, s.nbytes + 64), np.uint8)  # page-aligned
    split = page[:s.nbytes].reshape(s.shape)
    split[...] = s
    x = rng.standard_normal((1, cols)).astype(np.float32)
    ys = _core.quant_matmul_many([("MXFP4", split, rows, cols, "split"), ("MXFP4", raw, rows, cols)],
                                 [x, x], 2)
    assert np.array_equal(ys[0], _core.quant_matmul("MXFP4", raw, rows, cols, x, 1))
    assert np.array_equal(ys[0], ys[1])
    with pytest.raises(ValueError, match="64-byte boundary"):
        _core.quant_matmul_many([("MXFP4", page[1:1 + s.nbytes], rows, cols, "split")], [x], 1)
    with pytest.raises(ValueError, match="no split layout"):
        _core.quant_matmul_many([("Q8_0", random_weight("Q8_0", rows, cols, rng), rows, cols,
                                  "split")], [x], 1)
    with pytest.raises(ValueError, match="layout must be"):
        _core.quant_matmul_many([("MXFP4", raw, rows, cols, "packed")], [x], 1)


def _matmul_cases():
    # tokens: GEMV (1..3), tiles (4..19), lane GEMM (20+); 1536 columns ends in a
    # partial chunk for both types
    return [(t, isa, n, cols) for t in SPLIT_TYPES for isa in ISAS
            for n, cols in [(1, 1536), (2, 2048), (3, 512), (4, 1536), (5, 3072), (11, 512),
                            (20, 1536), (33, 2048)]]


@pytest.mark.parametrize("type_name,isa,n_tokens,cols", _matmul_cases())
def test_split_matmul_same_bits_as_ggml(type_name, isa, n_tokens, cols):
    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    _core.set_isa(isa)
    rng = np.random.default_rng(n_tokens * 7919 + cols)
    rows = 37  # not a multiple of the 4-row tiles or 16-row panels
    raw = random_weight(type_name, rows, cols, rng)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x[:, :32] *= 10.0
    for mode in ("fast", "reference"):
        _core.set_compute_mode(mode)
        yg = _core.quant_matmul(type_name, raw, rows, cols, x, 1, "ggml")
        for threads in (1, 2):
            ys = _core.quant_matmul(type_name, raw, rows, cols, x, threads, "split")
            assert np.array_equal(ys, yg), (mode, threads, np.abs(ys - yg).max())
        if mode == "fast":
            check_fast(type_name, gguf_dequant(type_name, raw, rows, cols), x, ys)


# ---------------------------------------------------------------- model level

# Every width a multiple of 512, so the matrices in Q4_0 / MXFP4 are split.
WIDE = dict(DEMO_CONFIG, vocab_size=512, max_position_embeddings=1024, hidden_size=512,
            num_hidden_layers=3, compress_ratios=[0, 4, 128], q_lora_rank=512, o_lora_rank=256,
            moe_intermediate_size=512, num_hash_layers=1)
# mxfp4 recipe (MXFP4 routed experts) with Q4_0 shared experts and query/output projections
OVERRIDES = [("*ffn_*_shexp*", "q4_0"), ("*attn_q_b*", "q4_0"), ("*attn_output_b*", "mxfp4")]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "wide.gguf"
    write_random_gguf_typed(path, WIDE, None, recipe="mxfp4", seed=5, overrides=OVERRIDES)
    return path


def test_model_split_matches_ggml(wide_model):
    from gguf import GGUFReader

    tensors = GGUFReader(str(wide_model)).tensors
    types = {t.name: t.tensor_type.name for t in tensors}
    assert types["blk.1.ffn_up_exps.weight"] == "MXFP4" and types["blk.1.attn_q_b.weight"] == "Q4_0"
    # routed + shared experts, wq_b, wo_b, the CSA layer's indexer q_b
    splittable = sum(1 for t in tensors if t.tensor_type.name in SPLIT_TYPES
                     and int(t.shape[0]) % 512 == 0 and t.name != "token_embd.weight")
    assert splittable == 8 * WIDE["num_hidden_layers"] + 1
    toks = np.arange(5, 45)
    runs = {}
    for split, resident in [(False, False), (True, False), (True, True)]:
        m = pyv4.Model(wide_model, threads=2, resident=resident, split_weights=split)
        n = m._engine.split_matrices
        if split and _core.isa_supported("avx512"):
            assert n == splittable
        else:
            assert n == 0
        s = m.new_session()
        out = [s.eval(toks, logits="all")]
        for t in (7, 300, 11):  # decode steps: the GEMV path
            out.append(s.eval([t]))
        runs[split, resident] = out
    base = runs[False, False]
    assert all(np.isfinite(a).all() for a in base)
    for key, out in runs.items():
        for a, b in zip(out, base):
            assert np.array_equal(a, b), key
