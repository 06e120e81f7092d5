"""Session API behaviour: logits modes, reset, and bad input that must raise
without touching the session."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_tools
import pyv4
from conftest import random_tokens
from eval_failure import eval_that_fails_midway


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


def test_eval_that_fails_midway_leaves_session_as_it_was(spec11, tmp_path):
    """The KV backing file cannot grow in the middle of an eval: the error says
    so, and the session goes on as if that eval never happened."""
    error, n_tokens, diff, _ = eval_that_fails_midway(spec11[0], tmp_path)
    assert error.startswith("error: cannot grow the KV backing file (") and "s.kv) to " in error, error
    assert n_tokens == 100
    assert diff == 0.0  # as if the failed eval never happened
