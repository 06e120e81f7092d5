"""Q5_K and Q6_K, the K types of llama-quantize's ladders (community DeepSeek-V4
GGUFs store output.weight, attention and ffn_down tensors in them).

Their decode and kernels are covered with the other super-block types in
test_lowbit.py (gguf.quants bit for bit, every ISA path and token count); here:
hand-made blocks that pin each format's fields, models with these types in every
role (token embedding, attention, shared and routed experts, output head) whose
reference-mode logits equal those of the same model with gguf.quants' decoded
weights stored as F32 (bit for bit) and whose fast-mode logits stay close, a file
written by llama.cpp's own llama-quantize, `pyv4 info`, `pyv4 requantize --type`
producing them (the importance-weighted searches of test_quantize_lowbit.py; their
error against llama-quantize's on the same tensors and importance), and the GPU
placement putting them on the GPU (their CUDA decode: test_cuda_host.py).
"""

import dataclasses
import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

import gguf_tools as gt
from llamacpp_peer import llama_quantize
from test_iq_types import _f16, _oracle
from test_kernels import _restore_switches  # noqa: F401 (autouse: ISA and compute mode restored)
from test_lowbit import _run, check_fast_model

from pyv4 import _core

CONFIG = dict(vocab_size=512, max_position_embeddings=1024, hidden_size=256, moe_intermediate_size=256,
              num_hidden_layers=3, compress_ratios=[0, 4, 128], num_hash_layers=1)


def test_q6k_fields():
    # element 48 (half 0, j = 1, l = 16): low nibble of ql[48], bits 2..3 of qh[16],
    # scale 3; element 112 (j = 3): high nibble of ql[48], bits 6..7 of qh[16], scale 7;
    # element 128 (half 1): ql[64], qh[32], scale 8 = -128 with code 0
    raw = np.zeros(210, np.uint8)
    raw[208:210] = _f16(0.5)
    raw[48] = 0xBA
    raw[128 + 16] = 0b10_00_11_00
    sc = raw[192:208].view(np.int8)
    sc[3], sc[7], sc[8] = -7, 5, -128
    v = _core.quant_dequantize("Q6_K", raw, 256)
    assert v[48] == 0.5 * -7 * ((10 | 3 << 4) - 32)
    assert v[112] == 0.5 * 5 * ((11 | 2 << 4) - 32)
    assert v[128] == 0.5 * -128 * -32
    assert v[0] == 0.0 and v[16] == 0.0  # scales 0
    assert np.array_equal(v, _oracle("Q6_K", raw))


def test_q5k_fields():
    # sub-block 5 (elements 160..191): 6-bit scale 19 = low nibble 3 of scales[9] |
    # top bits 01 of scales[1]; min 34 = high nibble 2 of scales[9] | top bits 10 of
    # scales[5]; element 167: high nibble 12 of qs[64 + 7], fifth bit = bit 5 of qh[7]
    raw = np.zeros(176, np.uint8)
    raw[0:2], raw[2:4] = _f16(0.25), _f16(0.125)
    s = raw[4:16]
    s[9], s[1], s[5] = 0x23, 0b01 << 6, 0b10 << 6
    raw[16 + 7] = 1 << 5
    raw[48 + 64 + 7] = 0xC0
    v = _core.quant_dequantize("Q5_K", raw, 256)
    assert v[167] == np.float32(0.25 * 19) * 28 - np.float32(0.125 * 34)
    assert v[160] == -np.float32(0.125 * 34)  # code 0: the min alone
    assert not v[:160].any()  # sub-blocks 0..4: scales and mins 0
    assert np.array_equal(v, _oracle("Q5_K", raw))


# ---------------------------------------------------------------- model level

# every role in these types once (the rows of 32 of this config fall back to Q4_0)
MIXES = {
    "q6": [("token_embd.weight", "q6_k"), ("output.weight", "q6_k"), ("*attn_*", "q6_k"),
           ("*ffn_*_shexp*", "q5_k"), ("*ffn_down_exps*", "q6_k"), ("*ffn_*_exps*", "q5_k")],
    "q5": [("token_embd.weight", "q5_k"), ("output.weight", "q5_k"), ("*attn_*", "q5_k"),
           ("*ffn_*_shexp*", "q6_k"), ("*ffn_*_exps*", "q6_k")],
}


@pytest.fixture(scope="module")
def k_models(tmp_path_factory):
    from pyv4.demo import DEMO_CONFIG
    from pyv4.synthetic import write_random_gguf_typed

    root = tmp_path_factory.mktemp("k")
    # seed 5: no near-tie among the choices of these random models (with seed 7 the q6
    # model's fast and reference runs route one position differently, its logits then
    # move 36 %, on AVX2 and AVX-512 alike, which agree to 1 %)
    return {k: write_random_gguf_typed(root / f"{k}.gguf", dict(DEMO_CONFIG, **CONFIG), None, recipe="mxfp4",
                                       seed=5, overrides=ov)
            for k, ov in MIXES.items()}


def _types(path):
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def _decoded_copy(path, dst):
    """The GGUF at path with every Q5_K / Q6_K tensor replaced by its gguf.quants
    decode stored as F32 (the oracle's weights, same metadata)."""
    g = gt.read(path)
    for t in g.tensors:
        if t.ggml_type in (QT.Q5_K, QT.Q6_K):
            raw = np.frombuffer(t.data, np.uint8).reshape(-1, {QT.Q5_K: 176, QT.Q6_K: 210}[t.ggml_type])
            t.data = gq.dequantize(raw, QT(t.ggml_type)).astype(np.float32).tobytes()
            t.ggml_type = int(QT.F32)
    gt.write(g, dst)
    return dst


def _check_against_decoded(path, tmp_path):
    """Reference-mode logits (scalar decode, fp32 dots) equal, bit for bit, those
    of the model whose K-type weights are gguf.quants' decode stored as F32."""
    import pyv4

    _core.set_compute_mode("reference")
    toks = np.arange(5, 17)
    ours = _run(pyv4.Model(path, threads=2), toks)
    ref = _run(pyv4.Model(_decoded_copy(path, tmp_path / "decoded.gguf"), threads=2), toks)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_model_matches_decoded_weights(k_models, mix, tmp_path):
    types = _types(k_models[mix])
    want = {"token_embd.weight", "output.weight", "blk.1.attn_q_a.weight", "blk.1.attn_kv.weight",
            "blk.1.ffn_up_shexp.weight", "blk.1.ffn_down_exps.weight", "blk.1.ffn_gate_exps.weight"}
    got = {n: types[n] for n in want}
    assert set(got.values()) <= {"Q5_K", "Q6_K"} and len(set(got.values())) == 2, got
    _check_against_decoded(k_models[mix], tmp_path)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_model_fast_close_to_reference(k_models, mix, isa):
    import pyv4

    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    check_fast_model(pyv4.Model(k_models[mix], threads=2), isa)


def test_info_shows_k_types(k_models):
    from pyv4.info import describe

    d = describe(str(k_models["q6"]))
    assert {"Q5_K", "Q6_K"} <= set(d["tensor_types"])
    assert d["loadable"], d["loadable_detail"]


def test_requantize_produces_k_types(k_models, tmp_path):
    """`pyv4 requantize --type` writes Q6_K / Q5_K (rows that do not fit 256 fall
    back to Q8_0), and the file loads and runs."""
    import pyv4
    from gguf import GGUFReader

    from pyv4.convert.requantize import main

    out = tmp_path / "k.gguf"
    assert main([str(k_models["q5"]), str(out), "--recipe", "q8", "--type", "output.weight=q6_k",
                 "--type", "*attn_*=q6_k", "--type", "*ffn_*_exps*=q5_k", "-q"]) == 0
    types = _types(out)
    assert types["output.weight"] == "Q6_K" and types["blk.1.attn_kv.weight"] == "Q6_K"
    assert types["blk.1.attn_q_b.weight"] == "Q8_0"  # rows of 32: the fallback
    assert types["blk.1.ffn_down_exps.weight"] == "Q5_K" and types["blk.1.ffn_up_shexp.weight"] == "Q8_0"
    src = {t.name: t for t in GGUFReader(str(k_models["q5"])).tensors}
    dst = {t.name: t for t in GGUFReader(str(out)).tensors}
    for name, t in (("output.weight", QT.Q6_K), ("blk.1.ffn_down_exps.weight", QT.Q5_K)):
        a = gq.dequantize(np.asarray(src[name].data), QT(src[name].tensor_type))
        b = gq.dequantize(np.asarray(dst[name].data), t)
        assert np.sqrt(np.mean((a - b) ** 2)) < {QT.Q6_K: 0.02, QT.Q5_K: 0.04}[t] * np.sqrt(np.mean(a * a))
    logits = pyv4.Model(out, threads=2).new_session(kv="f32").eval(np.arange(5, 9))
    assert np.isfinite(logits).all()


def test_requantize_reads_k_types(k_models, tmp_path):
    """A file with Q5_K / Q6_K tensors is a requantize source (the core decodes them)."""
    from gguf import GGUFReader

    from pyv4.convert.requantize import main

    out = tmp_path / "q8.gguf"
    assert main([str(k_models["q6"]), str(out), "--recipe", "q8", "-q"]) == 0
    src = {t.name: t for t in GGUFReader(str(k_models["q6"])).tensors}
    dst = {t.name: t for t in GGUFReader(str(out)).tensors}
    for name, t in (("output.weight", QT.Q6_K), ("blk.0.ffn_up_shexp.weight", QT.Q5_K)):
        assert src[name].tensor_type == t and dst[name].tensor_type == QT.Q8_0
        a = gq.dequantize(np.asarray(src[name].data), t)
        b = gq.dequantize(np.asarray(dst[name].data), QT.Q8_0)
        assert np.abs(a - b).max() <= np.abs(a).max() / 127  # Q8_0 of the decoded values


def test_placement_puts_k_types_on_the_gpu(k_models):
    """Q5_K / Q6_K are GPU types (csrc/cuda/block_math.h): a model with its head,
    attention and experts in them is placed like any other."""
    from pyv4.model_shape import from_gguf
    from pyv4.placement import plan

    shape = from_gguf(str(k_models["q6"]))
    assert {"Q5_K", "Q6_K"} <= {t.type for t in shape.tensors if t.category != "experts"}
    p = plan(shape, 64 << 30)
    assert p.experts_gpu_per_layer == [shape.n_expert] * shape.n_layer


# ---------------------------------------------------------------- llama-quantize's own file

LLAMA_QUANTIZE = llama_quantize()
# what a community ladder does with these roles (Q4_K_M / Q5_K_M keep the head and
# ffn_down in Q6_K), every tensor named exactly in a --pure run
PEER_TYPES = [("output.weight", "q6_k"), ("token_embd.weight", "q6_k"), ("*attn_kv*", "q5_k"),
              ("*attn_q_a*", "q6_k"), ("*ffn_down_*", "q6_k"), ("*ffn_*_exps*", "q5_k"), ("*ffn_*_shexp*", "q5_k")]


@pytest.mark.skipif(LLAMA_QUANTIZE is None, reason="llama-quantize not found (set PYV4_LLAMA_TOOLS)")
def test_llama_quantize_file(tmp_path):
    """A tiny F32 model quantized by llama-quantize into Q6_K / Q5_K (the rest F32)
    loads in pyv4; reference-mode logits equal those of the file's gguf.quants decode
    stored as F32, fast-mode ones stay close on each ISA."""
    import pyv4
    from gguf import GGMLQuantizationType as T

    from pyv4.demo import DEMO_CONFIG
    from pyv4.synthetic import parse_config, tensor_types, write_random_gguf

    config = dict(DEMO_CONFIG, **CONFIG)
    f32 = write_random_gguf(tmp_path / "f32.gguf", config, None, seed=3, matrix_type=T.F32)
    types = tensor_types(parse_config(config, "peer"), "f32", PEER_TYPES)
    # every tensor named (the --pure ftype, Q8_0, is the default of unnamed ones);
    # llama-quantize matches names as regular expressions: anchor them, escape the dots;
    # rows that do not fit 256 (Q4_0 by our fallback) stay F32 here
    lines = [f"^{n.replace('.', '[.]')}$={(t.name if t in (T.Q5_K, T.Q6_K) else 'F32').lower()}"
             for n, t in types.items()]
    (tmp_path / "types.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "lcpp-k.gguf"
    r = subprocess.run([LLAMA_QUANTIZE, "--tensor-type-file", str(tmp_path / "types.txt"), "--pure",
                        str(f32), str(out), "Q8_0", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _types(out)
    want = {n: t.name for n, t in types.items() if t in (T.Q5_K, T.Q6_K)}
    assert {n: got[n] for n in want} == want
    assert got["output.weight"] == "Q6_K" and set(got.values()) == {"F32", "I32", "Q5_K", "Q6_K"}
    _check_against_decoded(out, tmp_path)
    for isa in ("avx2", "avx512"):
        if _core.isa_supported(isa):
            check_fast_model(pyv4.Model(out, threads=2), isa)


@pytest.mark.skipif(LLAMA_QUANTIZE is None, reason="llama-quantize not found (set PYV4_LLAMA_TOOLS)")
@pytest.mark.parametrize("tname,ftype", [("Q6_K", "Q6_K"), ("Q5_K", "Q5_K_M")])
def test_error_against_llama_quantize(tmp_path, tname, ftype):
    """pyv4's importance-weighted Q6_K / Q5_K (the converter's C++ search) against
    llama-quantize's on the same F32 tensors with the same importance matrix (a GGUF
    imatrix of random column importances, widely spread): the importance-weighted
    RMSE pooled over every tensor llama-quantize stored in the type, at most 2 %
    above llama.cpp's."""
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    from pyv4.convert.imatrix import load_imatrix, matrix_weights
    from pyv4.convert.quants import quantize
    from pyv4.demo import DEMO_CONFIG
    from pyv4.imatrix import write_gguf
    from pyv4.synthetic import write_random_gguf

    f32 = write_random_gguf(tmp_path / "f32.gguf", dict(DEMO_CONFIG, **CONFIG), None, seed=3, matrix_type=T.F32)
    src = {t.name: t for t in GGUFReader(str(f32)).tensors}
    rng = np.random.default_rng(0)
    entries = []
    for name, t in src.items():
        ne = [int(s) for s in t.shape]
        if len(ne) >= 2 and name != "token_embd.weight":
            n_exp = ne[2] if len(ne) == 3 else 1
            entries.append((name, np.exp(2 * rng.standard_normal((n_exp, ne[0]))).astype(np.float32), np.ones(n_exp)))
    write_gguf(tmp_path / "imatrix.gguf", entries, "random", 1, 512)
    out = tmp_path / f"lcpp-{ftype}.gguf"
    r = subprocess.run([LLAMA_QUANTIZE, "--imatrix", str(tmp_path / "imatrix.gguf"), "--pure", str(f32), str(out),
                        ftype, "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    im = load_imatrix(tmp_path / "imatrix.gguf")
    ours = theirs = den = 0.0
    n = 0
    for t in GGUFReader(str(out)).tensors:
        if t.tensor_type.name != tname:
            continue
        shape = tuple(int(s) for s in reversed(list(t.shape)))
        x = np.asarray(src[t.name].data, np.float32).reshape(-1, shape[-1])
        imp = matrix_weights(im, t.name, shape)
        w = np.ones_like(x) if imp is None else imp[np.arange(x.shape[0]) // (x.shape[0] // imp.shape[0])]
        mine = gq.dequantize(quantize(x, T[tname], None if imp is None else w), T[tname]).reshape(x.shape)
        lc = gq.dequantize(np.asarray(t.data), T[tname]).reshape(x.shape)
        ours += float((w * (x - mine) ** 2).sum())
        theirs += float((w * (x - lc) ** 2).sum())
        den += float(w.sum())
        n += 1
    assert n >= 30
    ratio = np.sqrt(ours / theirs)
    print(f"{tname}: {n} tensors, weighted RMSE pyv4 {np.sqrt(ours / den):.6g}, llama.cpp "
          f"{np.sqrt(theirs / den):.6g}, ratio {ratio:.4f}")
    assert ratio <= 1.02
