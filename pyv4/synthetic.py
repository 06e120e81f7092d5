"""Random-weight `deepseek4` GGUF files built from hyper-parameters alone:
the demo model behind `pyv4 chat` with no model given, and the wide synthetic
files of bench/. numpy only (no torch): this runs in a runtime-only install.

The tensor table is the llama.cpp `deepseek4` layout (spec §10); the metadata
keys come from the converter's `model_metadata`, so both writers agree."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from .convert.config import HParams, parse_config
from .convert.pipeline import model_metadata
from .convert.tokenizer import tokenizer_metadata
from .convert.writer import ARCH, _add_kv


def tensor_layout(hp: HParams) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, torch-order shape, role) of every main-model tensor."""
    D, V, hc = hp.n_embd, hp.n_vocab, hp.hc_mult
    H, d, E, F = hp.n_head, hp.head_dim, hp.n_expert, hp.n_ff_exp
    out = [
        ("token_embd.weight", (V, D), "embed"),
        ("output.weight", (V, D), "head"),
        ("output_norm.weight", (D,), "norm"),
        ("output_hc_fn.weight", (hc, hc * D), "hc_fn"),
        ("output_hc_base.weight", (hc,), "hc_base"),
        ("output_hc_scale.weight", (1,), "hc_scale"),
    ]
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        L = [("attn_norm.weight", (D,), "norm"), ("ffn_norm.weight", (D,), "norm")]
        for site in ("attn", "ffn"):
            L += [(f"hc_{site}_fn.weight", (hp.hc_mix, hc * D), "hc_fn"),
                  (f"hc_{site}_base.weight", (hp.hc_mix,), "hc_base"),
                  (f"hc_{site}_scale.weight", (3,), "hc_scale")]
        L += [
            ("attn_sinks.weight", (H,), "sink"),
            ("attn_q_a.weight", (hp.q_lora_rank, D), "linear"),
            ("attn_q_a_norm.weight", (hp.q_lora_rank,), "norm"),
            ("attn_q_b.weight", (H * d, hp.q_lora_rank), "linear"),
            ("attn_kv.weight", (d, D), "linear"),
            ("attn_kv_a_norm.weight", (d,), "norm"),
            ("attn_output_a.weight", (hp.o_groups * hp.o_lora_rank, H * d // hp.o_groups), "linear"),
            ("attn_output_b.weight", (D, hp.o_groups * hp.o_lora_rank), "linear"),
        ]
        ratio = hp.layer_ratio(il)
        if ratio:
            coff = 2 if ratio == 4 else 1
            L += [("attn_compressor_kv.weight", (coff * d, D), "compressor"),
                  ("attn_compressor_gate.weight", (coff * d, D), "compressor"),
                  ("attn_compressor_ape.weight", (ratio, coff * d), "ape"),
                  ("attn_compressor_norm.weight", (d,), "norm")]
        if ratio == 4:
            ih, idim = hp.index_n_heads, hp.index_head_dim
            L += [("indexer.proj.weight", (ih, D), "compressor"),
                  ("indexer.attn_q_b.weight", (ih * idim, hp.q_lora_rank), "linear"),
                  ("indexer_compressor_kv.weight", (2 * idim, D), "compressor"),
                  ("indexer_compressor_gate.weight", (2 * idim, D), "compressor"),
                  ("indexer_compressor_ape.weight", (4, 2 * idim), "ape"),
                  ("indexer_compressor_norm.weight", (idim,), "norm")]
        L.append(("ffn_gate_inp.weight", (E, D), "router"))
        if il < hp.n_hash_layers:
            L.append(("ffn_gate_tid2eid.weight", (V, hp.n_expert_used), "tid2eid"))
        else:
            L.append(("exp_probs_b.bias", (E,), "bias"))
        L += [("ffn_gate_exps.weight", (E, F, D), "expert"),
              ("ffn_up_exps.weight", (E, F, D), "expert"),
              ("ffn_down_exps.weight", (E, D, F), "expert")]
        if hp.n_expert_shared:
            L += [("ffn_gate_shexp.weight", (F, D), "linear"),
                  ("ffn_up_shexp.weight", (F, D), "linear"),
                  ("ffn_down_shexp.weight", (D, F), "linear")]
        out += [(b + n, s, r) for n, s, r in L]
    return out


def random_tensor(rng: np.random.Generator, shape, role: str, hp: HParams) -> np.ndarray:
    """O(1)-scale random values, the same rules as the test models (spec §11):
    every path (sinks, biases, hash table, mHC mixing) does real work."""
    if role == "tid2eid":
        return np.stack([rng.permutation(hp.n_expert)[: hp.n_expert_used] for _ in range(shape[0])]).astype(np.int32)
    std = {"embed": 1.0, "head": 2.0 / math.sqrt(shape[-1]), "sink": 1.0, "ape": 0.5, "bias": 0.5,
           "hc_base": 1.0}.get(role)
    if role == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if role == "hc_scale":
        return (1.0 + 0.5 * rng.random(shape)).astype(np.float32)
    if std is None:  # fan-in scaled matrices (linear, expert, router, compressor, hc_fn)
        std = 1.0 / math.sqrt(shape[-1])
    return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def write_random_gguf(path: str | os.PathLike, config: dict, tokenizer_dir: str | os.PathLike | None,
                      seed: int = 0, matrix_type: T = T.F16, name: str = "pyv4-random") -> Path:
    """Writes a random-weight model for an official-style `config` dict, atomically."""
    hp = parse_config(config, "synthetic config")
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    rng = np.random.default_rng(seed)
    kvs = model_metadata(hp, 0, name, 1 if matrix_type == T.F16 else 0)
    if tokenizer_dir is not None:
        kvs += tokenizer_metadata(tokenizer_dir, hp.n_vocab, hp.bos_token_id, hp.eos_token_id).entries
    w = GGUFWriter(str(tmp), arch=ARCH)
    try:
        for kv in kvs:
            _add_kv(w, kv)
        for tname, shape, role in tensor_layout(hp):
            a = random_tensor(rng, shape, role, hp)
            if a.dtype == np.float32 and len(shape) >= 2 and role not in ("hc_fn",):
                a = a.astype(np.float16) if matrix_type == T.F16 else a
            w.add_tensor(tname, a)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
