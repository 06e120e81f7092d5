"""Tests of pyv4.convert (safetensors -> llama.cpp deepseek4 GGUF) on tiny random models."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402
from pyv4.convert import ConvertError, convert, load_config, main  # noqa: E402

T = gguf.GGMLQuantizationType
RECIPES = ("f32", "f16", "bf16")
LAYOUTS = ("hf", "official")


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spec11(tmp_path_factory):
    model = tm.build_model("spec11", seed=0)
    root = tmp_path_factory.mktemp("spec11")
    tm.save_hf(model, root / "hf")
    tm.write_tiny_tokenizer(root / "hf", model.config.vocab_size)
    tm.save_official(model, root / "official", shards=2)
    return {"model": model, "root": root, "official": tm.official_state_dict(model)}


@pytest.fixture(scope="module")
def converted(spec11, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for layout in LAYOUTS:
        for recipe in RECIPES:
            dst = out / f"{layout}-{recipe}.gguf"
            assert main([str(spec11["root"] / layout), str(dst), "--recipe", recipe, "-q"]) == 0
            files[layout, recipe] = dst
    return files


def _tensors(path: Path) -> dict[str, tuple[T, tuple[int, ...], np.ndarray]]:
    """name -> (type, torch-order shape, float32/int32 data in that shape)."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        if t.tensor_type == T.I32:
            data = np.asarray(t.data).view(np.int32).reshape(shape)
        else:
            data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        out[t.name] = (t.tensor_type, shape, data)
    return out


def _fields(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# independent statement of the official -> GGUF mapping (spec §10)
_LAYER = {
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "hc_attn_fn": "hc_attn_fn.weight", "hc_attn_base": "hc_attn_base.weight",
    "hc_attn_scale": "hc_attn_scale.weight", "hc_ffn_fn": "hc_ffn_fn.weight",
    "hc_ffn_base": "hc_ffn_base.weight", "hc_ffn_scale": "hc_ffn_scale.weight",
    "attn.attn_sink": "attn_sinks.weight", "attn.wq_a.weight": "attn_q_a.weight",
    "attn.q_norm.weight": "attn_q_a_norm.weight", "attn.wq_b.weight": "attn_q_b.weight",
    "attn.wkv.weight": "attn_kv.weight", "attn.kv_norm.weight": "attn_kv_a_norm.weight",
    "attn.wo_a.weight": "attn_output_a.weight", "attn.wo_b.weight": "attn_output_b.weight",
    "attn.compressor.wkv.weight": "attn_compressor_kv.weight",
    "attn.compressor.wgate.weight": "attn_compressor_gate.weight",
    "attn.compressor.ape": "attn_compressor_ape.weight",
    "attn.compressor.norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.wq_b.weight": "indexer.attn_q_b.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.norm.weight": "indexer_compressor_norm.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight", "ffn.gate.bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight",
    "ffn.shared_experts.w1.weight": "ffn_gate_shexp.weight",
    "ffn.shared_experts.w2.weight": "ffn_down_shexp.weight",
    "ffn.shared_experts.w3.weight": "ffn_up_shexp.weight",
}
_ROOT = {"embed.weight": "token_embd.weight", "head.weight": "output.weight",
         "norm.weight": "output_norm.weight", "hc_head_fn": "output_hc_fn.weight",
         "hc_head_base": "output_hc_base.weight", "hc_head_scale": "output_hc_scale.weight"}


def _expected(official: dict[str, torch.Tensor], n_expert: int) -> dict[str, torch.Tensor]:
    exp: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], list] = {}
    for name, t in official.items():
        if name in _ROOT:
            exp[_ROOT[name]] = t
            continue
        m = re.match(r"layers\.(\d+)\.(.+)$", name)
        layer, rest = int(m.group(1)), m.group(2)
        me = re.match(r"ffn\.experts\.(\d+)\.(w[123])\.weight$", rest)
        if me:
            experts.setdefault((layer, me.group(2)), [None] * n_expert)[int(me.group(1))] = t
        else:
            exp[f"blk.{layer}.{_LAYER[rest]}"] = t
    names = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}
    for (layer, w), ts in experts.items():
        exp[f"blk.{layer}.{names[w]}.weight"] = torch.stack(ts)
    return exp


def _rounded(t: torch.Tensor, typ: T) -> np.ndarray:
    t = t.to(torch.float32)
    if typ == T.F16:
        t = t.to(torch.float16).to(torch.float32)
    elif typ == T.BF16:
        t = t.to(torch.bfloat16).to(torch.float32)
    return t.numpy()


# ---------------------------------------------------------------------------
# conversions and tensor contents
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_tensor_equals_source(spec11, converted, layout, recipe):
    path = converted[layout, recipe]
    _no_leftovers(path.parent)
    got = _tensors(path)
    exp = _expected(spec11["official"], spec11["model"].config.n_routed_experts)
    assert set(got) == set(exp)
    big = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}[recipe]
    for name, (typ, shape, data) in got.items():
        src = exp[name]
        assert shape == tuple(src.shape), name
        if "tid2eid" in name:
            assert typ == T.I32
            np.testing.assert_array_equal(data, src.numpy())
            continue
        fixed = (len(shape) == 1 or "hc_" in name or "_ape" in name)
        assert typ == (T.F32 if fixed else big), name
        np.testing.assert_array_equal(data, _rounded(src, typ), err_msg=name)


def test_layouts_give_identical_f32_tensors(converted):
    a = gguf.GGUFReader(str(converted["hf", "f32"]))
    b = gguf.GGUFReader(str(converted["official", "f32"]))
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert list(ta) == list(tb)  # same names, same order
    for name in ta:
        assert ta[name].tensor_type == tb[name].tensor_type
        assert list(ta[name].shape) == list(tb[name].shape)
        assert np.asarray(ta[name].data).tobytes() == np.asarray(tb[name].data).tobytes(), name


def test_tensor_shapes_follow_llama_cpp(converted):
    g = _tensors(converted["official", "f32"])
    shp = {n: v[1] for n, v in g.items()}
    # torch order (GGUF ne is the reverse)
    assert shp["token_embd.weight"] == (512, 64)
    assert shp["output_hc_fn.weight"] == (4, 256)
    assert shp["output_hc_scale.weight"] == (1,)
    assert shp["blk.0.attn_output_a.weight"] == (2 * 16, 4 * 64 // 2)
    assert shp["blk.0.attn_output_b.weight"] == (64, 32)
    assert shp["blk.0.hc_attn_fn.weight"] == (24, 256)
    assert shp["blk.1.attn_compressor_ape.weight"] == (4, 128)    # CSA: coff = 2
    assert shp["blk.2.attn_compressor_ape.weight"] == (128, 64)   # HCA
    assert shp["blk.1.indexer_compressor_ape.weight"] == (4, 128)
    assert shp["blk.1.indexer.attn_q_b.weight"] == (16 * 64, 32)
    assert shp["blk.1.indexer.proj.weight"] == (16, 64)
    assert shp["blk.3.ffn_gate_exps.weight"] == (8, 32, 64)
    assert shp["blk.3.ffn_down_exps.weight"] == (8, 64, 32)
    assert shp["blk.0.ffn_gate_tid2eid.weight"] == (512, 2)
    assert "blk.0.attn_compressor_kv.weight" not in shp and "blk.5.attn_compressor_kv.weight" not in shp
    assert "blk.2.indexer.proj.weight" not in shp
    assert [f"blk.{i}.ffn_gate_tid2eid.weight" in shp for i in range(6)] == [True] * 3 + [False] * 3
    assert [f"blk.{i}.exp_probs_b.bias" in shp for i in range(6)] == [False] * 3 + [True] * 3
    tid = g["blk.0.ffn_gate_tid2eid.weight"][2]
    assert (tid[:, 0] != tid[:, 1]).all()


def test_metadata(converted):
    f = _fields(converted["official", "bf16"])
    a = "deepseek4"
    want = {
        "general.architecture": "deepseek4", "general.file_type": 32,
        f"{a}.block_count": 6, f"{a}.context_length": 4096, f"{a}.embedding_length": 64,
        f"{a}.embedding_length_out": 256, f"{a}.vocab_size": 512,
        f"{a}.attention.head_count": 4, f"{a}.attention.head_count_kv": 1,
        f"{a}.attention.key_length": 64, f"{a}.attention.value_length": 64,
        f"{a}.attention.q_lora_rank": 32, f"{a}.attention.sliding_window": 16,
        f"{a}.attention.output_group_count": 2, f"{a}.attention.output_lora_rank": 16,
        f"{a}.attention.compress_ratios": [0, 4, 128, 4, 128, 0, 0],
        f"{a}.attention.compress_rope_freq_base": 160000.0,
        f"{a}.attention.indexer.head_count": 16, f"{a}.attention.indexer.key_length": 64,
        f"{a}.attention.indexer.top_k": 8,
        f"{a}.rope.freq_base": 10000.0, f"{a}.rope.dimension_count": 16,
        f"{a}.rope.scaling.type": "yarn", f"{a}.rope.scaling.factor": 16.0,
        f"{a}.rope.scaling.original_context_length": 256,
        f"{a}.rope.scaling.yarn_beta_fast": 32.0, f"{a}.rope.scaling.yarn_beta_slow": 1.0,
        f"{a}.expert_count": 8, f"{a}.expert_used_count": 2, f"{a}.expert_feed_forward_length": 32,
        f"{a}.expert_shared_count": 1, f"{a}.expert_weights_scale": 1.5, f"{a}.expert_weights_norm": True,
        f"{a}.expert_gating_func": 4, f"{a}.swiglu_clamp_exp": [10.0] * 6,
        f"{a}.swiglu_clamp_shexp": [10.0] * 6, f"{a}.hash_layer_count": 3,
        f"{a}.hyper_connection.count": 4, f"{a}.hyper_connection.sinkhorn_iterations": 20,
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
    }
    for k, v in want.items():
        assert f[k] == pytest.approx(v), k
    assert f[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f[f"{a}.hyper_connection.epsilon"] == pytest.approx(1e-6)
    assert f"{a}.nextn_predict_layers" not in f  # no MTP weights in the tiny model
    assert "tokenizer.ggml.tokens" not in f      # no tokenizer.json in that folder
    # both layouts describe the same model
    g = _fields(converted["hf", "bf16"])
    for k in want:
        if not k.startswith("tokenizer."):
            assert g[k] == pytest.approx(f[k]), k
    assert _fields(converted["official", "f16"])["general.file_type"] == 1
    assert _fields(converted["official", "f32"])["general.file_type"] == 0


def test_tokenizer_embedded(spec11, converted):
    f = _fields(converted["hf", "f32"])
    text = (spec11["root"] / "hf" / "tokenizer.json").read_text(encoding="utf-8")
    assert f["tokenizer.huggingface.json"] == text
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "deepseek-v3"
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == 512
    assert toks[0] == "<\uff5cbegin\u2581of\u2581sentence\uff5c>" and types[0] == 3
    assert toks[3] == "!" and types[3] == 1
    assert toks[508] == "<\uff5cUser\uff5c>" and types[508] == 3
    assert toks[510] == "<think>" and types[510] == 4
    assert len(f["tokenizer.ggml.merges"]) > 100
    assert f["tokenizer.ggml.bos_token_id"] == 0 and f["tokenizer.ggml.eos_token_id"] == 1
    assert f["tokenizer.ggml.padding_token_id"] == 1
    assert f["tokenizer.ggml.add_bos_token"] is False


def test_real_tokenizer_metadata(tmp_path):
    from pyv4.convert.tokenizer import tokenizer_metadata

    shutil.copy(tm.real_tokenizer_json_path(), tmp_path / "tokenizer.json")
    info = tokenizer_metadata(tmp_path, 129280, 0, 1)
    kv = {e.key: e.value for e in info.entries}
    assert len(kv["tokenizer.ggml.tokens"]) == 129280
    assert len(kv["tokenizer.ggml.merges"]) == 127741
    assert kv["tokenizer.ggml.tokens"][128803] == "<\uff5cUser\uff5c>"
    assert kv["tokenizer.ggml.token_type"][128803] == 3
    assert kv["tokenizer.ggml.tokens"][128821] == "<think>"
    assert 5 not in kv["tokenizer.ggml.token_type"]  # every id is a real token
    assert kv["tokenizer.huggingface.json"] == (tmp_path / "tokenizer.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("name,layout", [("groups4", "official"), ("hca_first", "hf")])
def test_other_configs(tmp_path, name, layout):
    model = tm.build_model(name, seed=3)
    src = tmp_path / "src"
    (tm.save_official if layout == "official" else tm.save_hf)(model, src)
    out = tmp_path / "m.gguf"
    convert(src, out, "f32")
    g = _tensors(out)
    exp = _expected(tm.official_state_dict(model), model.config.n_routed_experts)
    assert set(g) == set(exp)
    for n, (_, shape, data) in g.items():
        np.testing.assert_array_equal(data, exp[n].numpy(), err_msg=n)
    f = _fields(out)
    ratios = f["deepseek4.attention.compress_ratios"]
    if name == "groups4":
        assert f["deepseek4.attention.output_group_count"] == 4 and f["deepseek4.expert_used_count"] == 3
        assert g["blk.0.attn_output_a.weight"][1] == (4 * 16, 8 * 64 // 4)
        assert g["blk.0.ffn_gate_tid2eid.weight"][1] == (512, 3)
    else:
        assert ratios[:6] == [128, 4, 0, 4, 128, 0]
        assert g["blk.0.attn_compressor_ape.weight"][1] == (128, 64)


def test_load_config_both_styles(spec11):
    a = load_config(spec11["root"] / "hf")
    b = load_config(spec11["root"] / "official")
    assert a.style == "transformers" and b.style == "official"
    for k in ("compress_ratios", "n_hash_layers", "rope_dim", "rope_theta", "compress_rope_theta",
              "rope_scaling", "n_expert", "n_expert_used", "sliding_window", "context_length"):
        assert getattr(a, k) == getattr(b, k), k
    assert a.compress_ratios == [0, 4, 128, 4, 128, 0]


# ---------------------------------------------------------------------------
# quantised official sources (FP8 weights, FP4 experts)
# ---------------------------------------------------------------------------

_FP4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def test_fp8_and_fp4_sources_dequantised(spec11, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "q"
    shutil.copytree(spec11["root"] / "official", src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    g = torch.Generator().manual_seed(5)
    extra: dict[str, torch.Tensor] = {}
    want: dict[str, np.ndarray] = {}
    # FP8 e4m3 weight with 128x128 UE8M0 block scales (one block here)
    w = (torch.randn(32, 64, generator=g) * 3).to(torch.float8_e4m3fn)
    s = torch.tensor([[125]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    extra["layers.0.attn.wq_a.weight"], extra["layers.0.attn.wq_a.scale"] = w, s
    want["blk.0.attn_q_a.weight"] = w.to(torch.float32).numpy() * 2.0 ** (125 - 127)
    # FP4 routed experts of layer 4: low nibble = even element, 1x32 scales
    E, I, D = 8, 32, 64
    stacks = {"w1": [], "w3": [], "w2": []}
    for e in range(E):
        for wname, (o, i) in (("w1", (I, D)), ("w3", (I, D)), ("w2", (D, I))):
            nib = torch.randint(0, 16, (o, i), generator=g, dtype=torch.uint8)
            packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).view(torch.int8)
            exps = torch.randint(120, 130, (o, i // 32), generator=g, dtype=torch.uint8)
            extra[f"layers.4.ffn.experts.{e}.{wname}.weight"] = packed
            extra[f"layers.4.ffn.experts.{e}.{wname}.scale"] = exps.view(torch.float8_e8m0fnu)
            val = _FP4[nib.numpy()] * np.repeat(2.0 ** (exps.numpy().astype(np.float32) - 127), 32, axis=1)
            stacks[wname].append(val)
    want["blk.4.ffn_gate_exps.weight"] = np.stack(stacks["w1"])
    want["blk.4.ffn_up_exps.weight"] = np.stack(stacks["w3"])
    want["blk.4.ffn_down_exps.weight"] = np.stack(stacks["w2"])
    # replace those tensors: drop them from their shards, add a third shard
    for fname in sorted(set(index["weight_map"].values())):
        from safetensors import safe_open
        with safe_open(str(src / fname), "pt") as f:
            keep = {k: f.get_tensor(k) for k in f.keys() if k not in extra}
        save_file(keep, str(src / fname))
    save_file(extra, str(src / "model-q.safetensors"))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k not in extra}
    index["weight_map"].update({k: "model-q.safetensors" for k in extra})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "q.gguf"
    convert(src, out, "f32")
    got = _tensors(out)
    for name, arr in want.items():
        np.testing.assert_array_equal(got[name][2], arr.astype(np.float32), err_msg=name)


def test_mtp_block_mapped(spec11, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "mtp"
    shutil.copytree(spec11["root"] / "official", src)
    off = spec11["official"]
    g = torch.Generator().manual_seed(9)
    mtp = {k.replace("layers.5.", "mtp.0."): v.clone() for k, v in off.items() if k.startswith("layers.5.")}
    mtp["mtp.0.ffn.gate.bias"] = torch.randn(8, generator=g)  # layer 5 is not hash-routed: it has one
    D = 64
    for k in ("e_proj", "h_proj"):
        mtp[f"mtp.0.{k}.weight"] = torch.randn(D, D, generator=g)
    for k in ("enorm", "hnorm", "norm"):
        mtp[f"mtp.0.{k}.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    mtp["mtp.0.hc_head_fn"] = torch.randn(4, 4 * D, generator=g)
    mtp["mtp.0.hc_head_base"] = torch.randn(4, generator=g)
    mtp["mtp.0.hc_head_scale"] = torch.ones(1)
    save_file(mtp, str(src / "model-mtp.safetensors"))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "model-mtp.safetensors" for k in mtp})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))

    out = tmp_path / "mtp.gguf"
    res = convert(src, out, "f32")
    assert res.n_mtp == 1
    f = _fields(out)
    assert f["deepseek4.block_count"] == 7 and f["deepseek4.nextn_predict_layers"] == 1
    assert f["deepseek4.attention.compress_ratios"] == [0, 4, 128, 4, 128, 0, 0]
    assert len(f["deepseek4.swiglu_clamp_exp"]) == 7
    t = _tensors(out)
    eh = t["blk.6.nextn.eh_proj.weight"][2]
    np.testing.assert_array_equal(eh, torch.cat((mtp["mtp.0.e_proj.weight"], mtp["mtp.0.h_proj.weight"]), 1).numpy())
    np.testing.assert_array_equal(t["blk.6.nextn.shared_head_norm.weight"][2], mtp["mtp.0.norm.weight"].numpy())
    # the MTP hc head has no llama.cpp tensor name: it is stored as metadata
    assert not [n for n in t if "hc_head" in n]
    np.testing.assert_array_equal(np.array(f["deepseek4.nextn.0.hc_head_fn"], dtype=np.float32).reshape(4, 4 * D),
                                  mtp["mtp.0.hc_head_fn"].numpy())
    assert f["deepseek4.nextn.0.hc_head_fn_shape"] == [4, 4 * D]
    np.testing.assert_array_equal(np.array(f["deepseek4.nextn.0.hc_head_base"], dtype=np.float32),
                                  mtp["mtp.0.hc_head_base"].numpy())
    assert f["deepseek4.nextn.0.hc_head_scale"] == [1.0]
    np.testing.assert_array_equal(t["blk.6.ffn_gate_exps.weight"][2], t["blk.5.ffn_gate_exps.weight"][2])
    assert "blk.6.exp_probs_b.bias" in t and "blk.6.ffn_gate_tid2eid.weight" not in t
    assert "blk.6.attn_compressor_kv.weight" not in t
    # --mtp skip: the trunk only, as llama.cpp's converter writes by default
    out2 = tmp_path / "skip.gguf"
    assert convert(src, out2, "f32", mtp="skip").n_mtp == 0
    f2 = _fields(out2)
    assert f2["deepseek4.block_count"] == 6 and "deepseek4.nextn_predict_layers" not in f2
    assert not any(n.startswith("blk.6.") for n in _tensors(out2))


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------

def _copy_official(spec11, tmp_path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(spec11["root"] / "official", dst)
    return dst


def _rewrite_shard(src: Path, fn) -> None:
    """Apply fn(dict) -> dict to the tensors of the first shard and keep the index in step."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = json.loads((src / "model.safetensors.index.json").read_text())
    fname = sorted(set(index["weight_map"].values()))[0]
    with safe_open(str(src / fname), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = fn(tensors)
    save_file(tensors, str(src / fname))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != fname}
    index["weight_map"].update({k: fname for k in tensors})
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def _first_layer_tensor(tensors: dict, pattern: str) -> str:
    return next(k for k in sorted(tensors) if re.search(pattern, k))


def _break_model_type(src: Path) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "deepseek_v3"
    (src / "config.json").write_text(json.dumps(cfg))


def _break_missing_shard(src: Path) -> None:
    os.remove(sorted(src.glob("model-*.safetensors"))[-1])


def _break_missing_tensor(src: Path) -> None:
    _rewrite_shard(src, lambda t: {k: v for k, v in t.items() if not k.endswith("attn.wq_b.weight")})


def _break_unexpected_tensor(src: Path) -> None:
    _rewrite_shard(src, lambda t: {**t, "layers.0.attn.extra_proj.weight": torch.zeros(4, 4)})


def _break_shape(src: Path) -> None:
    def fn(t):
        k = _first_layer_tensor(t, r"attn\.wkv\.weight$")
        t[k] = torch.zeros(t[k].shape[0] + 1, t[k].shape[1])
        return t
    _rewrite_shard(src, fn)


def _break_dtype(src: Path) -> None:
    def fn(t):
        k = _first_layer_tensor(t, r"attn\.wkv\.weight$")
        t[k] = t[k].to(torch.int32)
        return t
    _rewrite_shard(src, fn)


@pytest.mark.parametrize("breaker,words", [
    (_break_model_type, "model_type"),
    (_break_missing_shard, "missing"),
    (_break_missing_tensor, "missing tensor"),
    (_break_unexpected_tensor, "unexpected tensor"),
    (_break_shape, "shape"),
    (_break_dtype, "dtype"),
])
def test_bad_inputs(spec11, tmp_path, capsys, breaker, words):
    src = _copy_official(spec11, tmp_path)
    breaker(src)
    out = tmp_path / "out" / "bad.gguf"
    out.parent.mkdir()
    with pytest.raises(ConvertError) as ei:
        convert(src, out, "f32")
    msg = str(ei.value)
    assert words in msg
    assert str(src) in msg  # names the folder/file
    assert not out.exists()
    _no_leftovers(out.parent)
    capsys.readouterr()
    assert main([str(src), str(out), "--recipe", "f16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyv4 convert: error: ")
    assert not out.exists()


def test_keyboard_interrupt_leaves_no_file(spec11, tmp_path):
    out = tmp_path / "m.gguf"

    def boom(i, n, name, nbytes=0):
        if i == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(spec11["root"] / "official", out, "bf16", progress=boom)
    assert not out.exists()
    _no_leftovers(tmp_path)
    # an existing output is left as it was
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        convert(spec11["root"] / "hf", out, "f32", progress=boom)
    assert out.read_bytes() == b"old"
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------
# the fixtures themselves (spec §11)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", tm.CONFIG_NAMES)
def test_tiny_model_logits_are_informative(name):
    model = tm.build_model(name, seed=1)
    n = 600 if name == "spec11" else 260  # 600 for one config keeps the file fast on 2 cores
    toks = np.random.default_rng(0).integers(0, model.config.vocab_size, n)
    lg = tm.reference_logits(model, toks)
    assert lg.shape == (n, model.config.vocab_size) and lg.dtype == np.float32
    assert np.isfinite(lg).all()
    assert 0.3 < lg.std() < 10
    if name == "window128":
        assert model.config.sliding_window == 128


def test_official_layout_loads_back_in_transformers(spec11):
    model2 = tm.load_official(spec11["root"] / "official")
    toks = np.arange(200) * 7 % 512
    np.testing.assert_array_equal(tm.reference_logits(spec11["model"], toks), tm.reference_logits(model2, toks))
