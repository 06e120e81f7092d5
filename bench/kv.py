"""KV cache benchmark (not a test): bytes/token, decode time vs context,
session restore time, peak RSS.

    PYTHONPATH=<install> python bench/kv.py [--tokens 65536] [--out bench/kv.json]

* Bytes/token for V4-Flash shapes (43 layers: 2 sliding, 21 CSA, 20 HCA;
  head_dim 512 / rope 64, window 128, indexer keys 128) at 1K, 64K and 1M tokens
  are computed from the allocator's layout: the record sizes come from the
  codecs in csrc/kv (pyv4._core.kv_codec_roundtrip), the row counts from the
  spec §4.1 rules. The same formula is checked against a session actually
  filled to --tokens tokens on the spec §11 tiny model (its own shapes).
* Decode time per token at 1K, 8K and 64K context, restore time of a 50K-token
  session and peak RSS are measured on the spec §11 tiny model (hidden 64,
  head_dim 64, real forward pass, rows really filled by prefill). This is NOT a
  full-width (V4-Flash) layer set.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=65536, help="tokens to really fill (tiny model)")
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
    cfg_ctx = cfg["context_length"]
    model = pyv4.Model(path)
    tiny = dict(n_layer=cfg["num_hidden_layers"], ratios=cfg["compress_ratios"][: cfg["num_hidden_layers"]],
                head_dim=cfg["head_dim"], rope=cfg["qk_rope_head_dim"], window=cfg["sliding_window"],
                index_dim=cfg["index_head_dim"])
    n_fill = args.tokens
    rng = np.random.default_rng(0)
    decode = {}
    for ctx in (1024, 8192, 65536):
        # Rows filled with synthetic values (random, QAT-rounded): a real
        # prefill of 64K tokens is O(T²) in the indexer. Decode then runs the
        # real forward pass over them.
        s = model.new_session(kv="fp8")
        s._state._fill_synthetic(ctx, 1)
        ts = []
        for i in range(12):
            t = time.perf_counter()
            s.eval(rng.integers(0, cfg["vocab_size"], 1))
            ts.append(time.perf_counter() - t)
        decode[str(ctx)] = float(np.median(ts[2:]))
        print(f"tiny model decode at {ctx}: {decode[str(ctx)] * 1e3:.2f} ms/token "
              f"(csa rows touched {s.stats()['csa_rows_touched']})")
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
    res["decode_ms"] = {k: v * 1e3 for k, v in decode.items()}
    res["decode_ratio_64k_1k"] = decode["65536"] / decode["1024"]
    print(f"decode 64K / 1K = {res['decode_ratio_64k_1k']:.2f}")

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
    res["peak_rss_mb"] = peak_rss_mb()
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
