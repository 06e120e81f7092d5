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
from .convert.writer import ARCH, _add_kv, atomic_output


# Hyper-parameters every DeepSeek-V4 model shares (spec §1.1); the demo model
# and bench's wide files add their sizes to these.
V4_COMMON = {
    "model_type": "deepseek_v4",
    "vocab_size": 129280,
    "num_key_value_heads": 1,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "n_shared_experts": 1,
    "routed_scaling_factor": 1.5,
    "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True,
    "swiglu_limit": 10.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False,
}


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


# ---------------------------------------------------------------------------
# Quantized random weights, generated as GGML blocks directly (bench/make_wide.py)
# ---------------------------------------------------------------------------

# synthetic role -> (converter role, checkpoint source format): the converter's recipe
# table (convert/recipes.py) then gives exactly the type llama.cpp's converter writes.
_CONVERT_ROLE = {
    "embed": ("embed", "BF16"), "head": ("output", "BF16"), "linear": ("proj", "FP8"),
    "expert": ("experts", "FP4"), "router": ("router", "BF16"), "compressor": ("dense", "BF16"),
    "norm": ("norm", "F32"), "hc_fn": ("hc", "F32"), "hc_base": ("hc", "F32"), "hc_scale": ("hc", "F32"),
    "sink": ("sink", "F32"), "ape": ("ape", "F32"), "bias": ("bias", "F32"), "tid2eid": ("tid2eid", "INT"),
}


def tensor_types(hp: HParams, recipe: str, overrides: list[tuple[str, str]] | None = None) -> dict[str, T]:
    """GGML type of every tensor of `tensor_layout(hp)` under a converter recipe
    (mxfp4 / q4 / q8 / bf16 / f16 / f32) and --type overrides, as `pyv4 convert` would
    choose it for the official checkpoint (FP8 projections, FP4 experts, BF16
    embed/head/router/compressors)."""
    from .convert.recipes import get_recipe

    # random blocks, nothing quantized: the load-only types (IQ3_XXS, IQ1_M, ...) may be asked for
    rec = get_recipe(recipe, overrides, n_layer=hp.n_layer, load_only=True)
    out = {}
    for tname, shape, role in tensor_layout(hp):
        crole, src = _CONVERT_ROLE[role]
        if tname.endswith("indexer.proj.weight"):
            crole = "index_proj"
        out[tname] = rec.choose_type(tname, shape, crole, src)[0]
    return out


_BLOCK = {T.Q8_0: (32, 34), T.MXFP4: (32, 17), T.Q4_K: (256, 144), T.Q4_0: (32, 18), T.IQ4_NL: (32, 18),
          T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.IQ2_XXS: (256, 66), T.IQ3_XXS: (256, 98),
          T.IQ2_XS: (256, 74), T.IQ1_S: (256, 50), T.IQ1_M: (256, 56), T.IQ3_S: (256, 110),
          T.IQ2_S: (256, 82), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}
_E2M1_RMS = math.sqrt(sum(v * v for v in (0, .5, 1, 1.5, 2, 3, 4, 6)) / 8)  # uniform codes


def _weight_std(shape, role: str) -> float:
    return {"embed": 1.0, "head": 2.0 / math.sqrt(shape[-1])}.get(role, 1.0 / math.sqrt(shape[-1]))


def _random_rows(rng: np.random.Generator, rows: int, cols: int, t: T, std: float) -> np.ndarray:
    """`rows` rows of random GGML blocks of type `t` whose values have about `std`
    standard deviation and zero mean: random codes, scales set from `std`."""
    if t in (T.F32, T.F16, T.BF16):
        x = rng.standard_normal((rows, cols), dtype=np.float32)
        x *= np.float32(std)
        if t == T.F32:
            return x
        if t == T.F16:
            return x.astype(np.float16)
        return (x.view(np.uint32) >> 16).astype(np.uint16)  # truncation: fine for noise
    bs, bb = _BLOCK[t]
    nb = rows * (cols // bs)
    raw = np.frombuffer(rng.bytes(nb * bb), np.uint8).reshape(nb, bb).copy()
    jitter = rng.uniform(0.75, 1.25, nb).astype(np.float32)  # scales vary block to block
    if t == T.Q8_0:
        q = raw[:, 2:].view(np.int8)
        q[q == -128] = -127  # the quantizer's range: [-127, 127]
        d = jitter * np.float32(std / (127 / math.sqrt(3)))  # uniform int8: rms 127/sqrt(3)
        raw[:, :2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.Q4_0:
        d = jitter * np.float32(std / math.sqrt((16 * 16 - 1) / 12))
        raw[:, :2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.IQ4_NL:
        # value = d * level: uniform codes over the 16 levels, rms 67.4
        d = jitter * np.float32(std / 67.4)
        raw[:, :2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.MXFP4:
        # E8M0 exponent: 2^(e-127) * rms(e2m1 codes) ~= std, rounded up or down at random
        e = math.log2(std / _E2M1_RMS) + 127
        raw[:, 0] = (math.floor(e) + (rng.random(nb) < e - math.floor(e))).astype(np.uint8)
    elif t in (T.Q4_K, T.Q5_K):
        from .convert.quants import _pack_k_scales

        # value = d*sc*q - dmin*m with m = sc and dmin = (levels - 1) / 2 d: zero mean,
        # rms d*sc*sqrt((levels^2 - 1) / 12) (Q4_K 16 levels, Q5_K 32)
        lv = 16 if t == T.Q4_K else 32
        sc = rng.integers(40, 64, (nb, 8), dtype=np.uint8)
        d = jitter * np.float32(std / (51.5 * math.sqrt((lv * lv - 1) / 12)))
        raw[:, 0:2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
        raw[:, 2:4] = (d * ((lv - 1) / 2)).astype(np.float16).reshape(nb, 1).view(np.uint8)
        raw[:, 4:16] = _pack_k_scales(sc, sc)
    elif t == T.Q6_K:
        # value = d*sc*(q - 32): random int8 sc (rms 73.9) and 6-bit q (q - 32: mean -0.5, rms 18.5)
        d = jitter * np.float32(std / (73.9 * 18.5))
        raw[:, 208:210] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.Q2_K:
        # value = d*sc*q - dmin*m, random 4-bit sc, m and 2-bit q; dmin = 1.5 d
        # makes the mean zero, the rms is then about 13.9 d
        d = jitter * np.float32(std / 13.9)
        raw[:, 80:82] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
        raw[:, 82:84] = (d * 1.5).astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.Q3_K:
        # value = d*(sc - 32)*(q - 4): random 6-bit sc (rms 18.5) and 3-bit q (rms 2.35)
        d = jitter * np.float32(std / (18.5 * 2.35))
        raw[:, 108:110] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.IQ2_XXS:
        # value = d*(0.5 + s)/4 * grid * sign: random 4-bit s (rms 9.2), grid rms ~20
        d = jitter * np.float32(std / 46.0)
        raw[:, 0:2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t in (T.IQ3_XXS, T.IQ2_XS, T.IQ2_S):
        # value = d*(0.5 + s)*c * grid * sign: random 4-bit s (rms 9.2); IQ3_XXS c = 1/2,
        # grid rms ~31; IQ2_XS / IQ2_S c = 1/4, grid rms ~24
        d = jitter * np.float32(std / (142.0 if t == T.IQ3_XXS else 56.0))
        raw[:, 0:2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.IQ3_S:
        # value = d*(1 + 2s) * grid * sign: random 4-bit s (rms 18.5), grid rms ~7.6
        d = jitter * np.float32(std / 140.0)
        raw[:, 0:2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.IQ1_S:
        # value = d*(2s + 1) * (grid +- 1/8): random 3-bit s (rms 9.2), grid +- 1/8 rms ~0.78
        d = jitter * np.float32(std / 7.2)
        raw[:, 0:2] = d.astype(np.float16).reshape(nb, 1).view(np.uint8)
    elif t == T.IQ1_M:
        # as IQ1_S per 16-element sub-block; d's f16 bits are the top nibbles of the 4
        # scale words (bytes 48..55), word i's holding bits 4i..4i+3
        h = (jitter * np.float32(std / 7.2)).astype(np.float16).view(np.uint16)
        w = raw[:, 48:56].copy().view(np.uint16)
        for i in range(4):
            w[:, i] = (w[:, i] & 0x0FFF) | (((h >> (4 * i)) & 15) << 12)
        raw[:, 48:56] = w.view(np.uint8)
    return raw.reshape(rows, -1)


def random_blocks(rng: np.random.Generator, shape, role: str, hp: HParams, t: T,
                  chunk_bytes: int = 64 << 20):
    """Yields the raw bytes of one random tensor of GGML type `t`, in chunks of whole
    rows of about `chunk_bytes` (the embedding alone is 1 GB in BF16)."""
    if len(shape) < 2 or role in ("tid2eid", "norm", "hc_fn", "hc_base", "hc_scale", "sink", "ape", "bias"):
        a = random_tensor(rng, shape, role, hp)
        yield a if t in (T.F32, T.I32) else _float_as(a, t)
        return
    cols = shape[-1]
    rows = int(np.prod(shape[:-1]))
    std = _weight_std(shape, role)
    from .convert.quants import row_bytes

    step = max(1, chunk_bytes // row_bytes(t, cols))
    for r0 in range(0, rows, step):
        yield _random_rows(rng, min(step, rows - r0), cols, t, std)


def _float_as(a: np.ndarray, t: T) -> np.ndarray:
    from .convert.recipes import encode

    return encode(a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1), t)


def write_random_gguf_typed(path: str | os.PathLike, config: dict, tokenizer_dir: str | os.PathLike | None,
                            recipe: str = "mxfp4", seed: int = 0, name: str = "pyv4-random",
                            progress=None, overrides: list[tuple[str, str]] | None = None) -> Path:
    """Streams a random-weight model in a converter recipe's tensor types (with
    `pyv4 convert --type PATTERN=TYPE` overrides), tensor by tensor (peak memory:
    one chunk), atomically. Quantized tensors are random GGML blocks, not
    quantized floats."""
    from .convert.recipes import RECIPES, nbytes
    from .convert.writer import OutTensor, verify_gguf

    hp = parse_config(config, "synthetic config")
    path = Path(path)
    rng = np.random.default_rng(seed)
    kvs = model_metadata(hp, 0, name, RECIPES[recipe])
    if tokenizer_dir is not None:
        kvs += tokenizer_metadata(tokenizer_dir, hp.n_vocab, hp.bos_token_id, hp.eos_token_id).entries
    types = tensor_types(hp, recipe, overrides)
    layout = tensor_layout(hp)
    with atomic_output(path) as tmp:
        w = GGUFWriter(None, arch=ARCH)
        try:
            for kv in kvs:
                _add_kv(w, kv)
            for tname, shape, _ in layout:
                w.add_tensor_info(tname, shape, np.dtype(np.float32), nbytes(types[tname], shape),
                                  raw_dtype=types[tname])
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            f = w.fout[0]
            w.write_padding(f, f.tell())
            for i, (tname, shape, role) in enumerate(layout):
                want, done = nbytes(types[tname], shape), 0
                for chunk in random_blocks(rng, shape, role, hp, types[tname]):
                    chunk = np.ascontiguousarray(chunk)
                    done += chunk.nbytes
                    f.write(memoryview(chunk).cast("B"))
                if done != want:
                    raise RuntimeError(f"{tname}: wrote {done} bytes, expected {want}")
                w.write_padding(f, want)
                if progress is not None:
                    progress(i + 1, len(layout), tname, want)
        finally:
            w.close()
        verify_gguf(tmp, [OutTensor(n, s, types[n], r, lambda: ()) for n, s, r in layout])
    return path


def write_random_gguf(path: str | os.PathLike, config: dict, tokenizer_dir: str | os.PathLike | None,
                      seed: int = 0, matrix_type: T = T.F16, name: str = "pyv4-random") -> Path:
    """Writes a random-weight model for an official-style `config` dict, atomically."""
    hp = parse_config(config, "synthetic config")
    path = Path(path)
    rng = np.random.default_rng(seed)
    kvs = model_metadata(hp, 0, name, 1 if matrix_type == T.F16 else 0)
    if tokenizer_dir is not None:
        kvs += tokenizer_metadata(tokenizer_dir, hp.n_vocab, hp.bos_token_id, hp.eos_token_id).entries
    with atomic_output(path) as tmp:
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
        finally:
            w.close()
    return path
