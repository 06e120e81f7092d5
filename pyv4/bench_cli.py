"""`pyv4 bench MODEL`: prefill and decode speed of one model on this machine.

For side-by-side comparisons with llama.cpp and the memory-bandwidth context,
see bench/ in the source tree; this is the quick single-runtime number."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .cli_commands import UserError, _add_device_args, _load


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 bench", description=__doc__)
    ap.add_argument("model", help="a deepseek4 GGUF file, or 'demo'")
    _add_device_args(ap)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best one is reported")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.prompt_tokens < 1 or a.gen_tokens < 0 or a.repeat < 1:
        print("pyv4 bench: error: --prompt-tokens and --repeat must be >= 1, --gen-tokens >= 0", file=sys.stderr)
        return 2
    try:
        model = _load(a)
    except UserError as e:
        print(f"pyv4 bench: error: {e}", file=sys.stderr)
        return 2
    if a.prompt_tokens + a.gen_tokens > model.n_ctx:
        print(f"pyv4 bench: error: {a.prompt_tokens + a.gen_tokens} tokens exceed the context of {model.n_ctx}",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, min(model.n_vocab, 100000), a.prompt_tokens)
    best_prefill = best_decode = float("inf")
    for _ in range(a.repeat):
        sess = model.new_session()
        t0 = time.perf_counter()
        logits = sess.eval(prompt, logits="last")
        best_prefill = min(best_prefill, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(a.gen_tokens):
            logits = sess.eval([int(np.argmax(logits))], logits="last")
        if a.gen_tokens:
            best_decode = min(best_decode, (time.perf_counter() - t0) / a.gen_tokens)
    res = {
        "model": model.path,
        "threads": model._engine.n_threads,
        "prompt_tokens": a.prompt_tokens,
        "prefill_tokens_per_s": a.prompt_tokens / best_prefill,
        "decode_ms_per_token": best_decode * 1000 if a.gen_tokens else None,
        "decode_tokens_per_s": 1.0 / best_decode if a.gen_tokens else None,
    }
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{model.path}: {res['threads']} threads")
        print(f"  prefill {a.prompt_tokens} tokens: {res['prefill_tokens_per_s']:.1f} tokens/s")
        if a.gen_tokens:
            print(f"  decode  {a.gen_tokens} tokens after them: {res['decode_ms_per_token']:.2f} ms/token "
                  f"({res['decode_tokens_per_s']:.1f} tokens/s)")
    return 0
