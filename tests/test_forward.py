"""pyv4's fp32 forward pass (kv="f32": exact KV storage) against transformers' DeepseekV4ForCausalLM
(spec §11): one-shot prefill, prefill + token-by-token decode, and chunked
prefill with chunk sizes aligned to neither 4 nor 128."""

from __future__ import annotations

import numpy as np
import pytest

import pyv4
from conftest import converted_model, random_tokens, reference

TOL = 1e-4

# (config, seed, source layout, tokens). Together: the spec §11 config (two
# seeds, both checkpoint layouts), a 128-token window with > 700 tokens, HCA
# first + sliding last, and o_groups=4 with 3 hash layers and top-3 routing.
CASES = [
    ("spec11", 0, "hf", 600),
    ("spec11", 1, "official", 600),
    ("window128", 2, "hf", 720),
    ("hca_first", 3, "official", 640),
    ("groups4", 4, "hf", 640),
]


def _check(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert out.shape == ref.shape, what
    diff = float(np.abs(out - ref).max())
    top1 = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    assert diff <= TOL, f"{what}: max |Δlogit| = {diff:.3e} > {TOL}"
    assert top1 == 1.0, f"{what}: top-1 agreement {top1:.4f}"


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-s{c[1]}-{c[2]}")
def case(request, tmp_root):
    name, seed, layout, n = request.param
    path, model = converted_model(tmp_root, name, seed, layout)
    tokens = random_tokens(model.config.vocab_size, n, seed)
    return pyv4.Model(path), tokens, reference(model, tokens)


def test_one_shot_prefill(case):
    model, tokens, ref = case
    out = model.new_session(kv="f32").eval(tokens, logits="all")
    _check(out, ref, "prefill")


def test_prefill_then_decode(case):
    model, tokens, ref = case
    sess = model.new_session(kv="f32")
    outs = [sess.eval(tokens[:17], logits="all")]
    for i in range(17, len(tokens)):
        outs.append(sess.eval(tokens[i : i + 1], logits="last")[None, :])
    assert sess.n_tokens == len(tokens)
    _check(np.concatenate(outs), ref, "prefill 17 + decode")


def test_chunked_prefill(case):
    model, tokens, ref = case
    sess = model.new_session(kv="f32")
    outs, i = [], 0
    for size in (13, 37, 130, 5, 211, 1, 66):
        outs.append(sess.eval(tokens[i : i + size], logits="all"))
        i += size
    outs.append(sess.eval(tokens[i:], logits="all"))
    _check(np.concatenate(outs), ref, "chunked prefill")


def test_threads_do_not_change_results(tmp_root):
    path, model = converted_model(tmp_root, "spec11", 0)
    tokens = random_tokens(model.config.vocab_size, 200, 0)
    one = pyv4.Model(path, threads=1).new_session(kv="f32").eval(tokens, logits="all")
    two = pyv4.Model(path, threads=2).new_session(kv="f32").eval(tokens, logits="all")
    np.testing.assert_array_equal(one, two)
