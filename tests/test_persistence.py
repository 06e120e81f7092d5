"""Persistent sessions (csrc/kv/session_file.*, pyv4/model.py, pyv4/prompt_cache.py):
save→load, fork and truncate give bitwise the logits of one continuous eval;
every malformed file raises pyv4.FormatError; saves are atomic; the prompt
cache resumes from the longest saved prefix and evicts LRU files."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

import gguf_tools
import pyv4
from conftest import random_tokens


@pytest.fixture(scope="module")
def model(spec11):
    return pyv4.Model(spec11[0])


TOKS = random_tokens(512, 700, 11)


def _continuous(model, kv, upto, probe):
    s = model.new_session(kv=kv)
    s.eval(TOKS[:upto])
    return s.eval(probe, logits="all")


@pytest.mark.parametrize("kv", ["f32", "fp8"])
def test_save_load_is_bitwise(model, kv, tmp_path):
    s = model.new_session(kv=kv)
    s.eval(TOKS[:333])
    path = tmp_path / "s.pyv4s"
    s.save(path)
    loaded = pyv4.Session.load(model, path, verify=True)
    assert loaded.n_tokens == 333 and loaded.kv_type == kv
    np.testing.assert_array_equal(loaded.tokens, TOKS[:333])
    assert loaded.stats()["kv_bytes"] == s.stats()["kv_bytes"]
    probe = TOKS[333:360]
    want = _continuous(model, kv, 333, probe)
    np.testing.assert_array_equal(loaded.eval(probe, logits="all"), want)
    np.testing.assert_array_equal(s.eval(probe, logits="all"), want)
    # the loaded session keeps going token by token (decode over mapped rows)
    for i in range(360, 380):
        loaded.eval(TOKS[i : i + 1])
    np.testing.assert_array_equal(loaded.eval(TOKS[380:390], logits="all"),
                                  _continuous(model, kv, 380, TOKS[380:390]))
    # saving a loaded session (rows adopted from the file) round-trips too
    loaded.save(tmp_path / "t.pyv4s")
    again = pyv4.Session.load(model, tmp_path / "t.pyv4s")
    np.testing.assert_array_equal(again.eval(TOKS[390:400], logits="all"),
                                  _continuous(model, kv, 390, TOKS[390:400]))


@pytest.mark.parametrize("kv", ["f32", "fp8"])
def test_fork_shares_then_diverges(model, kv):
    s = model.new_session(kv=kv)
    s.eval(TOKS[:300])
    f = s.fork()
    assert f.n_tokens == 300 and f.stats()["kv_bytes"] == s.stats()["kv_bytes"]
    other = random_tokens(512, 40, 12)
    # the fork takes another continuation; the original is unaffected
    out_f = f.eval(other, logits="all")
    out_s = s.eval(TOKS[300:340], logits="all")
    np.testing.assert_array_equal(out_s, _continuous(model, kv, 300, TOKS[300:340]))
    c = model.new_session(kv=kv)
    c.eval(TOKS[:300])
    np.testing.assert_array_equal(out_f, c.eval(other, logits="all"))
    # and each keeps going independently
    np.testing.assert_array_equal(s.eval(TOKS[340:350], logits="all"),
                                  _continuous(model, kv, 340, TOKS[340:350]))
    np.testing.assert_array_equal(f.eval(TOKS[0:5], logits="all"), c.eval(TOKS[0:5], logits="all"))


@pytest.mark.parametrize("kv", ["f32", "fp8"])
def test_truncate_then_reeval_is_bitwise(model, kv):
    s = model.new_session(kv=kv)
    s.eval(TOKS[:650])
    f = s.fork()
    for n in (600, 512, 383, 256, 130, 100, 0):
        s.truncate(n)
        assert s.n_tokens == n
        np.testing.assert_array_equal(s.tokens, TOKS[:n])
        probe = TOKS[n : n + 9]
        got = s.eval(probe, logits="all")
        if n:
            np.testing.assert_array_equal(got, _continuous(model, kv, n, probe))
        else:
            np.testing.assert_array_equal(got, model.new_session(kv=kv).eval(probe, logits="all"))
        s.truncate(n)
    # truncating one session leaves its fork alone
    np.testing.assert_array_equal(f.eval(TOKS[650:660], logits="all"),
                                  _continuous(model, kv, 650, TOKS[650:660]))


def test_truncate_bad_input(model):
    s = model.new_session()
    s.eval(TOKS[:50])
    for bad in (-1, 51):
        with pytest.raises(ValueError, match="truncate"):
            s.truncate(bad)
    for bad in (1.5, "3", None, True):
        with pytest.raises(ValueError):
            s.truncate(bad)
    assert s.n_tokens == 50
    s.truncate(50)
    assert s.n_tokens == 50


def test_reset_and_backing_path(model, tmp_path):
    s = model.new_session(kv="fp8", path=tmp_path / "backing.kv")
    a = s.eval(TOKS[:200], logits="all")
    assert (tmp_path / "backing.kv").stat().st_size > 0
    s.reset()
    assert s.n_tokens == 0 and s.stats()["kv_bytes"] == 0
    np.testing.assert_array_equal(s.eval(TOKS[:200], logits="all"), a)
    with pytest.raises(ValueError, match="backing file"):
        model.new_session(path=tmp_path / "no" / "such" / "dir" / "x.kv")


# ---- integrity ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    s = model.new_session(kv="fp8")
    s.eval(TOKS[:260])
    path = d / "good.pyv4s"
    s.save(path)
    return path, path.read_bytes()


def _write(tmp_path, data: bytes, name="bad.pyv4s"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_load_into_another_model_raises(saved, spec11, tmp_path):
    other = pyv4.Model(gguf_tools.with_context_length(spec11[0], tmp_path / "other.gguf", 2048))
    with pytest.raises(pyv4.FormatError, match="different model"):
        pyv4.Session.load(other, saved[0])


def test_truncated_file_raises(model, saved, tmp_path):
    data = saved[1]
    for cut in (0, 10, 127, 128, 1000, len(data) - 1):
        with pytest.raises(pyv4.FormatError):
            pyv4.Session.load(model, _write(tmp_path, data[:cut]))


def test_corrupt_files_raise(model, saved, tmp_path):
    data = bytearray(saved[1])
    bad_magic = bytes(b"NOTAKVS\0") + bytes(data[8:])
    with pytest.raises(pyv4.FormatError, match="not a pyv4 session"):
        pyv4.Session.load(model, _write(tmp_path, bad_magic))
    version = bytearray(data)
    version[8:12] = struct.pack("<I", 99)
    with pytest.raises(pyv4.FormatError, match="unknown session file version 99"):
        pyv4.Session.load(model, _write(tmp_path, bytes(version)))
    for off, what in ((32, "header"), (200, "metadata"), (130, "metadata")):
        b = bytearray(data)
        b[off] ^= 0x5A
        with pytest.raises(pyv4.FormatError, match=what):
            pyv4.Session.load(model, _write(tmp_path, bytes(b)))
    # a flipped row byte is caught by verify=True (the default load is O(metadata))
    b = bytearray(data)
    data_offset = struct.unpack_from("<Q", data, 64)[0]
    b[data_offset + 3] ^= 0x01
    p = _write(tmp_path, bytes(b))
    with pytest.raises(pyv4.FormatError, match="data is corrupt"):
        pyv4.Session.load(model, p, verify=True)
    with pytest.raises(FileNotFoundError):
        pyv4.Session.load(model, tmp_path / "missing.pyv4s")


def test_save_is_atomic(model, saved, tmp_path):
    path = _write(tmp_path, saved[1], "target.pyv4s")
    s = model.new_session(kv="f32")
    s.eval(TOKS[:30])
    s.save(path)  # replaces the old file
    assert pyv4.Session.load(model, path).kv_type == "f32"
    assert [p.name for p in tmp_path.iterdir()] == ["target.pyv4s"]  # no temp files left
    with pytest.raises(ValueError):
        s.save(tmp_path / "no" / "dir" / "x.pyv4s")
    assert [p.name for p in tmp_path.iterdir()] == ["target.pyv4s"]


# ---- prompt cache -------------------------------------------------------------------------


def test_prompt_cache_resumes_longest_prefix(model, tmp_path):
    cache = model.prompt_cache(tmp_path / "pc", max_bytes=10**9)
    a = cache.resume(TOKS[:200])
    assert a.n_tokens == 0
    a.eval(TOKS[:200])
    cache.save(a)
    b = model.new_session()
    b.eval(TOKS[:150])
    cache.save(b)
    # a longer prompt with the same start resumes from all 200 tokens
    r = cache.resume(TOKS[:260])
    assert r.n_tokens == 200
    np.testing.assert_array_equal(r.eval(TOKS[200:260], logits="all"), _continuous(model, "fp8", 200, TOKS[200:260]))
    # a prompt that diverges at 170 resumes from 170 (loaded, then truncated)
    q = np.concatenate([TOKS[:170], random_tokens(512, 30, 13)])
    r = cache.resume(q)
    assert r.n_tokens == 170
    c = model.new_session()
    c.eval(q[:170])
    np.testing.assert_array_equal(r.eval(q[170:], logits="all"), c.eval(q[170:], logits="all"))
    # the exact saved prompt resumes one short, so eval yields next-token logits
    assert cache.resume(TOKS[:200]).n_tokens == 199
    # other kv types are separate entries
    assert cache.resume(TOKS[:260], kv="f32").n_tokens == 0


def test_prompt_cache_evicts_lru(model, tmp_path):
    cache = model.prompt_cache(tmp_path / "pc", max_bytes=10**9)
    paths = []
    for i in range(3):
        s = model.new_session()
        s.eval(random_tokens(512, 140, 20 + i))
        paths.append(cache.save(s))
        os.utime(paths[-1], ns=(10**18 + i * 10**9, 10**18 + i * 10**9))  # deterministic LRU order
    sizes = [p.stat().st_size for p in paths]
    cache.resume(random_tokens(512, 160, 20))  # hit: file 0 becomes the most recent
    assert paths[0].stat().st_mtime_ns > paths[2].stat().st_mtime_ns
    cache.max_bytes = sizes[0] + sizes[2] + 1
    cache.evict()
    assert [p.exists() for p in paths] == [True, False, True]
    assert cache.total_bytes() <= cache.max_bytes
    # garbage in the directory never matches and goes first
    (tmp_path / "pc" / "junk.pyv4s").write_bytes(b"junk")
    assert cache.resume(random_tokens(512, 160, 22)).n_tokens == 140
    cache.evict()
    assert not (tmp_path / "pc" / "junk.pyv4s").exists()
    with pytest.raises(ValueError):
        model.prompt_cache(tmp_path / "pc2", max_bytes=-1)
