"""Session API behaviour: logits modes, reset, and bad input that must raise
without touching the session."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_tools
import pyv4
from conftest import random_tokens


@pytest.fixture(scope="module")
def model(spec11):
    return pyv4.Model(spec11[0])


def test_config_matches_the_checkpoint(model, spec11):
    hf = spec11[1].config
    c = model.config
    assert c["vocab_size"] == hf.vocab_size == model.n_vocab
    assert c["hidden_size"] == hf.hidden_size
    assert c["num_hidden_layers"] == hf.num_hidden_layers
    assert c["head_dim"] == hf.head_dim
    assert c["sliding_window"] == hf.sliding_window
    assert c["compress_ratios"][: hf.num_hidden_layers] == [0, 4, 128, 4, 128, 0]
    assert c["num_hash_layers"] == 3
    assert c["index_topk"] == hf.index_topk


def test_last_equals_last_row_of_all(model):
    toks = random_tokens(model.n_vocab, 50, 7)
    all_ = model.new_session().eval(toks, logits="all")
    last = model.new_session().eval(toks, logits="last")
    assert all_.shape == (50, model.n_vocab) and last.shape == (model.n_vocab,)
    assert all_.dtype == np.float32
    np.testing.assert_array_equal(all_[-1], last)


def test_reset_starts_over(model):
    toks = random_tokens(model.n_vocab, 40, 8)
    s = model.new_session()
    first = s.eval(toks, logits="all")
    assert s.n_tokens == 40
    s.reset()
    assert s.n_tokens == 0
    np.testing.assert_array_equal(s.eval(toks, logits="all"), first)


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2, -1],
        [1, 2, 512],  # vocab is 512
        np.array([1.0, 2.0]),
        np.array([[1, 2]]),
        [],
        ["a"],
    ],
    ids=["negative", "past-vocab", "float", "2d", "empty", "str"],
)
def test_bad_tokens_leave_session_unchanged(model, bad):
    toks = random_tokens(model.n_vocab, 30, 9)
    s = model.new_session()
    s.eval(toks[:20], logits="last")
    with pytest.raises(ValueError):
        s.eval(bad)
    assert s.n_tokens == 20
    expected = model.new_session().eval(toks, logits="all")[20:]
    np.testing.assert_array_equal(s.eval(toks[20:], logits="all"), expected)


def test_out_of_range_message_names_the_token(model):
    with pytest.raises(ValueError, match=r"token id 600 at index 1 .*\[0, 512\)"):
        model.new_session().eval([3, 600])


def test_bad_logits_mode(model):
    with pytest.raises(ValueError, match="logits"):
        model.new_session().eval([1, 2], logits="first")


def test_context_overflow(spec11, tmp_path):
    m = pyv4.Model(gguf_tools.with_context_length(spec11[0], tmp_path / "ctx64.gguf", 64))
    s = m.new_session()
    toks = random_tokens(m.n_vocab, 64, 10)
    s.eval(toks[:60])
    with pytest.raises(pyv4.ContextOverflowError, match=r"60 tokens.*adding 5.*64"):
        s.eval(toks[:5])
    assert s.n_tokens == 60
    s.eval(toks[60:64])  # exactly full is fine
    assert s.n_tokens == 64
    assert issubclass(pyv4.ContextOverflowError, ValueError)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyv4.Model(tmp_path / "nope.gguf")


# An eval that fails midway, after some of its KV rows were written: the KV
# backing file cannot grow (a file-size limit, as on a full disk). Run in a
# child process so that the limit and SIGXFSZ stay there.
_GROW_FAILS = r"""
import os, resource, signal, sys
import numpy as np
import pyv4

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ftruncate past the limit: EFBIG
model_path, kv_path = sys.argv[1], sys.argv[2]
m = pyv4.Model(model_path)
toks = np.random.default_rng(11).integers(0, m.n_vocab, 300)
s = pyv4.Session(m, path=kv_path)
s.eval(toks[:100])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(kv_path), hard))
try:
    s.eval(toks[100:200])
except ValueError as e:
    print("error:", e)
print("n_tokens", s.n_tokens)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
got = [s.eval(toks[100:200], logits="all"), s.eval(toks[200:300], logits="all")]
ref = m.new_session()
ref.eval(toks[:100])
want = [ref.eval(toks[100:200], logits="all"), ref.eval(toks[200:300], logits="all")]
print("max diff", max(float(np.abs(g - w).max()) for g, w in zip(got, want)))
"""


def test_eval_that_fails_midway_leaves_session_as_it_was(spec11, tmp_path):
    import subprocess
    import sys

    kv = tmp_path / "s.kv"
    r = subprocess.run([sys.executable, "-c", _GROW_FAILS, str(spec11[0]), str(kv)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("error: cannot grow the KV backing file"), r.stdout
    assert lines[1] == "n_tokens 100"
    assert lines[2] == "max diff 0.0", r.stdout  # as if the failed eval never happened
