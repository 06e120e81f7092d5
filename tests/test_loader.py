"""GGUF loader validation: every malformed or mismatched file raises
pyv4.FormatError (a ValueError) with a message that says what and where."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import gguf_tools as gt
import pyv4


def _tensor(name, arr, ggml_type=0):
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return gt.RawTensor(name, ggml_type, list(reversed(a.shape)), a.tobytes())


def _small_file(tmp_path, **kw) -> str:
    g = gt.RawGGUF(**kw)
    g.set("general.architecture", gt.STR, "deepseek4")
    g.tensors = [_tensor("a.weight", np.ones((2, 4))), _tensor("b.weight", np.zeros(8))]
    path = tmp_path / "small.gguf"
    gt.write(g, path)
    return str(path), g


def test_reader_reads_what_the_writer_wrote(tmp_path):
    path, _ = _small_file(tmp_path)
    f = pyv4.GGUFFile(path)
    assert f.version == 3
    assert f.get("general.architecture") == "deepseek4"
    assert f.tensors() == [("a.weight", "F32", [2, 4], 32), ("b.weight", "F32", [8], 32)]


def test_every_metadata_type_round_trips(tmp_path):
    g = gt.RawGGUF()
    vals = {
        "u8": (gt.U8, 200), "i8": (gt.I8, -100), "u16": (gt.U16, 60000), "i16": (gt.I16, -30000),
        "u32": (gt.U32, 4000000000), "i32": (gt.I32, -2000000000), "f32": (gt.F32, 1.5),
        "bool": (gt.BOOL, True), "str": (gt.STR, "héllo"), "u64": (gt.U64, 2**63 - 1),
        "i64": (gt.I64, -(2**62)), "f64": (gt.F64, 2.25),
    }
    for k, (t, v) in vals.items():
        g.set(k, t, v)
    g.set("arr_i", gt.ARR, [1, 2, 3], gt.I32)
    g.set("arr_s", gt.ARR, ["x", "yz"], gt.STR)
    g.set("arr_f", gt.ARR, [0.5, 0.25], gt.F32)
    path = tmp_path / "kv.gguf"
    gt.write(g, path)
    f = pyv4.GGUFFile(str(path))
    for k, (_, v) in vals.items():
        assert f.get(k) == v, k
    assert f.get("arr_i") == [1, 2, 3] and f.get("arr_s") == ["x", "yz"] and f.get("arr_f") == [0.5, 0.25]
    assert f.get("missing", 7) == 7


def test_bad_magic(tmp_path):
    path, g = _small_file(tmp_path, magic=b"GGUX")
    with pytest.raises(pyv4.FormatError, match="not a GGUF file"):
        pyv4.GGUFFile(path)


def test_bad_version(tmp_path):
    path, _ = _small_file(tmp_path, version=7)
    with pytest.raises(pyv4.FormatError, match="unsupported GGUF version 7"):
        pyv4.GGUFFile(path)


@pytest.mark.parametrize("keep", [0, 3, 10, 40, 100])
def test_truncated_header(tmp_path, keep):
    path, _ = _small_file(tmp_path)
    data = open(path, "rb").read()[:keep]
    open(path, "wb").write(data)
    with pytest.raises(pyv4.FormatError, match="truncated"):
        pyv4.GGUFFile(path)


def test_truncated_data(tmp_path):
    path, _ = _small_file(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-8])
    with pytest.raises(pyv4.FormatError, match="'b.weight'.*outside the data section"):
        pyv4.GGUFFile(path)


def test_tensor_offset_out_of_bounds(tmp_path):
    g = gt.RawGGUF()
    g.tensors = [_tensor("a.weight", np.ones(8))]
    g.tensors[0].offset = 1 << 20
    path = tmp_path / "oob.gguf"
    gt.write(g, path)
    with pytest.raises(pyv4.FormatError, match="'a.weight'.*outside"):
        pyv4.GGUFFile(str(path))


def test_unknown_tensor_type(tmp_path):
    g = gt.RawGGUF()
    g.tensors = [gt.RawTensor("weird", 99, [8], b"\0" * 32)]
    path = tmp_path / "type.gguf"
    gt.write(g, path)
    with pytest.raises(pyv4.FormatError, match="'weird' has unknown or unsupported tensor type 99"):
        pyv4.GGUFFile(str(path))


def test_duplicate_tensor_names(tmp_path):
    g = gt.RawGGUF()
    g.tensors = [_tensor("dup", np.ones(8)), _tensor("dup", np.ones(8))]
    path = tmp_path / "dup.gguf"
    gt.write(g, path)
    with pytest.raises(pyv4.FormatError, match="duplicate tensor name 'dup'"):
        pyv4.GGUFFile(str(path))


def test_row_not_multiple_of_block(tmp_path):
    g = gt.RawGGUF()
    g.tensors = [gt.RawTensor("q", 8, [30], b"\0" * 34)]  # Q8_0 needs rows of 32k
    path = tmp_path / "blk.gguf"
    gt.write(g, path)
    with pytest.raises(pyv4.FormatError, match="'q'.*not a multiple of the block size 32"):
        pyv4.GGUFFile(str(path))


def test_absurd_counts(tmp_path):
    path = tmp_path / "counts.gguf"
    open(path, "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0))
    with pytest.raises(pyv4.FormatError, match="implausible"):
        pyv4.GGUFFile(str(path))


def test_not_a_file(tmp_path):
    with pytest.raises(pyv4.FormatError, match="not a regular file"):
        pyv4.GGUFFile(str(tmp_path))


# --- model-level checks on a real converted model --------------------------


def _rewrite(spec11, tmp_path, edit) -> str:
    g = gt.read(spec11[0])
    edit(g)
    path = tmp_path / "edited.gguf"
    gt.write(g, path)
    return str(path)


def test_wrong_architecture(spec11, tmp_path):
    path = _rewrite(spec11, tmp_path, lambda g: g.set("general.architecture", gt.STR, "llama"))
    with pytest.raises(pyv4.FormatError, match="wrong architecture 'llama'"):
        pyv4.Model(path)


def test_missing_tensor(spec11, tmp_path):
    def drop(g):
        g.tensors = [t for t in g.tensors if t.name != "blk.1.attn_q_b.weight"]

    with pytest.raises(pyv4.FormatError, match="missing tensor 'blk.1.attn_q_b.weight'"):
        pyv4.Model(_rewrite(spec11, tmp_path, drop))


def test_wrong_shape_names_both_shapes(spec11, tmp_path):
    def reshape(g):
        for t in g.tensors:
            if t.name == "blk.2.attn_kv.weight":  # torch [64, 64]
                t.ne = [32, 128]

    with pytest.raises(pyv4.FormatError, match=r"'blk.2.attn_kv.weight' has shape \[128, 32\], expected \[64, 64\]"):
        pyv4.Model(_rewrite(spec11, tmp_path, reshape))


def test_missing_metadata_key(spec11, tmp_path):
    path = _rewrite(spec11, tmp_path, lambda g: g.drop_key("deepseek4.attention.q_lora_rank"))
    with pytest.raises(pyv4.FormatError, match="deepseek4.attention.q_lora_rank' is missing"):
        pyv4.Model(path)


def test_bad_hash_table(spec11, tmp_path):
    def corrupt(g):
        for t in g.tensors:
            if t.name == "blk.0.ffn_gate_tid2eid.weight":
                t.data = struct.pack("<i", 99) + t.data[4:]

    with pytest.raises(pyv4.FormatError, match="tid2eid.*expert id 99"):
        pyv4.Model(_rewrite(spec11, tmp_path, corrupt))


def test_rewrite_is_faithful(spec11, tmp_path):
    """The test writer reproduces a converted file, so the edits above test one defect each."""
    path = _rewrite(spec11, tmp_path, lambda g: None)
    toks = np.arange(40) % 512
    a = pyv4.Model(spec11[0]).new_session().eval(toks, logits="all")
    b = pyv4.Model(path).new_session().eval(toks, logits="all")
    np.testing.assert_array_equal(a, b)
