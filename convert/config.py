"""Read a DeepSeek-V4 ``config.json`` into one normalised hyper-parameter set.

Two spellings of the same model exist:

* transformers (``save_pretrained`` of ``DeepseekV4ForCausalLM``): ``layer_types`` +
  ``compress_rates``, ``mlp_layer_types``, ``partial_rotary_factor`` and
  ``rope_parameters = {"main": {...}, "compress": {...}}``;
* the official / legacy checkpoint: ``compress_ratios`` (one entry per layer plus one
  per MTP block), ``num_hash_layers``, ``qk_rope_head_dim`` and ``rope_scaling``.

When a field is absent, the value transformers' ``DeepseekV4Config`` would use is
taken, so a folder converts to the same model transformers would build from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConvertError

SLIDING = "sliding_attention"
CSA = "compressed_sparse_attention"
HCA = "heavily_compressed_attention"

# Defaults of transformers' DeepseekV4Config for fields a config may omit.
_DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": 1,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.5,
    "max_position_embeddings": 1048576,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1.0e-6,
    "swiglu_limit": 10.0,
    "rms_norm_eps": 1.0e-6,
    "num_nextn_predict_layers": 1,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
}

_REQUIRED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
    "q_lora_rank", "o_groups", "o_lora_rank", "sliding_window", "moe_intermediate_size",
    "n_routed_experts", "num_experts_per_tok", "index_n_heads", "index_head_dim", "index_topk",
)


@dataclass
class RopeScaling:
    """YaRN parameters of the compressed-layer rope (sliding layers use plain rope)."""
    type: str
    factor: float
    original_context_length: int
    beta_fast: float
    beta_slow: float


@dataclass
class HParams:
    """Normalised DeepSeek-V4 hyper-parameters (names follow the official code where it has one)."""
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    sliding_window: int
    compress_ratios: list[int]          # one per main layer (0 = sliding only)
    n_nextn: int                        # MTP blocks declared by the config
    rope_theta: float
    compress_rope_theta: float
    rope_scaling: RopeScaling | None    # applies to compressed layers only
    context_length: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    expert_weights_scale: float
    scoring_func: str
    norm_topk_prob: bool
    n_hash_layers: int
    swiglu_limit: float
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    rms_eps: float
    bos_token_id: int | None
    eos_token_id: int | None
    tie_word_embeddings: bool
    style: str                          # "transformers" or "official"
    warnings: list[str] = field(default_factory=list)

    def layer_ratio(self, layer: int) -> int:
        """Compression ratio of a layer index; MTP blocks (index >= n_layer) are sliding-only."""
        return self.compress_ratios[layer] if layer < self.n_layer else 0

    @property
    def hc_mix(self) -> int:
        return (2 + self.hc_mult) * self.hc_mult


def _num(cfg: dict, key: str, path: Path, kind=int):
    val = cfg.get(key, _DEFAULTS.get(key))
    if val is None:
        raise ConvertError(f"{path}: config.json lacks required key {key!r}")
    try:
        if kind is bool:
            return bool(val)
        if kind is int:
            if isinstance(val, bool) or float(val) != int(val):
                raise ValueError
            return int(val)
        return float(val)
    except (TypeError, ValueError):
        raise ConvertError(f"{path}: config.json key {key!r} has invalid value {val!r}") from None


def _token_id(val) -> int | None:
    if isinstance(val, list):
        val = val[0] if val else None
    return None if val is None else int(val)


def _rope(cfg: dict, path: Path) -> tuple[float, float, RopeScaling | None]:
    """Return (main theta, compress theta, YaRN of the compress rope)."""
    theta = _num(cfg, "rope_theta", path, float)
    ctheta = _num(cfg, "compress_rope_theta", path, float)
    scaling: dict | None = None
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict):
        theta = float(rp["main"].get("rope_theta", theta))
        ctheta = float(rp["compress"].get("rope_theta", ctheta))
        scaling = rp["compress"]
    elif isinstance(rp, dict) and rp:
        scaling = rp  # flat form: the scaling keys belong to the compress rope
    if scaling is None or (scaling.get("rope_type") or scaling.get("type")) in (None, "default"):
        legacy = cfg.get("rope_scaling")
        if isinstance(legacy, dict) and legacy:
            scaling = legacy
    if not scaling:
        return theta, ctheta, None
    rtype = scaling.get("rope_type") or scaling.get("type") or "default"
    if rtype == "default":
        return theta, ctheta, None
    if rtype != "yarn":
        raise ConvertError(f"{path}: unsupported rope scaling type {rtype!r} (DeepSeek-V4 uses yarn)")
    try:
        rs = RopeScaling(
            type="yarn",
            factor=float(scaling["factor"]),
            original_context_length=int(scaling["original_max_position_embeddings"]),
            beta_fast=float(scaling.get("beta_fast", 32.0)),
            beta_slow=float(scaling.get("beta_slow", 1.0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{path}: incomplete yarn rope scaling {scaling!r} ({e})") from None
    return theta, ctheta, rs


def _ratios(cfg: dict, n_layer: int, path: Path) -> tuple[list[int], str]:
    if cfg.get("layer_types") is not None:
        types = list(cfg["layer_types"])
        rates = dict(cfg.get("compress_rates") or {CSA: 4, HCA: 128})
        # legacy scalar overrides, as transformers folds them
        if cfg.get("compress_rate_csa") is not None:
            rates[CSA] = cfg["compress_rate_csa"]
        if cfg.get("compress_rate_hca") is not None:
            rates[HCA] = cfg["compress_rate_hca"]
        if CSA in types and int(rates.get(CSA, 4)) != 4:
            raise ConvertError(f"{path}: compress rate of {CSA} must be 4 (the GGUF layout keys the indexer on ratio 4)")
        if HCA in types and int(rates.get(HCA, 128)) == 4:
            raise ConvertError(f"{path}: compress rate of {HCA} must differ from 4")
        if len(types) < n_layer:
            raise ConvertError(f"{path}: layer_types has {len(types)} entries, expected {n_layer}")
        out = []
        for i, t in enumerate(types[:n_layer]):
            if t == SLIDING:
                out.append(0)
            elif t in (CSA, HCA):
                if t not in rates:
                    raise ConvertError(f"{path}: compress_rates lacks {t!r}")
                out.append(int(rates[t]))
            else:
                raise ConvertError(f"{path}: layer_types[{i}] = {t!r} is not a DeepSeek-V4 layer type")
        return out, "transformers"
    if cfg.get("compress_ratios") is not None:
        ratios = [int(r) for r in cfg["compress_ratios"]]
        if len(ratios) < n_layer:
            raise ConvertError(f"{path}: compress_ratios has {len(ratios)} entries, expected >= {n_layer}")
        return ratios[:n_layer], "official"
    raise ConvertError(f"{path}: config.json has neither layer_types nor compress_ratios")


def _hash_layers(cfg: dict, n_layer: int, path: Path) -> int:
    mlp = cfg.get("mlp_layer_types")
    if mlp is not None:
        mlp = list(mlp)[:n_layer]
        bad = [t for t in mlp if t not in ("hash_moe", "moe")]
        if bad:
            raise ConvertError(f"{path}: mlp_layer_types has unknown entries {bad}")
        n_hash = sum(1 for t in mlp if t == "hash_moe")
        if mlp[:n_hash] != ["hash_moe"] * n_hash:
            raise ConvertError(f"{path}: hash_moe layers must come first in mlp_layer_types (GGUF stores a count)")
        return n_hash
    n_hash = cfg.get("num_hash_layers", cfg.get("n_hash_layers", 3))
    return min(int(n_hash), n_layer)


def parse_config(cfg: dict, path: Path | str = "config.json") -> HParams:
    """Normalise a loaded config dict (``path`` is only used in messages)."""
    path = Path(path)
    mt = cfg.get("model_type")
    if mt != "deepseek_v4":
        raise ConvertError(f"{path}: model_type is {mt!r}, expected 'deepseek_v4' (not a DeepSeek-V4 model)")
    for key in _REQUIRED:
        if key not in cfg:
            raise ConvertError(f"{path}: config.json lacks required key {key!r}")
    n_layer = _num(cfg, "num_hidden_layers", path)
    head_dim = _num(cfg, "head_dim", path)
    if cfg.get("qk_rope_head_dim") is not None:
        rope_dim = _num(cfg, "qk_rope_head_dim", path)
    else:
        prf = cfg.get("partial_rotary_factor")
        if prf is None and isinstance(cfg.get("rope_parameters"), dict):
            prf = (cfg["rope_parameters"].get("main") or {}).get("partial_rotary_factor")
        rope_dim = int(head_dim * float(prf if prf is not None else 64 / 512))
    ratios, style = _ratios(cfg, n_layer, path)
    theta, ctheta, scaling = _rope(cfg, path)

    hp = HParams(
        n_vocab=_num(cfg, "vocab_size", path),
        n_embd=_num(cfg, "hidden_size", path),
        n_layer=n_layer,
        n_head=_num(cfg, "num_attention_heads", path),
        n_head_kv=_num(cfg, "num_key_value_heads", path),
        head_dim=head_dim,
        rope_dim=rope_dim,
        q_lora_rank=_num(cfg, "q_lora_rank", path),
        o_groups=_num(cfg, "o_groups", path),
        o_lora_rank=_num(cfg, "o_lora_rank", path),
        sliding_window=_num(cfg, "sliding_window", path),
        compress_ratios=ratios,
        n_nextn=_num(cfg, "num_nextn_predict_layers", path),
        rope_theta=theta,
        compress_rope_theta=ctheta,
        rope_scaling=scaling,
        context_length=_num(cfg, "max_position_embeddings", path),
        index_n_heads=_num(cfg, "index_n_heads", path),
        index_head_dim=_num(cfg, "index_head_dim", path),
        index_topk=_num(cfg, "index_topk", path),
        n_expert=_num(cfg, "n_routed_experts", path),
        n_expert_used=_num(cfg, "num_experts_per_tok", path),
        n_expert_shared=_num(cfg, "n_shared_experts", path),
        n_ff_exp=_num(cfg, "moe_intermediate_size", path),
        expert_weights_scale=_num(cfg, "routed_scaling_factor", path, float),
        scoring_func=str(cfg.get("scoring_func", _DEFAULTS["scoring_func"])),
        norm_topk_prob=_num(cfg, "norm_topk_prob", path, bool),
        n_hash_layers=_hash_layers(cfg, n_layer, path),
        swiglu_limit=_num(cfg, "swiglu_limit", path, float),
        hc_mult=_num(cfg, "hc_mult", path),
        hc_sinkhorn_iters=_num(cfg, "hc_sinkhorn_iters", path),
        hc_eps=_num(cfg, "hc_eps", path, float),
        rms_eps=_num(cfg, "rms_norm_eps", path, float),
        bos_token_id=_token_id(cfg.get("bos_token_id", _DEFAULTS["bos_token_id"])),
        eos_token_id=_token_id(cfg.get("eos_token_id", _DEFAULTS["eos_token_id"])),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        style=style,
    )
    _check(hp, path)
    return hp


def _check(hp: HParams, path: Path) -> None:
    if hp.scoring_func != "sqrtsoftplus":
        raise ConvertError(f"{path}: scoring_func {hp.scoring_func!r} is not supported (DeepSeek-V4 uses sqrtsoftplus)")
    if hp.tie_word_embeddings:
        raise ConvertError(f"{path}: tie_word_embeddings=true is not supported (DeepSeek-V4 has a separate head)")
    if hp.n_head_kv != 1:
        raise ConvertError(f"{path}: num_key_value_heads must be 1 for DeepSeek-V4, got {hp.n_head_kv}")
    if hp.n_head % hp.o_groups != 0:
        raise ConvertError(f"{path}: num_attention_heads {hp.n_head} is not divisible by o_groups {hp.o_groups}")
    if not 0 < hp.rope_dim <= hp.head_dim or hp.rope_dim % 2:
        raise ConvertError(f"{path}: rope dims {hp.rope_dim} invalid for head_dim {hp.head_dim}")
    if hp.index_head_dim < hp.rope_dim:
        raise ConvertError(f"{path}: index_head_dim {hp.index_head_dim} < rope dims {hp.rope_dim}")
    if not 0 < hp.n_expert_used <= hp.n_expert:
        raise ConvertError(f"{path}: num_experts_per_tok {hp.n_expert_used} invalid for {hp.n_expert} experts")
    if hp.n_nextn < 0:
        raise ConvertError(f"{path}: num_nextn_predict_layers must be >= 0")
    for i, r in enumerate(hp.compress_ratios):
        if r == 0:
            continue
        if r < 2:
            raise ConvertError(f"{path}: layer {i} has invalid compression ratio {r}")
    if hp.hc_mult != 4:
        hp.warnings.append(f"hc_mult = {hp.hc_mult}; llama.cpp's deepseek4 loader assumes 4")
    odd = sorted({r for r in hp.compress_ratios if r not in (0, 4, 128)})
    if odd:
        hp.warnings.append(f"compression ratios {odd}: llama.cpp's deepseek4 loader only accepts 0, 4 and 128")
    if hp.head_dim % 64 or hp.index_head_dim % 64:
        hp.warnings.append("head dims not a multiple of 64: llama.cpp's deepseek4 loader may reject this file")
    if not math.isfinite(hp.expert_weights_scale):
        raise ConvertError(f"{path}: routed_scaling_factor is not finite")


def load_config(src_dir: Path | str) -> HParams:
    """Read ``SRC_DIR/config.json`` and normalise it; raises ``ConvertError``."""
    path = Path(src_dir) / "config.json"
    if not path.is_file():
        raise ConvertError(f"{path}: no config.json in the source folder")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path}: config.json is not a JSON object")
    return parse_config(cfg, path)
