"""What bench/ relies on: the typed random-weight writer (pyv4.synthetic), resident
loading (Model(resident=True)) and the per-op profile (PYV4_PROFILE=1)."""

from __future__ import annotations

import numpy as np
import pytest

import pyv4
from pyv4.demo import DEMO_CONFIG
from pyv4.synthetic import tensor_types, write_random_gguf_typed

CONFIG = dict(DEMO_CONFIG, vocab_size=512, max_position_embeddings=1024)


@pytest.fixture(scope="module", params=["mxfp4", "q8", "q4"])
def typed_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("typed") / f"{request.param}.gguf"
    write_random_gguf_typed(path, CONFIG, None, recipe=request.param, seed=3)
    return request.param, path


def test_typed_writer_uses_the_recipe_types(typed_model):
    from gguf import GGUFReader

    recipe, path = typed_model
    r = GGUFReader(str(path))
    got = {t.name: t.tensor_type for t in r.tensors}
    from pyv4.convert.config import parse_config

    assert got == tensor_types(parse_config(CONFIG), recipe)
    if recipe == "mxfp4":
        assert got["blk.1.ffn_up_exps.weight"].name == "MXFP4"
        assert got["blk.1.attn_q_b.weight"].name == "Q8_0"
        assert got["output.weight"].name == "BF16"
        assert got["blk.1.attn_compressor_kv.weight"].name == "BF16"


def test_resident_matches_mmap_and_profile(typed_model, monkeypatch):
    _, path = typed_model
    toks = np.arange(5, 45)
    a = pyv4.Model(path, threads=2).new_session().eval(toks, logits="all")
    monkeypatch.setenv("PYV4_PROFILE", "1")
    m = pyv4.Model(path, threads=2, resident=True)
    assert m._engine.resident
    b = m.new_session().eval(toks, logits="all")
    assert np.isfinite(a).all() and np.array_equal(a, b)
    p = m.profile()
    assert p["evals"] == 1 and p["total"] > 0
    assert {"matmul.head", "matmul.experts", "attn.core", "mhc"} <= set(p["ops"])
    assert sum(s for s, _ in p["ops"].values()) <= p["total"] * 1.001
    m.profile_reset()
    assert m.profile()["evals"] == 0


def test_profile_off_by_default(typed_model, monkeypatch):
    monkeypatch.delenv("PYV4_PROFILE", raising=False)
    assert pyv4.Model(typed_model[1], threads=1).profile() is None
