"""Tiny checkpoints in the exact official DeepSeek-V4 layout (FP8 / FP4 / BF16 / F32), plus the
reference model that runs their dequantized weights, and GGUF -> transformers loading.

A fixture builder, not a test file. Quantisation follows spec §5.3 / §5.2:

* FP8 e4m3 (``F8_E4M3``) with 128x128 UE8M0 block scales (``F8_E8M0`` ``.scale``): attention
  ``wq_a, wq_b, wkv, wo_a, wo_b``, indexer ``wq_b``, the shared experts, MTP ``e_proj/h_proj``;
  scale = 2^ceil(log2(amax / 448)) per block, values rounded to nearest e4m3.
* FP4 e2m1 routed experts: ``I8`` [out, in/2] (element 2j in the low nibble), ``F8_E8M0``
  [out, in/32]; scale = 2^ceil(log2(amax / 6)) per 1x32 block, nearest e2m1 code.
* BF16: embed, head, norms, router, compressor / indexer-compressor ``wkv/wgate``, indexer
  ``weights_proj``. F32: mHC, ``ape``, sinks, ``gate.bias``, hc head. I64: ``tid2eid``.

``OFFICIAL_CONFIG`` is a tiny config that follows spec §8.2's rules for running the official
code with FP8/FP4 weights (head_dim - rope = 64, every GEMM input dim a multiple of 128,
index_head_dim a power of two >= rope) and loads in llama.cpp (head dims multiples of 64,
ratios 0/4/128). ``build_official(dir, seed)`` writes config.json, 2 shards + index, a
random MTP block, tokenizer.json + tokenizer_config.json, and returns the transformers model
whose weights are exactly the dequantized checkpoint.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

import tiny_models as tm

SLIDING, CSA, HCA = tm.SLIDING, tm.CSA, tm.HCA


def official_kwargs() -> dict:
    kw = tm._base_kwargs()
    kw.update(
        hidden_size=256,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        head_dim=128,
        partial_rotary_factor=0.5,   # rope 64, nope 64
        q_lora_rank=128,
        o_groups=2,
        o_lora_rank=64,
        layer_types=[SLIDING, CSA, HCA, CSA],
        mlp_layer_types=["hash_moe"] * 2 + ["moe"] * 2,
        index_head_dim=64,
    )
    return kw


def build_model(seed: int):
    """The transformers model (float32, O(1) random weights) behind the official fixture."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    cfg = DeepseekV4Config(**official_kwargs())
    torch.manual_seed(int(seed))
    model = DeepseekV4ForCausalLM(cfg).to(torch.float32)
    try:
        model.set_experts_implementation("eager")
    except Exception:  # pragma: no cover
        pass
    tm._randomise(model, seed)
    model.eval()
    return model


# ---------------------------------------------------------------------------
# quantisers (torch; the converter's decoders are numpy, so this is independent)
# ---------------------------------------------------------------------------

E2M1 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])

FP8_SUFFIXES = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight",
                "attn.wo_b.weight", "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight",
                "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight",
                "e_proj.weight", "h_proj.weight")


def quant_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(e4m3 weight, E8M0 scale [ceil(o/128), ceil(i/128)], dequantized float32)."""
    o, i = w.shape
    bo, bi = math.ceil(o / 128), math.ceil(i / 128)
    pad = torch.zeros(bo * 128, bi * 128)
    pad[:o, :i] = w
    blocks = pad.reshape(bo, 128, bi, 128)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-4)
    e = torch.ceil(torch.log2(amax / 448)).clamp(-127, 127)
    s = torch.exp2(e)
    q = (blocks / s[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    deq = (q.to(torch.float32) * s[:, None, :, None]).reshape(bo * 128, bi * 128)[:o, :i]
    q = q.reshape(bo * 128, bi * 128)[:o, :i].contiguous()
    scale = (e + 127).to(torch.uint8).view(torch.float8_e8m0fnu)
    return q, scale, deq.contiguous()


def quant_fp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(I8 packed codes [o, i/2], E8M0 scale [o, i/32], dequantized float32)."""
    o, i = w.shape
    b = w.reshape(o, i // 32, 32)
    amax = b.abs().amax(-1).clamp_min(6 * 2.0 ** -126)
    e = torch.ceil(torch.log2(amax / 6)).clamp(-127, 127)
    s = torch.exp2(e)
    y = (b / s[..., None]).clamp(-6, 6)
    code = (y[..., None] - E2M1).abs().argmin(-1).to(torch.uint8)  # nearest e2m1 (+0 before -0)
    code = code.reshape(o, i)
    deq = (E2M1[code.long()].reshape(o, i // 32, 32) * s[..., None]).reshape(o, i)
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).view(torch.int8)
    scale = (e + 127).to(torch.uint8).view(torch.float8_e8m0fnu)
    return packed.contiguous(), scale, deq


def _is_bf16(name: str) -> bool:
    return not re.search(r"(hc_|attn_sink|\.ape$|gate\.bias$|tid2eid)", name)


def quantize_official(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official-name float tensors -> (checkpoint tensors, dequantized float32 values)."""
    ckpt: dict[str, torch.Tensor] = {}
    deq: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name.endswith("tid2eid"):
            ckpt[name] = t.to(torch.int64)
            deq[name] = t.to(torch.int64)
        elif re.search(r"ffn\.experts\.\d+\.w[123]\.weight$", name):
            q, s, d = quant_fp4(t.float())
            ckpt[name], ckpt[name[:-len("weight")] + "scale"], deq[name] = q, s, d
        elif name.endswith(FP8_SUFFIXES):
            q, s, d = quant_fp8(t.float())
            ckpt[name], ckpt[name[:-len("weight")] + "scale"], deq[name] = q, s, d
        elif _is_bf16(name):
            ckpt[name] = t.to(torch.bfloat16).contiguous()
            deq[name] = ckpt[name].to(torch.float32)
        else:
            ckpt[name] = t.to(torch.float32).contiguous()
            deq[name] = ckpt[name]
    return ckpt, deq


def _mtp_block(official: dict[str, torch.Tensor], cfg, seed: int) -> dict[str, torch.Tensor]:
    """A random MTP block (ratio 0, score-routed, with gate.bias) at O(1) scale."""
    g = torch.Generator().manual_seed(1000 + seed)
    D = cfg.hidden_size
    out = {}
    for k, v in official.items():
        m = re.match(r"layers\.0\.(.+)$", k)
        if m is None or "tid2eid" in k or "compressor" in k or "indexer" in k:
            continue
        out[f"mtp.0.{m.group(1)}"] = (v.float() + 0.1 * torch.randn(v.shape, generator=g) * v.float().std())
    out["mtp.0.ffn.gate.bias"] = 0.5 * torch.randn(cfg.n_routed_experts, generator=g)
    for k in ("e_proj", "h_proj"):
        out[f"mtp.0.{k}.weight"] = torch.randn(D, D, generator=g) / math.sqrt(D)
    for k in ("enorm", "hnorm", "norm"):
        out[f"mtp.0.{k}.weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    out["mtp.0.hc_head_fn"] = torch.randn(4, 4 * D, generator=g) / math.sqrt(4 * D)
    out["mtp.0.hc_head_base"] = torch.randn(4, generator=g)
    out["mtp.0.hc_head_scale"] = 1 + 0.5 * torch.rand(1, generator=g)
    return out


def hf_state_from_official(model, official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-name tensors -> the model's own state-dict names (experts stacked)."""
    out: dict[str, torch.Tensor] = {}
    for hf_name, cur in model.state_dict().items():
        if hf_name.endswith("inv_freq"):
            continue
        if hf_name in tm._HF_TO_OFFICIAL_ROOT:
            out[hf_name] = official[tm._HF_TO_OFFICIAL_ROOT[hf_name]]
            continue
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", hf_name)
        layer, rest = int(m.group(1)), m.group(2)
        p = f"layers.{layer}."
        if rest == "mlp.experts.gate_up_proj":
            out[hf_name] = torch.stack([torch.cat((official[f"{p}ffn.experts.{e}.w1.weight"],
                                                   official[f"{p}ffn.experts.{e}.w3.weight"]))
                                        for e in range(cur.shape[0])])
            continue
        if rest == "mlp.experts.down_proj":
            out[hf_name] = torch.stack([official[f"{p}ffn.experts.{e}.w2.weight"] for e in range(cur.shape[0])])
            continue
        for pat, rep in tm._HF_TO_OFFICIAL_LAYER:
            if re.match(pat, rest):
                out[hf_name] = official[p + re.sub(pat, rep, rest)]
                break
        else:
            raise RuntimeError(f"unmapped {hf_name}")
    return out


def load_state(model, hf_state: dict[str, torch.Tensor]):
    """A deep copy of ``model`` with ``hf_state`` loaded (float32, dtype-cast as needed)."""
    import copy

    m = copy.deepcopy(model)
    sd = m.state_dict()
    with torch.no_grad():
        for k, v in hf_state.items():
            sd[k].copy_(torch.as_tensor(v).to(sd[k].dtype).reshape(sd[k].shape))
    m.eval()
    return m


def build_official(directory, seed: int = 0, shards: int = 2, mtp: bool = True) -> dict:
    """Write the official-layout fixture; returns {"model": float model, "reference": model
    running the dequantized weights, "official": checkpoint tensors, "dequantized": values}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_model(seed)
    official = tm.official_state_dict(model)
    if mtp:
        official.update(_mtp_block(official, model.config, seed))
    ckpt, deq = quantize_official(official)
    tm.write_shards(ckpt, directory, shards)
    cfg = tm.official_config(model.config)
    cfg["torch_dtype"] = "bfloat16"
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
    cfg["expert_dtype"] = "fp4"
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tm.write_tiny_tokenizer(directory, model.config.vocab_size)
    main_deq = {k: v for k, v in deq.items() if not k.startswith("mtp.")}
    reference = load_state(model, hf_state_from_official(model, main_deq))
    return {"model": model, "reference": reference, "official": ckpt, "dequantized": deq}


# ---------------------------------------------------------------------------
# GGUF -> transformers (reference for quantized files: the same dequantized weights)
# ---------------------------------------------------------------------------

_EXP = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}


def gguf_official_state(path) -> dict[str, np.ndarray]:
    """Dequantize every tensor of a deepseek4 GGUF and name it officially (float32)."""
    import gguf
    from pyv4.convert.names import LAYER_GGUF, ROOT_GGUF

    inv_root = {v: k for k, v in ROOT_GGUF.items()}
    inv_layer = {v: k for k, v in LAYER_GGUF.items()}
    inv_exp = {v + ".weight": k for k, v in _EXP.items()}
    r = gguf.GGUFReader(str(path))
    out: dict[str, np.ndarray] = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        if t.tensor_type == gguf.GGMLQuantizationType.I32:
            data = np.asarray(t.data).view(np.int32).reshape(shape)
        else:
            data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        if t.name in inv_root:
            out[inv_root[t.name]] = data
            continue
        m = re.match(r"blk\.(\d+)\.(.+)$", t.name)
        layer, rest = int(m.group(1)), m.group(2)
        if rest in inv_exp:
            for e in range(shape[0]):
                out[f"layers.{layer}.ffn.experts.{e}.{inv_exp[rest]}.weight"] = data[e]
        elif rest in inv_layer:
            out[f"layers.{layer}.{inv_layer[rest]}"] = data
        else:
            out[f"mtp_gguf.{layer}.{rest}"] = data
    return out


def reference_from_gguf(model, path):
    """``model`` (transformers) running exactly the dequantized weights of a GGUF file."""
    off = {k: torch.from_numpy(np.array(v)) for k, v in gguf_official_state(path).items()
           if not k.startswith("mtp_gguf.")}
    return load_state(model, hf_state_from_official(model, off))


def logit_stats(ref: np.ndarray, got: np.ndarray) -> dict:
    """max |d|, top-1 agreement and mean KL(ref || got) over positions."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = got - got.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"max_abs": float(np.abs(ref - got).max()),
            "top1": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "kl": float(kl.mean())}
