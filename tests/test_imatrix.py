"""`pyv4 imatrix`: the statistics the engine collects (against the inputs of
transformers' modules, and the routing invariants of the experts), the GGUF
file llama.cpp's quantizer reads, and the command's errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import pyv4
from conftest import converted_model, random_tokens
from pyv4.imatrix import collect, write_gguf

N = 96  # tokens of the one chunk


@pytest.fixture(scope="module")
def run(tmp_root):
    path, hf = converted_model(tmp_root, "spec11", 0)
    model = pyv4.Model(path)
    toks = random_tokens(model.n_vocab, N, 5)
    entries, n = collect(model, toks, chunk_size=N, kv="f32")
    assert n == 1
    return model, hf, toks, {name: (s, c) for name, s, c in entries}


def test_inputs_match_transformers_module_inputs(run):
    model, hf, toks, got = run
    seen: dict[str, np.ndarray] = {}
    hooks = []
    pairs = {"self_attn.q_a_proj": "attn_q_a", "self_attn.q_b_proj": "attn_q_b", "self_attn.kv_proj": "attn_kv",
             "self_attn.o_b_proj": "attn_output_b", "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
             "mlp.shared_experts.down_proj": "ffn_down_shexp", "self_attn.compressor.kv_proj": "attn_compressor_kv"}
    for name, mod in hf.named_modules():
        for suffix, ours in pairs.items():
            if name.endswith(suffix) and name.startswith("model.layers."):
                il = int(name.split(".")[2])

                def hook(m, inp, out, key=f"blk.{il}.{ours}.weight"):
                    x = inp[0].detach().double().reshape(-1, inp[0].shape[-1])
                    seen[key] = (x * x).sum(0).numpy()

                hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            hf(torch.as_tensor(toks)[None])
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) >= 20
    for key, ref in seen.items():
        s, c = got[key]
        assert s.shape == (1, ref.size) and c.tolist() == [N], key
        np.testing.assert_allclose(s[0], ref, rtol=2e-4, atol=1e-6, err_msg=key)


def test_expert_counts_follow_the_routing(run):
    model, _, _, got = run
    K = model.config["num_experts_per_tok"]
    E = model.config["n_routed_experts"]
    layers = model.config["num_hidden_layers"]
    for il in range(layers):
        g, gc = got[f"blk.{il}.ffn_gate_exps.weight"]
        u, uc = got[f"blk.{il}.ffn_up_exps.weight"]
        r, rc = got[f"blk.{il}.ffn_gate_inp.weight"]
        d, dc = got[f"blk.{il}.ffn_down_exps.weight"]
        assert g.shape[0] == E and gc.sum() == K * N and rc.tolist() == [N]
        np.testing.assert_array_equal(g, u)  # gate and up read the same rows
        np.testing.assert_array_equal(gc, dc)  # down reads each routed token once too
        # each token's router input is the input of its K experts
        np.testing.assert_allclose(g.sum(0), K * r[0], rtol=1e-9)
        assert (gc > 0).sum() > 1  # tokens spread over experts


def test_file_is_llama_cpp_gguf_imatrix(run, tmp_path):
    from gguf import GGUFReader

    _, _, _, got = run
    entries = [(n, s, c) for n, (s, c) in got.items()]
    out = tmp_path / "x.imatrix"
    write_gguf(out, entries, "calib.txt", 1, N)
    r = GGUFReader(str(out))
    kv = {k: f for k, f in r.fields.items()}
    assert bytes(kv["general.type"].parts[kv["general.type"].data[0]]).decode() == "imatrix"
    assert int(kv["imatrix.chunk_size"].parts[kv["imatrix.chunk_size"].data[0]][0]) == N
    assert "general.architecture" not in kv
    tensors = {t.name: t for t in r.tensors}
    s, c = got["blk.1.ffn_gate_exps.weight"]
    t = tensors["blk.1.ffn_gate_exps.weight.in_sum2"]
    assert list(t.shape) == [s.shape[1], s.shape[0]]  # ne = [cols, n_mat]
    np.testing.assert_allclose(np.asarray(t.data).reshape(s.shape), s, rtol=1e-6)
    assert list(tensors["blk.1.ffn_gate_exps.weight.counts"].shape) == [1, s.shape[0]]
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli(tmp_path, spec11):
    import os

    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "out.imatrix"
    cmd = [sys.executable, "-m", "pyv4.cli", "imatrix", "demo", "-f", str(text), "-o", str(out),
           "--chunk-size", "64", "--chunks", "2"]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))

    def run_(c):
        # from outside the source tree, so `-m pyv4.cli` imports the installed package
        return subprocess.run(c, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    r = run_(cmd)
    assert r.returncode == 0, r.stderr
    assert "chunk 2/2" in r.stderr and out.stat().st_size > 0
    short = tmp_path / "short.txt"
    short.write_text("too short")
    r = run_(cmd[:6] + [str(short)] + cmd[7:])
    assert r.returncode == 2 and "fewer than one chunk" in r.stderr
    r = run_(cmd[:8] + [str(tmp_path / "no" / "dir.imatrix")] + cmd[9:])
    assert r.returncode == 2 and "output directory does not exist" in r.stderr
    r = run_(cmd[:4] + [str(spec11[0])] + cmd[5:])  # a file without a tokenizer
    assert r.returncode == 2 and "no usable tokenizer" in r.stderr


def test_collection_is_exclusive_and_leaves_eval_unchanged(run):
    model = run[0]
    toks = random_tokens(model.n_vocab, 20, 9)
    plain = model.new_session(kv="f32").eval(toks, logits="all")
    model._engine.imatrix_begin()
    try:
        with pytest.raises(ValueError, match="already running"):
            model._engine.imatrix_begin()
        observed = model.new_session(kv="f32").eval(toks, logits="all")
    finally:
        model._engine.imatrix_end()
    np.testing.assert_array_equal(plain, observed)
    with pytest.raises(ValueError, match="no collection is running"):
        model._engine.imatrix_end()


def test_converter_reads_our_file(run, tmp_path):
    from pyv4.convert.imatrix import load_imatrix, matrix_weights

    _, _, _, got = run
    out = tmp_path / "ours.imatrix"
    write_gguf(out, [(n, s, c) for n, (s, c) in got.items()], "calib.txt", 1, N)
    entries = load_imatrix(out)
    s, c = got["blk.2.ffn_down_exps.weight"]
    v = matrix_weights(entries, "blk.2.ffn_down_exps.weight", (s.shape[0], 8, s.shape[1]))
    seen = c > 0
    np.testing.assert_allclose(v[seen], (s[seen] / c[seen, None]), rtol=1e-6)
    assert (v[~seen] == 1.0).all()  # an expert no token reached: neutral weights
