"""`pyv4 info FILE.gguf`: what a GGUF holds and whether pyv4 can run it."""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from . import _core

_HYPER_KEYS = [
    "block_count", "context_length", "embedding_length", "attention.head_count",
    "attention.key_length", "rope.dimension_count", "attention.q_lora_rank",
    "attention.output_group_count", "attention.output_lora_rank", "attention.sliding_window",
    "attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.top_k",
    "expert_count", "expert_used_count", "expert_feed_forward_length", "expert_shared_count",
    "expert_weights_scale", "hash_layer_count", "nextn_predict_layers",
]


def describe(path: str) -> dict:
    f = _core.GGUFFile(path)
    arch = f.get("general.architecture")
    hist: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    total = 0
    for _name, tname, _shape, nbytes in f.tensors():
        hist[tname][0] += 1
        hist[tname][1] += nbytes
        total += nbytes
    hyper = {k: f.get(f"{arch}.{k}") for k in _HYPER_KEYS if f.get(f"{arch}.{k}") is not None}
    ratios = f.get(f"{arch}.attention.compress_ratios")
    if ratios is not None:
        hyper["layer kinds"] = "".join({0: "S", 4: "C"}.get(r, "H") for r in ratios)
    tok = {
        "embedded": f.get("tokenizer.huggingface.json") is not None or f.get("tokenizer.ggml.tokens") is not None,
        "model": f.get("tokenizer.ggml.model"),
        "tokens": len(f.get("tokenizer.ggml.tokens") or []),
    }
    try:
        # validation only: no split copies (they would read every expert of the file)
        engine = _core.Engine(path, 1, resident=False, split=False)
        loadable, why = True, f"yes ({engine.n_vocab} tokens, context {engine.n_ctx})"
    except ValueError as e:
        loadable, why = False, f"no: {e}"
    return {
        "path": path,
        "shards": list(f.shards),
        "file_size": f.file_size,
        "gguf_version": f.version,
        "architecture": arch,
        "name": f.get("general.name"),
        "hyper_parameters": hyper,
        "tensor_types": {k: {"tensors": v[0], "bytes": v[1]} for k, v in sorted(hist.items())},
        "tensor_bytes": total,
        "n_tensors": len(f.tensors()),
        "tokenizer": tok,
        "loadable": loadable,
        "loadable_detail": why,
    }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 info", description=__doc__)
    ap.add_argument("file", help="a GGUF file (of a split model: any of its shards)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    a = ap.parse_args(argv)
    if not os.path.isfile(a.file):
        print(f"pyv4 info: error: no such file: {a.file}", file=sys.stderr)
        return 2
    try:
        d = describe(a.file)
    except ValueError as e:
        print(f"pyv4 info: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(d, indent=2))
        return 0
    shards = f" in {len(d['shards'])} shards" if len(d["shards"]) > 1 else ""
    print(f"{d['path']}: GGUF v{d['gguf_version']}, {_human(d['file_size'])}{shards}, {d['n_tensors']} tensors")
    print(f"architecture: {d['architecture']}" + (f"  ({d['name']})" if d["name"] else ""))
    for k, v in d["hyper_parameters"].items():
        print(f"  {k:<32} {v}")
    print("tensor types:")
    for k, v in d["tensor_types"].items():
        print(f"  {k:<8} {v['tensors']:>6} tensors  {_human(v['bytes']):>10}")
    print(f"  total    {_human(d['tensor_bytes'])}")
    t = d["tokenizer"]
    print("tokenizer: " + (f"embedded ({t['model']}, {t['tokens']} tokens)" if t["embedded"] else "none"))
    print(f"pyv4 can load it: {d['loadable_detail']}")
    return 0 if d["loadable"] else 1
