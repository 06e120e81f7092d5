"""`pyv4 info FILE`: hyper-parameters, tensor-type histogram, tokenizer, loadable yes/no, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402
from pyv4.cli import main as pyv4_main  # noqa: E402
from pyv4.convert import convert  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    m = tm.build_model("spec11", seed=0)
    tm.save_hf(m, d / "hf")
    tm.write_tiny_tokenizer(d / "hf", 512)
    good = d / "good.gguf"
    convert(d / "hf", good, "q8")
    notok = d / "notok.gguf"
    tm.save_official(m, d / "off")
    convert(d / "off", notok, "bf16")
    # a deepseek4 file that lacks one tensor: parses, but the engine refuses it
    r = gguf.GGUFReader(str(good))
    w = gguf.GGUFWriter(str(d / "broken.gguf"), arch="deepseek4")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_array(k, v)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(k, v)
        elif t == gguf.GGUFValueType.BOOL:
            w.add_bool(k, v)
        elif t == gguf.GGUFValueType.FLOAT32:
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    for t in r.tensors:
        if t.name == "output.weight":
            continue
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    junk = d / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    return {"good": good, "notok": notok, "broken": d / "broken.gguf", "junk": junk, "dir": d}


def test_info_text(files, capsys):
    assert pyv4_main(["info", str(files["good"])]) == 0
    out = capsys.readouterr().out
    assert "architecture: deepseek4" in out
    assert "block_count" in out and "expert_count" in out and "SCHCHS" in out
    assert "Q8_0" in out and "F32" in out and "I32" in out
    assert "tokenizer: embedded (gpt2, 512 tokens)" in out
    assert "pyv4 can load it: yes" in out


def test_info_json(files, capsys):
    assert pyv4_main(["info", "--json", str(files["good"])]) == 0
    d = json.loads(capsys.readouterr().out)
    hp = d["hyper_parameters"]
    assert hp["block_count"] == 6 and hp["embedding_length"] == 64 and hp["expert_count"] == 8
    assert hp["attention.head_count"] == 4 and hp["hash_layer_count"] == 3
    r = gguf.GGUFReader(str(files["good"]))
    hist: dict[str, int] = {}
    for t in r.tensors:
        hist[t.tensor_type.name] = hist.get(t.tensor_type.name, 0) + 1
    assert {k: v["tensors"] for k, v in d["tensor_types"].items()} == hist
    assert d["n_tensors"] == len(r.tensors)
    assert d["tokenizer"]["embedded"] and d["tokenizer"]["tokens"] == 512
    assert d["loadable"] is True


def test_info_without_tokenizer(files, capsys):
    pyv4_main(["info", "--json", str(files["notok"])])
    d = json.loads(capsys.readouterr().out)
    assert d["tokenizer"]["embedded"] is False
    assert set(d["tensor_types"]) == {"BF16", "F32", "I32"}


def test_info_not_loadable(files, capsys):
    assert pyv4_main(["info", str(files["broken"])]) == 1
    out = capsys.readouterr().out
    assert "pyv4 can load it: no: " in out and "output.weight" in out


@pytest.mark.parametrize("which", ["junk", "missing"])
def test_info_errors(files, capsys, which):
    path = files["junk"] if which == "junk" else files["dir"] / "nope.gguf"
    assert pyv4_main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyv4 info: error: ")
