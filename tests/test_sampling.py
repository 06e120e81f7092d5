"""Sampling: each filter keeps exactly the right support, penalties change
the right logits, and a seed fixes the draws."""

from __future__ import annotations

import numpy as np
import pytest

from pyv4.sampling import SamplingParams

PROBS = np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float64)
LOGITS = np.log(PROBS).astype(np.float32)
NONE = np.zeros(0, dtype=np.int64)


def probs(logits=LOGITS, history=NONE, **kw):
    return SamplingParams(**kw).sampler().probabilities(np.asarray(logits, np.float32), history)


def support(p):
    return set(np.flatnonzero(p).tolist())


def test_plain_softmax():
    np.testing.assert_allclose(probs(), PROBS, rtol=1e-6)


def test_temperature_sharpens():
    p = probs(temperature=0.5)
    expected = PROBS**2 / np.sum(PROBS**2)
    np.testing.assert_allclose(p, expected, rtol=1e-5)


def test_greedy_and_ties():
    assert support(probs(temperature=0)) == {1}
    s = SamplingParams(temperature=0).sampler()
    assert s.sample(np.array([1, 3, 3, 0], np.float32), NONE) == 1  # lowest id on ties


@pytest.mark.parametrize("k,expected", [(1, {1}), (2, {1, 3}), (3, {1, 2, 3}), (0, {0, 1, 2, 3}), (9, {0, 1, 2, 3})])
def test_top_k_support(k, expected):
    p = probs(top_k=k)
    assert support(p) == expected
    assert p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("top_p,expected", [(0.49, {1}), (0.51, {1, 3}), (0.79, {1, 3}), (0.81, {1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_support(top_p, expected):
    p = probs(top_p=top_p)
    assert support(p) == expected
    kept = sorted(expected)
    np.testing.assert_allclose(p[kept], PROBS[kept] / PROBS[kept].sum(), rtol=1e-6)


@pytest.mark.parametrize("min_p,expected", [(0.0, {0, 1, 2, 3}), (0.09, {0, 1, 2, 3}), (0.11, {1, 2, 3}), (0.29, {1, 2, 3}), (0.31, {1, 3}), (0.61, {1})])
def test_min_p_support(min_p, expected):
    assert support(probs(min_p=min_p)) == expected


def test_filters_compose():
    assert support(probs(top_k=3, top_p=0.9, min_p=0.35)) == {1, 3}
    assert support(probs(top_k=3, top_p=0.9, min_p=0.2)) == {1, 2, 3}


def test_repetition_penalty():
    logits = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    hist = np.array([0, 1], np.int64)
    p = probs(logits, hist, repetition_penalty=2.0)
    expected_logits = np.array([1.0, -2.0, 0.5, 0.0])
    e = np.exp(expected_logits - expected_logits.max())
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-5)


def test_presence_and_frequency_penalties():
    logits = np.zeros(4, np.float32)
    hist = np.array([2, 2, 2, 3], np.int64)
    p = probs(logits, hist, presence_penalty=0.5, frequency_penalty=0.25)
    z = np.array([0, 0, -0.5 - 0.75, -0.5 - 0.25])
    e = np.exp(z)
    np.testing.assert_allclose(p, e / e.sum(), rtol=1e-5)


def test_penalty_last_n_window():
    logits = np.zeros(4, np.float32)
    hist = np.array([0, 0, 1], np.int64)
    p = probs(logits, hist, presence_penalty=1.0, penalty_last_n=1)
    assert p[0] == pytest.approx(p[2]) and p[1] < p[0]


def test_same_seed_same_tokens_and_distribution():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))

    def draw(seed, n):
        s = SamplingParams(seed=seed).sampler()
        return [s.sample(logits, NONE) for _ in range(n)]

    a, b, c = draw(7, 200), draw(7, 200), draw(8, 200)
    assert a == b and a != c
    counts = np.bincount(draw(123, 20000), minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_draws_stay_in_support():
    s = SamplingParams(seed=1, top_k=2).sampler()
    assert {s.sample(LOGITS, NONE) for _ in range(300)} == {1, 3}


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5), dict(min_p=-0.1),
        dict(min_p=2), dict(repetition_penalty=0), dict(max_tokens=-1), dict(seed=-3),
        dict(stop=[""]), dict(temperature="hot"), dict(presence_penalty=float("nan")),
    ],
)
def test_invalid_parameters_raise(kw):
    with pytest.raises(ValueError, match="invalid sampling parameter"):
        SamplingParams(**kw)
