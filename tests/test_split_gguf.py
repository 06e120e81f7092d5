"""Split models: llama.cpp's gguf-split shards (PREFIX-00001-of-0000N.gguf ...), the form
community V4-Flash files come in. The shards are written by gguf-py's own shard writer
(the format's reference) from a single-file model, which is the oracle: the split model
must give the same tensors and the same logits, bit for bit."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("gguf")

import gguf_tools  # noqa: E402
import pyv4  # noqa: E402
from pyv4 import _core  # noqa: E402
from pyv4.cli import main as cli  # noqa: E402

TOKENS = np.array([3, 17, 42, 5, 99, 7, 64, 1, 250, 31], np.int64)


@pytest.fixture(scope="module")
def split(spec11, tmp_path_factory):
    """(single-file path, shard paths of the same model in 4 shards)."""
    d = tmp_path_factory.mktemp("split")
    n_tensors = len(_core.GGUFFile(str(spec11[0])).tensors())
    shards = gguf_tools.split_copy(spec11[0], d / "m.gguf", max_tensors=-(-n_tensors // 4))
    assert len(shards) == 4
    return spec11[0], shards


def _copy_shards(shards, d):
    for s in shards:
        shutil.copy(s, d / s.name)
    return [d / s.name for s in shards]


@pytest.mark.parametrize("which", [0, 2])
def test_split_model_is_the_single_file_model(split, which):
    """Opened from the first or a later shard: every shard mapped, the same tensor table
    (names, types, shapes, bytes), the tokenizer, and bit-identical logits."""
    single, shards = split
    f, g = _core.GGUFFile(str(shards[which])), _core.GGUFFile(str(single))
    assert f.shards == [str(s) for s in shards] and f.path == str(shards[0])
    assert f.file_size == sum(os.path.getsize(s) for s in shards)
    assert sorted(f.tensors()) == sorted(g.tensors())
    assert f.get("deepseek4.block_count") == g.get("deepseek4.block_count")
    a = pyv4.Model(str(shards[which])).new_session().eval(TOKENS, logits="all")
    b = pyv4.Model(str(single)).new_session().eval(TOKENS, logits="all")
    np.testing.assert_array_equal(a, b)


def test_split_model_resident(split):
    """resident=True reads every shard into memory: the same logits as the mapped files."""
    single, shards = split
    m = pyv4.Model(str(shards[3]), resident=True)
    assert m._engine.resident
    np.testing.assert_array_equal(m.new_session().eval(TOKENS, logits="last"),
                                  pyv4.Model(str(single)).new_session().eval(TOKENS, logits="last"))


def test_metadata_only_first_shard(spec11, tmp_path):
    """gguf-split's --no-tensor-first-split form: the first shard has metadata only."""
    shards = gguf_tools.split_copy(spec11[0], tmp_path / "m.gguf", max_tensors=100, small_first_shard=True)
    assert len(_core.GGUFFile(str(shards[0])).shards) == len(shards) >= 3
    a = pyv4.Model(str(shards[-1])).new_session().eval(TOKENS, logits="last")
    b = pyv4.Model(str(spec11[0])).new_session().eval(TOKENS, logits="last")
    np.testing.assert_array_equal(a, b)


def test_session_saved_on_a_split_model_restores_on_it(split, tmp_path):
    single, shards = split
    m = pyv4.Model(str(shards[0]))
    s = m.new_session()
    s.eval(TOKENS[:6])
    s.save(tmp_path / "s.pyv4")
    want = s.eval(TOKENS[6:], logits="last")
    r = pyv4.Session.load(m, tmp_path / "s.pyv4")
    np.testing.assert_array_equal(r.eval(TOKENS[6:], logits="last"), want)
    with pytest.raises(ValueError, match="saved with a different model"):
        pyv4.Session.load(pyv4.Model(str(single)), tmp_path / "s.pyv4")


def test_missing_shard_is_named(split, tmp_path):
    shards = _copy_shards(split[1], tmp_path)
    shards[2].unlink()
    with pytest.raises(pyv4.FormatError, match=rf"{shards[2].name}.*shard 3 of 4"):
        _core.GGUFFile(str(shards[0]))
    with pytest.raises(pyv4.FormatError, match="shard 3 of 4"):
        pyv4.Model(str(shards[1]))


def test_renamed_shard_cannot_find_its_siblings(split, tmp_path):
    p = tmp_path / "renamed.gguf"
    shutil.copy(split[1][1], p)
    with pytest.raises(pyv4.FormatError, match=r"shard 2 of .*4.*-00002-of-00004\.gguf"):
        _core.GGUFFile(str(p))


def test_shard_of_another_split_is_refused(split, spec11, tmp_path):
    """A shard file that belongs to a split of a different count, put in its place."""
    shards = _copy_shards(split[1], tmp_path)
    other = gguf_tools.split_copy(spec11[0], tmp_path / "o.gguf", max_tensors=20)
    shutil.copy(other[3], shards[3])
    with pytest.raises(pyv4.FormatError, match=rf"{shards[3].name}.*shard 4 of 4"):
        _core.GGUFFile(str(shards[0]))


def test_tensor_count_must_match(split, tmp_path):
    """split.tensors.count (written by gguf-split in every shard) against the shards' tables."""
    shards = _copy_shards(split[1], tmp_path)
    g = gguf_tools.read(shards[0])
    g.set("split.tensors.count", gguf_tools.I32, g.get("split.tensors.count") + 1)
    gguf_tools.write(g, shards[0])
    with pytest.raises(pyv4.FormatError, match="split.tensors.count"):
        _core.GGUFFile(str(shards[0]))


def test_duplicate_tensor_across_shards(split, tmp_path):
    shards = _copy_shards(split[1], tmp_path)
    g0, g1 = gguf_tools.read(shards[0]), gguf_tools.read(shards[1])
    g1.tensors[0].name = g0.tensors[0].name
    gguf_tools.write(g1, shards[1])
    with pytest.raises(pyv4.FormatError, match=rf"{shards[1].name}.*duplicate tensor name"):
        _core.GGUFFile(str(shards[0]))


def test_truncated_later_shard(split, tmp_path):
    shards = _copy_shards(split[1], tmp_path)
    size = os.path.getsize(shards[3])
    os.truncate(shards[3], size - 64)
    with pytest.raises(pyv4.FormatError, match=rf"{shards[3].name}.*truncated"):
        pyv4.Model(str(shards[0]))


def test_bad_split_keys(split, tmp_path):
    """split.no outside split.count: not a shard of anything."""
    shards = _copy_shards(split[1], tmp_path)
    g = gguf_tools.read(shards[0])
    g.set("split.no", gguf_tools.U16, 7)
    gguf_tools.write(g, shards[0])
    with pytest.raises(pyv4.FormatError, match="split.no 7 / split.count 4"):
        _core.GGUFFile(str(shards[0]))


def test_info_reports_the_shards(split, capsys):
    assert cli(["info", str(split[1][1])]) == 0
    out = capsys.readouterr().out
    assert "in 4 shards" in out and "pyv4 can load it: yes" in out


def test_requantize_reads_a_split_model(split, tmp_path):
    """requantize reads all shards (and drops the split keys: its output is one file); the
    same tensors as from the single file, byte for byte."""
    import gguf

    single, shards = split
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert cli(["requantize", str(shards[2]), str(a), "--recipe", "q8", "-q"]) == 0
    assert cli(["requantize", str(single), str(b), "--recipe", "q8", "-q"]) == 0
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    assert not [k for k in ra.fields if k.startswith("split.")]
    assert {t.name: bytes(np.asarray(t.data).view(np.uint8).reshape(-1)) for t in ra.tensors} == \
        {t.name: bytes(np.asarray(t.data).view(np.uint8).reshape(-1)) for t in rb.tensors}
    # an output path that is one of the input's shards is refused before anything is written
    before = shards[3].read_bytes()
    assert cli(["requantize", str(shards[0]), str(shards[3]), "--recipe", "q8", "-q"]) != 0
    assert shards[3].read_bytes() == before

