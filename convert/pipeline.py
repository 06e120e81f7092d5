"""``convert()``: config + checkpoint + tokenizer -> one llama.cpp-compatible ``deepseek4`` GGUF."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from .config import HParams, load_config
from .errors import ConvertError
from .imatrix import HOWTO, load_imatrix, matrix_weights
from .names import Plan, PlanTensor, build_plan
from .recipes import DEFAULT_RECIPE, LOWBIT, Recipe, get_recipe
from .source import Source
from .tokenizer import KV, tokenizer_metadata
from .writer import ARCH, OutTensor, write_gguf_logged

GATING_SQRTSOFTPLUS = 4  # llama.cpp ExpertGatingFuncType.SQRTSOFTPLUS


@dataclass
class ConvertResult:
    out: Path
    n_tensors: int
    n_mtp: int
    types: dict[str, GGMLQuantizationType]
    notes: list[str] = field(default_factory=list)


def model_metadata(hp: HParams, n_mtp: int, name: str, file_type: int) -> list[KV]:
    """The ``general.*`` and ``deepseek4.*`` keys, as llama.cpp's converter writes them."""
    a = ARCH
    n_blocks = hp.n_layer + n_mtp
    # one entry per main layer plus one per MTP block the config declares (the MTP block
    # is sliding-only); always at least block_count entries, as llama.cpp requires
    ratios = list(hp.compress_ratios) + [0] * max(hp.n_nextn, n_mtp)
    kv = [
        KV("general.name", "string", name),
        KV("general.file_type", "uint32", file_type),
        KV("general.quantization_version", "uint32", 2),
        KV(f"{a}.vocab_size", "uint32", hp.n_vocab),
        KV(f"{a}.block_count", "uint32", n_blocks),
        KV(f"{a}.context_length", "uint32", hp.context_length),
        KV(f"{a}.embedding_length", "uint32", hp.n_embd),
        KV(f"{a}.embedding_length_out", "uint32", hp.n_embd * hp.hc_mult),
        KV(f"{a}.attention.head_count", "uint32", hp.n_head),
        KV(f"{a}.attention.head_count_kv", "uint32", hp.n_head_kv),
        KV(f"{a}.attention.key_length", "uint32", hp.head_dim),
        KV(f"{a}.attention.value_length", "uint32", hp.head_dim),
        KV(f"{a}.attention.layer_norm_rms_epsilon", "float32", hp.rms_eps),
        KV(f"{a}.attention.q_lora_rank", "uint32", hp.q_lora_rank),
        KV(f"{a}.attention.sliding_window", "uint32", hp.sliding_window),
        KV(f"{a}.attention.output_group_count", "uint32", hp.o_groups),
        KV(f"{a}.attention.output_lora_rank", "uint32", hp.o_lora_rank),
        KV(f"{a}.attention.compress_ratios", "array", [int(r) for r in ratios]),
        KV(f"{a}.attention.compress_rope_freq_base", "float32", hp.compress_rope_theta),
        KV(f"{a}.attention.indexer.head_count", "uint32", hp.index_n_heads),
        KV(f"{a}.attention.indexer.key_length", "uint32", hp.index_head_dim),
        KV(f"{a}.attention.indexer.top_k", "uint32", hp.index_topk),
        KV(f"{a}.rope.freq_base", "float32", hp.rope_theta),
        KV(f"{a}.rope.dimension_count", "uint32", hp.rope_dim),
    ]
    if hp.rope_scaling is not None:
        rs = hp.rope_scaling
        kv += [
            KV(f"{a}.rope.scaling.type", "string", rs.type),
            KV(f"{a}.rope.scaling.factor", "float32", rs.factor),
            KV(f"{a}.rope.scaling.original_context_length", "uint32", rs.original_context_length),
            KV(f"{a}.rope.scaling.yarn_beta_fast", "float32", rs.beta_fast),
            KV(f"{a}.rope.scaling.yarn_beta_slow", "float32", rs.beta_slow),
        ]
    kv += [
        KV(f"{a}.expert_count", "uint32", hp.n_expert),
        KV(f"{a}.expert_used_count", "uint32", hp.n_expert_used),
        KV(f"{a}.expert_feed_forward_length", "uint32", hp.n_ff_exp),
        KV(f"{a}.expert_shared_count", "uint32", hp.n_expert_shared),
        KV(f"{a}.expert_weights_scale", "float32", hp.expert_weights_scale),
        KV(f"{a}.expert_weights_norm", "bool", hp.norm_topk_prob),
        KV(f"{a}.expert_gating_func", "uint32", GATING_SQRTSOFTPLUS),
        KV(f"{a}.swiglu_clamp_exp", "array", [float(hp.swiglu_limit)] * n_blocks),
        KV(f"{a}.swiglu_clamp_shexp", "array", [float(hp.swiglu_limit)] * n_blocks),
        KV(f"{a}.hash_layer_count", "uint32", hp.n_hash_layers),
        KV(f"{a}.hyper_connection.count", "uint32", hp.hc_mult),
        KV(f"{a}.hyper_connection.sinkhorn_iterations", "uint32", hp.hc_sinkhorn_iters),
        KV(f"{a}.hyper_connection.epsilon", "float32", hp.hc_eps),
    ]
    if n_mtp > 0:
        kv.append(KV(f"{a}.nextn_predict_layers", "uint32", n_mtp))
    return kv


def _tid2eid_check(n_expert: int, name: str):
    def check(chunk) -> None:
        lo, hi = int(np.min(chunk)), int(np.max(chunk))
        if lo < 0 or hi >= n_expert:
            raise ConvertError(f"hash table {name} holds expert ids in [{lo}, {hi}], outside [0, {n_expert})")
    return check


def _kv_from_tensor(pt: PlanTensor, source: Source) -> list[KV]:
    """A small tensor stored as metadata (the MTP hc head): float32 array (+ shape for 2-D)."""
    data = np.concatenate([np.asarray(c, dtype=np.float32).reshape(-1) for c in pt.read(source)])
    out = [KV(pt.name, "array", [float(v) for v in data])]
    if len(pt.shape) > 1:
        out.append(KV(pt.name + "_shape", "array", [int(x) for x in pt.shape]))
    return out


def _fallback_notes(fallbacks: dict[tuple[str, str], list[str]]) -> list[str]:
    notes = []
    for (want, got), names in fallbacks.items():
        ex = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
        notes.append(f"{want} does not fit the row length of {ex}: wrote {got} instead")
    return notes


def choose_types(rec: Recipe, tensors: list[tuple[str, tuple[int, ...], str, str]]
                 ) -> tuple[dict[str, GGMLQuantizationType], list[str]]:
    """GGML type of every (name, shape, role, source kind) under ``rec``, and notes on the
    fallbacks taken (convert's plan, requantize's input file)."""
    types: dict[str, GGMLQuantizationType] = {}
    fallbacks: dict[tuple[str, str], list[str]] = {}
    for name, shape, role, src in tensors:
        t, wanted = rec.choose_type(name, shape, role, src)
        types[name] = t
        if wanted is not None:
            fallbacks.setdefault((wanted.name, t.name), []).append(name)
    return types, _fallback_notes(fallbacks)


def importance(shapes: dict[str, tuple[int, ...]], types: dict[str, GGMLQuantizationType],
               path: Path | str | None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Importance vectors of the low-bit tensors (by name, of these shapes) from the
    imatrix file, and notes. IQ2_XXS without one is refused (unusable unweighted at 2 bits)."""
    low = [name for name in shapes if types[name] in LOWBIT]
    need = [name for name in low if types[name] == GGMLQuantizationType.IQ2_XXS]
    if path is None:
        if need:
            raise ConvertError(f"IQ2_XXS ({len(need)} tensors, e.g. {need[0]}) needs an importance "
                               f"matrix: --imatrix FILE; {HOWTO}")
        return {}, ([f"{len(low)} low-bit tensors quantized without an importance matrix "
                     "(--imatrix FILE weighs the error by how much each input column matters)"]
                    if low else [])
    entries = load_imatrix(path)
    out, missing = {}, []
    for name in low:
        v = matrix_weights(entries, name, shapes[name])
        if v is None:
            missing.append(name)
        else:
            out[name] = v
    lacking = [n for n in missing if types[n] == GGMLQuantizationType.IQ2_XXS]
    if lacking:
        raise ConvertError(f"{path}: no imatrix entry for {lacking[0]} (IQ2_XXS needs one; "
                           f"{len(lacking)} such tensors lack it): was the file made for this model?")
    notes = [f"imatrix {Path(path).name}: {len(out)} of {len(low)} low-bit tensors weighted"]
    if missing:
        notes.append(f"no imatrix entry for {len(missing)} low-bit tensors (e.g. {missing[0]}): "
                     "quantized unweighted")
    return out, notes


def convert(src_dir: Path | str, out: Path | str, recipe: str = DEFAULT_RECIPE, *, mtp: str = "auto",
            overrides: list[tuple[str, str]] | None = None, imatrix: Path | str | None = None,
            progress: Callable[..., None] | None = None,
            log: Callable[[str], None] | None = None) -> ConvertResult:
    """Convert a DeepSeek-V4 safetensors folder (official or transformers layout) to GGUF.

    Everything is validated before the output is opened; the output appears only when
    complete and re-checked. Raises ``ConvertError`` for bad input.
    ``progress(i, n, name, nbytes)`` is called once with ``i = 0`` and the total output
    bytes before writing, then after each tensor with that tensor's bytes.
    ``imatrix``: an importance matrix file (convert/imatrix.py) for the low-bit types.
    """
    src = Path(src_dir)
    out = Path(out)
    if not src.is_dir():
        raise ConvertError(f"{src}: source folder does not exist")
    hp = load_config(src)
    rec = get_recipe(recipe, overrides, n_layer=hp.n_layer)
    source = Source(src)
    try:
        plan: Plan = build_plan(hp, source, mtp=mtp)
        tok = tokenizer_metadata(src, hp.n_vocab, hp.bos_token_id, hp.eos_token_id)
        shapes = {pt.name: pt.shape for pt in plan.tensors if pt.role != "kv"}
        types, fb_notes = choose_types(rec, [(pt.name, pt.shape, pt.role, pt.src_kind)
                                             for pt in plan.tensors if pt.role != "kv"])
        weights, im_notes = importance(shapes, types, imatrix)
        notes = list(hp.warnings) + list(plan.notes) + fb_notes + im_notes
        if tok.note:
            notes.append(tok.note)
        kvs = model_metadata(hp, plan.n_mtp, src.resolve().name, rec.file_type)
        tensors: list[OutTensor] = []
        for pt in plan.tensors:
            if pt.role == "kv":
                kvs += _kv_from_tensor(pt, source)
                continue
            check = _tid2eid_check(hp.n_expert, pt.sources[0]) if pt.role == "tid2eid" else None
            tensors.append(OutTensor(pt.name, pt.shape, types[pt.name], pt.role,
                                     (lambda r=pt.read: r(source)), check, weights.get(pt.name)))
        kvs += tok.entries
        write_gguf_logged(out, kvs, tensors, notes, log, progress)
    finally:
        source.close()
    return ConvertResult(out=out, n_tensors=len(tensors), n_mtp=plan.n_mtp, types=types, notes=notes)
