"""KV cache benchmark (not a test): bytes/token, decode time vs context,
session restore time, peak RSS.

    PYTHONPATH=<install> python bench/kv.py [--tokens 65536] [--out bench/kv.json]

* Bytes/token for V4-Flash shapes (43 layers: 2 sliding, 21 CSA, 20 HCA;
  head_dim 512 / rope 64, window 128, indexer keys 128) at 1K, 64K and 1M tokens
  are computed from the allocator's layout: the record sizes come from the
  codecs in csrc/kv (pyv4._core.kv_codec_roundtrip), the row counts from the
  spec §4.1 rules. The same formula is checked against a session actually
  filled to --tokens tokens on the spec §11 tiny model (its own shapes).
* Decode time per token at 1K, 8K and 64K context on a full-width layer set:
  the 4-layer V4-Flash-width file of bench/make_wide.py (sliding, CSA, HCA,
  CSA; 32 experts, MXFP4 experts, real vocabulary), weights resident. The
  rows before the measured tokens are SYNTHETIC (random values rounded like
  the fp8 record, KVState.fill_synthetic): a real 64K prefill is O(T^2) in the
  indexer. Decode then runs the real forward pass over them; the per-op
  profile (PYV4_PROFILE=1) shows what grows with the context.
* Restore time of a 50K-token session and peak RSS are measured on the spec
  §11 tiny model (rows filled synthetically).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import pyv4  # noqa: E402
from pyv4 import _core  # noqa: E402

FLASH = dict(n_layer=43, ratios=[0, 0] + [4, 128] * 20 + [4], head_dim=512, rope=64, window=128, index_dim=128)


def record_bytes(kv: str, head_dim: int, rope: int, index_dim: int) -> tuple[int, int]:
    row = _core.kv_codec_roundtrip(kv, "main", np.ones(head_dim, np.float32), rope)[2]
    key = _core.kv_codec_roundtrip(kv, "index", np.ones(index_dim, np.float32))[2]
    return row, key


def layout_bytes(kv: str, T: int, shapes: dict, snap_every: int = 128) -> dict:
    """KV bytes of a session of T tokens, as KVState lays them out."""
    row, key = record_bytes(kv, shapes["head_dim"], shapes["rope"], shapes["index_dim"])
    W = shapes["window"]
    win = comp = idx = snaps = 0
    for r in shapes["ratios"]:
        win += min(T, W) * row
        snap = W * row
        if r == 4:
            comp += (T // 4) * row
            idx += (T // 4) * key
            snap += 16 + 4 * 2 * shapes["head_dim"] * 8 + 16 + 4 * 2 * shapes["index_dim"] * 8
        elif r:
            comp += (T // r) * row
            snap += 16
        snaps += (T // snap_every) * snap
    kvb = win + comp + idx
    return dict(kv_bytes=kvb, per_token=kvb / T, snapshot_bytes=snaps, snapshot_per_token=snaps / T)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_vs_context(layers: int, experts: int, contexts=(1024, 8192, 65536), steps: int = 12) -> dict:
    """ms/token of decode (random next tokens) after `ctx` synthetic tokens on
    the full-width file: the median over `steps` tokens per context, after a
    warm-up, with the contexts taking turns so a bandwidth dip hits them all."""
    from make_wide import ensure

    path = ensure(layers, experts, "mxfp4")
    model = pyv4.Model(path, resident=True)
    vocab = model.config["vocab_size"]
    rng = np.random.default_rng(0)
    sessions = {}
    for ctx in contexts:
        s = model.new_session(kv="fp8")
        s._state._fill_synthetic(ctx, 1)
        s.eval(rng.integers(0, vocab, 2))  # warm-up
        sessions[ctx] = s
    times: dict = {ctx: [] for ctx in contexts}
    for _ in range(steps // 2):
        for ctx in contexts:
            for _ in range(2):
                t = time.perf_counter()
                sessions[ctx].eval(rng.integers(0, vocab, 1))
                times[ctx].append(time.perf_counter() - t)
    prof = {}
    if model.profile() is not None:  # PYV4_PROFILE=1: per-op ms/token for each context
        for ctx in contexts:
            model.profile_reset()
            for _ in range(4):
                sessions[ctx].eval(rng.integers(0, vocab, 1))
            p = model.profile()
            prof[str(ctx)] = {k: v[0] / p["evals"] * 1e3 for k, v in p["ops"].items()}
    out = {"file": str(path), "layers": layers, "experts": experts,
           "ms": {str(c): float(np.median(v)) * 1e3 for c, v in times.items()},
           "csa_rows_touched": {str(c): sessions[c].stats()["csa_rows_touched"] for c in contexts},
           "profile_ms": prof}
    for ctx in contexts:
        line = f"full-width {layers}-layer decode at {ctx}: {out['ms'][str(ctx)]:.1f} ms/token"
        if prof:
            top = sorted(prof[str(ctx)].items(), key=lambda kv: -kv[1])
            grow = {k: v for k, v in top if k in ("indexer.score", "attn.core", "attn.gather")}
            line += " (" + ", ".join(f"{k} {v:.2f}" for k, v in grow.items()) + ")"
        print(line, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536, help="tokens to really fill (tiny model)")
    ap.add_argument("--wide-layers", type=int, default=4)
    ap.add_argument("--wide-experts", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res: dict = {}

    # 1. Bytes per token, V4-Flash shapes (layout).
    res["flash_layout"] = {
        kv: {str(T): layout_bytes(kv, T, FLASH) for T in (1024, 65536, 1 << 20)} for kv in ("fp8", "bf16", "f32")
    }
    for kv in ("fp8", "bf16"):
        r = res["flash_layout"][kv][str(1 << 20)]
        print(f"V4-Flash {kv}: {r['per_token']:.0f} B/token KV at 1M "
              f"(+ {r['snapshot_per_token']:.0f} B/token truncation snapshots)")

    # 2. Tiny model: fill, check the layout formula, time decode and restore.
    import conftest  # builds the spec §11 model with pyv4 convert

    tmp = Path(tempfile.mkdtemp(prefix="pyv4-kvbench-"))
    import gguf_tools

    path0, hf = conftest.converted_model(tmp, "spec11", 0)
    del hf
    g = gguf_tools.read(path0)  # raise the context length so 64K tokens fit
    g.set("deepseek4.context_length", gguf_tools.U32, 1 << 17)
    path = tmp / "spec11-128k.gguf"
    gguf_tools.write(g, path)
    cfg = _core.Engine(str(path), 0).config()
    model = pyv4.Model(path)
    tiny = dict(n_layer=cfg["num_hidden_layers"], ratios=cfg["compress_ratios"][: cfg["num_hidden_layers"]],
                head_dim=cfg["head_dim"], rope=cfg["qk_rope_head_dim"], window=cfg["sliding_window"],
                index_dim=cfg["index_head_dim"])
    n_fill = args.tokens
    s = model.new_session(kv="fp8")
    t0 = time.perf_counter()
    s._state._fill_synthetic(n_fill, 2)
    fill_s = time.perf_counter() - t0
    st = s.stats()
    want = layout_bytes("fp8", n_fill, tiny)
    res["tiny_filled"] = dict(tokens=n_fill, kv_bytes=st["kv_bytes"], layout_kv_bytes=want["kv_bytes"],
                              snapshot_bytes=st["snapshot_bytes"], layout_snapshot_bytes=want["snapshot_bytes"],
                              file_bytes=st["file_bytes"], fill_seconds=fill_s)
    print(f"tiny model filled (synthetic) to {n_fill} tokens in {fill_s:.1f}s: kv_bytes {st['kv_bytes']} "
          f"(layout formula {want['kv_bytes']}), snapshots {st['snapshot_bytes']} ({want['snapshot_bytes']})")

    # 3. Restore a 50K-token session.
    n50 = 50048  # a multiple of 128
    s = model.new_session(kv="fp8")
    s._state._fill_synthetic(n50, 3)
    sp = tmp / "s50k.pyv4s"
    t = time.perf_counter()
    s.save(sp)
    save_s = time.perf_counter() - t
    loads = []
    for _ in range(5):
        t = time.perf_counter()
        r = pyv4.Session.load(model, sp)
        loads.append(time.perf_counter() - t)
        del r
    res["restore"] = dict(tokens=n50, file_bytes=sp.stat().st_size, save_s=save_s, load_ms=float(np.median(loads)) * 1e3)
    print(f"{n50}-token session: file {sp.stat().st_size / 1e6:.1f} MB, save {save_s * 1e3:.0f} ms, "
          f"load {res['restore']['load_ms']:.2f} ms")
    res["peak_rss_mb_tiny"] = peak_rss_mb()
    print(f"peak RSS with the tiny model's 64K and 50K sessions {res['peak_rss_mb_tiny']:.0f} MB")

    # 4. Decode vs context on the full-width layer set.
    res["decode_wide"] = decode_vs_context(args.wide_layers, args.wide_experts)
    d = res["decode_wide"]["ms"]
    res["decode_ratio_64k_1k"] = d["65536"] / d["1024"]
    print(f"decode 64K / 1K = {res['decode_ratio_64k_1k']:.2f} (target <= 1.3)")
    res["peak_rss_mb"] = peak_rss_mb()
    print(f"peak RSS with the wide model (weights resident) and its 64K session {res['peak_rss_mb']:.0f} MB")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
