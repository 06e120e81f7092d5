"""IQ3_S / IQ2_S / IQ4_NL tensors made by llama.cpp's own quantizer (`llama-quantize` with
an importance matrix, as the community GGUFs are made) load in pyv4 and run:
the core decodes llama.cpp's blocks bit for bit as gguf.quants does, and the
fast-mode logits match the reference mode's (scalar decode to fp32, sequential
fp32 dots) on every ISA.

Skipped when llama-quantize is absent: it is looked for in $PYV4_LLAMA_TOOLS,
then /work/llama-tools/bin, then on PATH (bench/lowbit_quality.py says how to
build it from the sources bench/setup_llamacpp.sh fetches)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf import quants as gq

from llamacpp_peer import llama_quantize
from quant_tools import BLOCK
from test_iq_types import tiny_config
from test_lowbit import check_fast_model
from test_kernels import _restore_switches  # noqa: F401 (autouse: ISA and compute mode restored)

from pyv4 import _core


QUANTIZE = llama_quantize()
pytestmark = pytest.mark.skipif(QUANTIZE is None, reason="llama.cpp's llama-quantize not found")

# llama-quantize's IQ3_S / IQ2_S choices of an IQ3_M / IQ2_M file, an attention projection,
# and the shared experts and another projection as its IQ4_NL file type has them
OVERRIDES = [("*ffn_gate_exps*", "iq3_s"), ("*ffn_up_exps*", "iq3_s"), ("*ffn_down_exps*", "iq2_s"),
             ("*.attn_kv.weight", "iq3_s"), ("*ffn_*_shexp*", "iq4_nl"), ("*.attn_q_a.weight", "iq4_nl")]
# the types llama-quantize made here, with the RMS error each may have against the F32 weights
MAX_REL = {QT.IQ3_S: 0.25, QT.IQ2_S: 0.35, QT.IQ4_NL: 0.1}
N_CALIB = 128  # imatrix tokens (one chunk)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    import pyv4
    from pyv4.imatrix import collect, write_gguf
    from pyv4.synthetic import parse_config, tensor_types, write_random_gguf

    config = tiny_config()
    root = tmp_path_factory.mktemp("iq_llama")
    f32 = write_random_gguf(root / "f32.gguf", config, None, seed=3, matrix_type=QT.F32)
    toks = np.random.default_rng(4).integers(0, config["vocab_size"], N_CALIB)
    entries, n = collect(pyv4.Model(f32, threads=2), toks, chunk_size=N_CALIB, kv="f32")
    imatrix = root / "f32.imatrix"
    write_gguf(imatrix, entries, "random tokens", n, N_CALIB)
    # every tensor named (llama-quantize matches names as regular expressions):
    # the mxfp4 recipe's types with the overrides, as pyv4's own files have them
    want = {k: v.name for k, v in tensor_types(parse_config(config, "test"), "mxfp4", OVERRIDES).items()}
    type_file = root / "types.txt"
    type_file.write_text("".join(f"^{n.replace('.', '[.]')}$={t.lower()}\n" for n, t in want.items()))
    out = root / "iq.gguf"
    r = subprocess.run([str(QUANTIZE), "--imatrix", str(imatrix), "--tensor-type-file", str(type_file), "--pure",
                        str(f32), str(out), "Q8_0", "2"], capture_output=True, text=True, errors="replace")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return {"f32": f32, "out": out, "want": want}


def test_llama_quantize_wrote_iq_types(quantized):
    got = {t.name: t.tensor_type.name for t in GGUFReader(str(quantized["out"])).tensors}
    iq = {n: t for n, t in quantized["want"].items() if t in ("IQ3_S", "IQ2_S", "IQ4_NL")}
    assert len(iq) == 24 and all(got.get(n) == t for n, t in iq.items()), {n: got.get(n) for n in iq}
    # llama-quantize keeps some of the others its own way (the routers F32): pyv4 reads those too
    assert set(got) == set(quantized["want"])


def test_core_decodes_llama_blocks_as_gguf(quantized):
    """llama.cpp's blocks (real scales, indices, sign and qh bits, not random bytes)
    decoded by the core bit for bit as gguf.quants, and close to the F32 weights."""
    src = {t.name: t for t in GGUFReader(str(quantized["f32"])).tensors}
    n = 0
    for t in GGUFReader(str(quantized["out"])).tensors:
        if t.tensor_type not in MAX_REL:
            continue
        raw = np.ascontiguousarray(t.data).reshape(-1)
        cols = int(t.shape[0])
        bs, bb = BLOCK[t.tensor_type.name]
        ours = _core.quant_dequantize(t.tensor_type.name, raw, raw.size // bb * bs)
        ref = gq.dequantize(raw, t.tensor_type).reshape(-1)
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), t.name
        x = np.asarray(src[t.name].data, np.float32).reshape(-1)
        rel = np.sqrt(np.mean((ours - x) ** 2) / np.mean(x * x))
        assert rel < MAX_REL[t.tensor_type], (t.name, rel)
        assert cols % bs == 0
        n += 1
    assert n == 3 * 8  # gate, up, down experts, attn_kv, 3 shared experts and attn_q_a of 3 layers


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_llama_quantized_model_runs(quantized, isa):
    import pyv4

    if not _core.isa_supported(isa):
        pytest.skip(f"CPU lacks {isa}")
    check_fast_model(pyv4.Model(quantized["out"], threads=2), isa)
