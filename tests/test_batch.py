"""Model.eval_batch: several sessions in one forward pass give each session
what it would get alone (bitwise in reference mode, within the int8 activation
bound in fast mode), keep their states apart, and reject bad input before any
session changes."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_tools
import pyv4
from pyv4 import _core
from conftest import converted_model, random_tokens


@pytest.fixture(scope="module")
def qmodel(tmp_root):
    """The spec §11 config with MXFP4 experts and Q8_0 projections: every
    matmul goes through the int8 kernels in fast mode."""
    path, _ = converted_model(tmp_root, "spec11", 0, recipe="mxfp4")
    return pyv4.Model(path)


@pytest.fixture
def mode():
    old = _core.compute_mode()
    yield _core.set_compute_mode
    _core.set_compute_mode(old)


# Each stream: (kv type, history length, steps). The steps are the token
# counts the stream feeds in each batched step (0 = it sits that step out):
# prefill chunks next to single decoded tokens, crossing CSA (4) and HCA (128)
# block ends and the 128-token snapshot positions.
STREAMS = [
    ("fp8", 0, [37, 1, 1, 5, 1, 1, 1, 0, 1, 90]),
    ("f32", 125, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    ("bf16", 3, [1, 0, 130, 1, 1, 1, 2, 1, 1, 1]),
    ("fp8", 250, [6, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
]


def _run(model, batched: bool):
    """Feeds STREAMS either through eval_batch or one session at a time;
    returns the sessions and every logits row produced, per stream."""
    rng = np.random.default_rng(5)
    sessions, feeds = [], []
    for i, (kv, hist, steps) in enumerate(STREAMS):
        s = model.new_session(kv=kv)
        if hist:
            s.eval(random_tokens(model.n_vocab, hist, 20 + i))
        sessions.append(s)
        feeds.append([rng.integers(0, model.n_vocab, k) for k in steps])
    out = [[] for _ in STREAMS]
    for step in range(len(STREAMS[0][2])):
        items = [(i, feeds[i][step]) for i in range(len(STREAMS)) if len(feeds[i][step])]
        if batched:
            res = model.eval_batch([(sessions[i], toks) for i, toks in items], logits="all")
        else:
            res = [sessions[i].eval(toks, logits="all") for i, toks in items]
        for (i, _), r in zip(items, res):
            out[i].append(r)
    return sessions, [np.concatenate(o) for o in out]


def test_batch_is_bitwise_one_by_one_in_reference_mode(qmodel, mode):
    mode("reference")
    solo_sessions, solo = _run(qmodel, batched=False)
    batch_sessions, batch = _run(qmodel, batched=True)
    for i in range(len(STREAMS)):
        np.testing.assert_array_equal(batch[i], solo[i], err_msg=f"stream {i}")
        np.testing.assert_array_equal(batch_sessions[i].tokens, solo_sessions[i].tokens)
    # The states are the same too: the next token, and a rollback across a
    # snapshot taken inside a batched step, give the same logits.
    for i, (a, b) in enumerate(zip(batch_sessions, solo_sessions)):
        np.testing.assert_array_equal(a.eval([7]), b.eval([7]), err_msg=f"stream {i} next token")
        n = a.n_tokens - 20
        a.truncate(n)
        b.truncate(n)
        np.testing.assert_array_equal(a.eval([9, 10], logits="all"), b.eval([9, 10], logits="all"))


def test_batch_matches_one_by_one_in_fast_mode(qmodel, mode):
    mode("fast")
    _, solo = _run(qmodel, batched=False)
    _, batch = _run(qmodel, batched=True)
    # Fast mode picks a matrix's kernel by the batch's row count (GEMV, quad
    # tiles, lane GEMM): the same int8 products summed in another order, and
    # downstream of that the fp8 KV rounding and the indexer's top-k can tip.
    # Chunked prefill against token-by-token decode of the same tokens shows
    # how far that alone moves the logits on this model; batching must stay
    # within the same order (a wrong position or state gives differences of
    # the logits' own size, ~9).
    toks = random_tokens(qmodel.n_vocab, 60, 1)
    chunked = qmodel.new_session().eval(toks, logits="all")
    s = qmodel.new_session()
    stepped = np.stack([s.eval(toks[i : i + 1]) for i in range(len(toks))])
    base = float(np.abs(chunked - stepped).max())
    for i in range(len(STREAMS)):
        assert batch[i].shape == solo[i].shape
        diff = float(np.abs(batch[i] - solo[i]).max())
        assert diff <= max(2 * base, 0.05), f"stream {i}: max |Δlogit| {diff:.3f} (chunked vs stepped {base:.3f})"
        assert (batch[i].argmax(-1) == solo[i].argmax(-1)).mean() >= 0.98


def test_last_logits_and_single_item(qmodel):
    a, b = qmodel.new_session(), qmodel.new_session()
    toks = random_tokens(qmodel.n_vocab, 12, 3)
    la, lb = qmodel.eval_batch([(a, toks), (b, toks[:5])])
    assert la.shape == lb.shape == (qmodel.n_vocab,)
    np.testing.assert_array_equal(qmodel.eval_batch([(qmodel.new_session(), toks)])[0], la)
    assert (a.n_tokens, b.n_tokens) == (12, 5)


def _snapshot(sessions):
    return [(s.n_tokens, s.tokens.copy()) for s in sessions]


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda a, b: [(a, [1, 2]), (b, [3, 512])], r"batch item 1: token id 512 at index 1"),
        (lambda a, b: [(a, [1, 2]), (b, [])], r"batch item 1: tokens is empty"),
        (lambda a, b: [(a, [1]), (a, [2])], r"batch items 0 and 1 are the same session"),
        (lambda a, b: [(a, [1]), b], r"batch item 1 must be a \(session, tokens\) pair"),
        (lambda a, b: [(a, [1]), ("x", [2])], r"batch item 1: not a session of this model"),
        (lambda a, b: [], r"the batch is empty"),
    ],
)
def test_bad_batches_change_nothing(qmodel, bad, match):
    a, b = qmodel.new_session(), qmodel.new_session()
    a.eval([5, 6, 7])
    before = _snapshot([a, b])
    with pytest.raises(ValueError, match=match):
        qmodel.eval_batch(bad(a, b))
    after = _snapshot([a, b])
    assert [x[0] for x in after] == [x[0] for x in before]
    np.testing.assert_array_equal(after[0][1], before[0][1])


def test_session_of_another_model_is_refused(qmodel, spec11):
    other = pyv4.Model(spec11[0]).new_session()
    with pytest.raises(ValueError, match="not a session of this model"):
        qmodel.eval_batch([(qmodel.new_session(), [1]), (other, [1])])


def test_overflow_in_one_item_changes_no_session(spec11, tmp_path):
    m = pyv4.Model(gguf_tools.with_context_length(spec11[0], tmp_path / "ctx64.gguf", 64))
    a, b = m.new_session(), m.new_session()
    b.eval(random_tokens(m.n_vocab, 60, 1))
    with pytest.raises(pyv4.ContextOverflowError, match=r"batch item 1: context overflow.*60 tokens.*adding 5"):
        m.eval_batch([(a, [1, 2, 3]), (b, [1, 2, 3, 4, 5])])
    assert (a.n_tokens, b.n_tokens) == (0, 60)
    m.eval_batch([(a, [1, 2, 3]), (b, [1, 2, 3, 4])])  # exactly full is fine
    assert (a.n_tokens, b.n_tokens) == (3, 64)
