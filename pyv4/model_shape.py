"""What the placement planner (pyv4/placement.py) needs to know about a model:
its hyper-parameters and its tensor table (name, GGML type, shape, bytes),
read from a `deepseek4` GGUF's header, or built from the published shapes of
V4-Flash / V4-Pro (spec §1.1) and a converter recipe, so that a plan for the
150+ GB models can be made without the file.

Tensors fall into the categories the planner places (spec §10 names):

    embed       token_embd                  (host: one row gathered per token)
    head        output, output_norm, output_hc_*
    attention   attn_q_a/q_b/kv/output_a/output_b, attn_sinks
    compressor  attn_compressor_*           (CSA / HCA)
    indexer     indexer.*, indexer_compressor_*
    mhc         hc_attn_*, hc_ffn_*
    norms       attn_norm, ffn_norm, attn_q_a_norm, attn_kv_a_norm
    router      ffn_gate_inp, exp_probs_b, ffn_gate_tid2eid
    shared      ffn_*_shexp                 (the shared expert)
    experts     ffn_{gate,up,down}_exps     (the routed experts, [E, out, in])
    mtp         the MTP block (blk.{n_layer}+, nextn.*): never run by decode
    other       anything else (kept with the non-expert weights)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RE_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str                 # GGML type name (F32, BF16, Q8_0, MXFP4, ...)
    shape: tuple[int, ...]    # row-major (torch order): rows first
    nbytes: int
    category: str
    layer: int | None         # main-model layer index, None for global tensors and the MTP block


@dataclass(frozen=True)
class ModelShape:
    """Hyper-parameters and tensor table of one model file (or built-in shape)."""
    name: str
    n_layer: int              # main decoder layers (MTP excluded)
    n_embd: int
    n_vocab: int
    n_head: int
    head_dim: int
    rope_dim: int
    window: int
    compress_ratio: tuple[int, ...]   # per main layer: 0 sliding, 4 CSA, other HCA
    index_n_head: int
    index_head_dim: int
    index_topk: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ctx: int                # the model's trained context
    tensors: tuple[TensorInfo, ...]

    def layer_kind(self, layer: int) -> str:
        r = self.compress_ratio[layer]
        return "sliding" if r == 0 else ("csa" if r == 4 else "hca")

    def bytes_of(self, category: str, layer: int | None = None) -> int:
        return sum(t.nbytes for t in self.tensors
                   if t.category == category and (layer is None or t.layer == layer))

    def expert_bytes(self, layer: int) -> int:
        """Bytes of one routed expert of `layer` (its gate, up and down rows):
        the stacked tensors hold the E experts back to back, so each is 1/E."""
        return self.bytes_of("experts", layer) // self.n_expert


def categorize(name: str, n_layer: int) -> tuple[str, int | None]:
    """(category, main layer or None) of a GGUF tensor name (see the module docstring)."""
    if name == "token_embd.weight":
        return "embed", None
    if name.startswith(("output.", "output_norm.", "output_hc_")):
        return "head", None
    m = _RE_BLK.match(name)
    if m is None:
        return "other", None
    layer, rest = int(m.group(1)), m.group(2)
    if layer >= n_layer or rest.startswith("nextn."):
        return "mtp", None
    if rest.startswith(("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")):
        cat = "experts"
    elif rest.startswith(("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")):
        cat = "shared"
    elif rest.startswith(("ffn_gate_inp", "exp_probs_b", "ffn_gate_tid2eid")):
        cat = "router"
    elif rest.startswith("attn_compressor_"):
        cat = "compressor"
    elif rest.startswith(("indexer.", "indexer_compressor_")):
        cat = "indexer"
    elif rest.startswith(("hc_attn_", "hc_ffn_")):
        cat = "mhc"
    elif rest.startswith(("attn_norm", "ffn_norm", "attn_q_a_norm", "attn_kv_a_norm")):
        cat = "norms"
    elif rest.startswith(("attn_q_a", "attn_q_b", "attn_kv", "attn_output_", "attn_sinks")):
        cat = "attention"
    else:
        cat = "other"
    return cat, layer


def _table(rows, n_layer: int) -> tuple[TensorInfo, ...]:
    out = []
    for name, tname, shape, nbytes in rows:
        cat, layer = categorize(name, n_layer)
        out.append(TensorInfo(name, tname, tuple(int(s) for s in shape), int(nbytes), cat, layer))
    return tuple(out)


def from_gguf(path: str) -> ModelShape:
    """The shape of a `deepseek4` GGUF (header only: nothing of the weights is read).
    Raises pyv4.FormatError for a file that is not one."""
    from . import _core

    f = _core.GGUFFile(path)
    arch = f.get("general.architecture")
    if arch != "deepseek4":
        raise _core.FormatError(f"{path}: architecture {arch!r} is not 'deepseek4' (a DeepSeek-V4 GGUF)")

    def key(k, default=None):
        v = f.get(f"deepseek4.{k}")
        if v is None:
            if default is None:
                raise _core.FormatError(f"{path}: metadata key 'deepseek4.{k}' is missing")
            return default
        return v

    n_layer = int(key("block_count")) - int(key("nextn_predict_layers", 0))
    ratios = key("attention.compress_ratios")
    ratios = [int(ratios)] * n_layer if isinstance(ratios, (int, float)) else [int(r) for r in ratios]
    if len(ratios) < n_layer:
        raise _core.FormatError(f"{path}: attention.compress_ratios has {len(ratios)} entries, need {n_layer}")
    rows = f.tensors()
    n_vocab = int(key("vocab_size", 0)) or next((s[0] for n, _, s, _ in rows if n == "token_embd.weight"), 0)
    shape = ModelShape(
        name=path, n_layer=n_layer, n_embd=int(key("embedding_length")), n_vocab=int(n_vocab),
        n_head=int(key("attention.head_count")), head_dim=int(key("attention.key_length")),
        rope_dim=int(key("rope.dimension_count")), window=int(key("attention.sliding_window")),
        compress_ratio=tuple(ratios[:n_layer]),
        index_n_head=int(key("attention.indexer.head_count", 0)),
        index_head_dim=int(key("attention.indexer.key_length", 0)),
        index_topk=int(key("attention.indexer.top_k", 0)),
        n_expert=int(key("expert_count")), n_expert_used=int(key("expert_used_count")),
        n_ff_exp=int(key("expert_feed_forward_length")), n_ctx=int(key("context_length")),
        tensors=_table(rows, n_layer))
    why = _implausible(shape)
    if why:
        raise _core.FormatError(f"{path}: {why}")
    return shape


def _implausible(s: ModelShape) -> str | None:
    """What would make the planner's arithmetic meaningless (the engine checks far more at load)."""
    if min(s.n_layer, s.n_embd, s.n_vocab, s.head_dim, s.window, s.n_ctx, s.n_ff_exp) < 1:
        return "layer count, widths, window and context must be positive"
    if not 1 <= s.n_expert_used <= s.n_expert:
        return f"expert_used_count {s.n_expert_used} must be between 1 and expert_count {s.n_expert}"
    if not 0 < s.rope_dim <= s.head_dim or any(r < 0 or r == 1 for r in s.compress_ratio):
        return "rope dims must be in (0, key_length] and compress ratios 0 or >= 2"
    if 4 in s.compress_ratio and min(s.index_head_dim, s.index_topk) < 1:
        return "CSA layers need a positive indexer key length and top-k"
    missing = [il for il in range(s.n_layer) if s.bytes_of("experts", il) == 0]
    if missing:
        return f"layer {missing[0]} has no routed-expert tensors (ffn_*_exps)"
    return None


# ---------------------------------------------------------------------------
# Built-in shapes: the official configs (spec §1.1, §1.2)
# ---------------------------------------------------------------------------

_YARN = {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536, "beta_fast": 32, "beta_slow": 1}


def _official_config(name: str) -> dict:
    from .synthetic import V4_COMMON

    if name == "v4-flash":
        # layers 0, 1 sliding; then CSA on even, HCA on odd layers; layer 42 CSA; + MTP entry
        ratios = [0, 0] + [4 if i % 2 == 0 else 128 for i in range(2, 43)] + [0]
        size = dict(hidden_size=4096, num_hidden_layers=43, num_attention_heads=64, q_lora_rank=1024,
                    o_groups=8, index_topk=512, n_routed_experts=256, moe_intermediate_size=2048,
                    routed_scaling_factor=1.5)
    else:
        # layers 0, 1 HCA; then CSA on even, HCA on odd layers; layer 60 CSA; + MTP entry
        ratios = [128, 128] + [4 if i % 2 == 0 else 128 for i in range(2, 61)] + [0]
        size = dict(hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536,
                    o_groups=16, index_topk=1024, n_routed_experts=384, moe_intermediate_size=3072,
                    routed_scaling_factor=2.5)
    return {**V4_COMMON, **size, "head_dim": 512, "qk_rope_head_dim": 64, "o_lora_rank": 1024,
            "sliding_window": 128, "compress_ratios": ratios, "rope_scaling": _YARN,
            "max_position_embeddings": 1048576, "index_n_heads": 64, "index_head_dim": 128,
            "num_experts_per_tok": 6, "num_hash_layers": 3, "num_nextn_predict_layers": 1}


BUILTIN = ("v4-flash", "v4-pro")


def builtin(name: str, recipe: str = "mxfp4") -> ModelShape:
    """The main model of V4-Flash or V4-Pro (no MTP block) as `pyv4 convert --recipe
    RECIPE` would write it from the official checkpoint."""
    key = name.lower()
    if key not in BUILTIN:
        raise ValueError(f"unknown built-in model {name!r}; choose from {', '.join(BUILTIN)}")
    return from_config(_official_config(key), recipe, f"{key} ({recipe})")


def from_config(config: dict, recipe: str = "mxfp4", name: str = "config") -> ModelShape:
    """The shape of the file `pyv4 convert --recipe RECIPE` writes for an official
    `config` (main model): tensor types from the converter's recipe table
    (convert/recipes.py, as pyv4.synthetic applies it), sizes from GGML's blocks."""
    from .convert.config import parse_config
    from .convert.recipes import RECIPES, nbytes
    from .synthetic import tensor_layout, tensor_types

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    hp = parse_config(config, name)
    types = tensor_types(hp, recipe)
    rows = [(n, types[n].name, s, nbytes(types[n], s)) for n, s, _ in tensor_layout(hp)]
    return ModelShape(
        name=name, n_layer=hp.n_layer, n_embd=hp.n_embd, n_vocab=hp.n_vocab, n_head=hp.n_head,
        head_dim=hp.head_dim, rope_dim=hp.rope_dim, window=hp.sliding_window,
        compress_ratio=tuple(hp.compress_ratios), index_n_head=hp.index_n_heads,
        index_head_dim=hp.index_head_dim, index_topk=hp.index_topk, n_expert=hp.n_expert,
        n_expert_used=hp.n_expert_used, n_ff_exp=hp.n_ff_exp, n_ctx=hp.context_length,
        tensors=_table(rows, hp.n_layer))
