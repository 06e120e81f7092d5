"""Shared fixtures: tiny random DeepSeek-V4 models (tests/tiny_models.py),
converted to GGUF with `pyv4 convert`, with transformers' logits as the oracle."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models

_cache: dict = {}


def converted_model(tmp_root, name: str, seed: int, layout: str = "hf", recipe: str = "f32"):
    """(gguf_path, transformers model) for a tiny config; built once per session."""
    key = (name, seed, layout, recipe)
    if key not in _cache:
        from pyv4.cli import main as cli

        model = _cache.get(("model", name, seed))
        if model is None:
            model = _cache[("model", name, seed)] = tiny_models.build_model(name, seed)
        src = tmp_root / f"{name}-{seed}-{layout}"
        if not src.exists():
            (tiny_models.save_hf if layout == "hf" else tiny_models.save_official)(model, src)
        out = tmp_root / f"{name}-{seed}-{layout}-{recipe}.gguf"
        rc = cli(["convert", str(src), str(out), "--recipe", recipe])
        assert rc == 0, f"pyv4 convert failed for {key}"
        _cache[key] = (out, model)
    return _cache[key]


def reference(model, tokens) -> np.ndarray:
    key = ("ref", id(model), tokens.tobytes())
    if key not in _cache:
        _cache[key] = tiny_models.reference_logits(model, tokens)
    return _cache[key]


def random_tokens(vocab: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, vocab, n).astype(np.int64)


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def spec11(tmp_root):
    """The spec §11 config, seed 0, transformers layout, f32 GGUF."""
    return converted_model(tmp_root, "spec11", 0)
