"""pyv4 against llama.cpp (llama-cpp-python 0.3.36, bench/setup_llamacpp.sh) and against
the machine's memory bandwidth, on the identical synthetic V4-Flash-width GGUF.

    PYTHONPATH=<pyv4 site> python bench/compare.py [--threads 2] [--rounds 5] [--long-rounds 1]
        [--recipe mxfp4] [--isa native|avx2] [--write-results] [--plot]

Files (bench/make_wide.py, cached in bench/.cache/): the main file has 4 layers (sliding,
CSA, HCA, CSA) and 32 routed experts; the per-layer cost comes from files with 2 and 6
layers (16 experts each, to keep them < 4.5 GB): (T6 - T2) / 4, both files loaded in one
process per runtime with decode tokens alternating between them in blocks of 4 (medians),
so that the host's bandwidth swings cancel in the difference.

--isa avx2 runs both on AVX2 only, as on a CPU without AVX-512 (an Intel desktop):
pyv4 with PYV4_ISA=avx2, llama.cpp from bench/.venv-llamacpp-avx2 (built for AVX2 +
FMA + F16C by `bench/setup_llamacpp.sh --avx2`).

Each measurement runs in its own subprocess (llama.cpp in bench/.venv-llamacpp's
python), so peak RSS is separable; both load the weights into anonymous memory
(llama.cpp use_mmap=False, pyv4 resident=True), the same thread count, default KV
types (llama.cpp f16 K/V, pyv4 fp8). The host's memory bandwidth is shared and swings
within seconds, so every round runs both runtimes (order alternating), with a
read-bandwidth probe (pyv4._core.read_bandwidth, all threads, 512 MiB) before each
run; ratios are medians over the rounds of the per-round pairs.

Per round and runtime: prefill of a 512-token prompt (one call), 64 greedy decode
tokens after a 16-token prompt, and (first --long-rounds rounds) decode at growing
context: prefill to 1024/2048/4096 in 512-token chunks with 16 decode tokens at each
step, 64 at 4096. Effective bandwidth = weight bytes one decode token reads (tensor
table: every matrix but the routed experts, top-6 of those, one embedding row) / time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PY = HERE / ".venv-llamacpp" / "bin" / "python"
VENV_PY_AVX2 = HERE / ".venv-llamacpp-avx2" / "bin" / "python"
N_PREFILL = 512
N_SHORT_PROMPT = 16
N_DECODE = 64
LONG_STEPS = (1024, 2048, 4096)
N_DECODE_STEP = 16
MAX_CONTEXT = max(LONG_STEPS)


# ---------------------------------------------------------------------------
# worker side (one runtime, one file, one process)
# ---------------------------------------------------------------------------

def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _PyV4:
    def __init__(self, path: str, threads: int, n_ctx: int):
        import pyv4

        self.m = pyv4.Model(path, threads=threads, resident=True)
        self.s = None

    def reset(self):
        self.s = self.m.new_session()

    def eval(self, ids):
        return self.s.eval(ids)

    def profile(self, n_decode: int, ids) -> dict | None:
        if self.m.profile() is None:
            return None
        self.reset()
        lg = self.eval(ids)
        self.m.profile_reset()
        for _ in range(n_decode):
            lg = self.eval([int(lg.argmax())])
        return self.m.profile()


class _Llama:
    def __init__(self, path: str, threads: int, n_ctx: int):
        import llama_cpp
        import numpy as np

        self.np = np
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=N_PREFILL, n_ubatch=N_PREFILL,
                                   n_threads=threads, n_threads_batch=threads, use_mmap=False,
                                   logits_all=False, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def reset(self):
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()

    def eval(self, ids):
        self.llm.eval(list(ids))
        return self.np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).copy()

    def profile(self, n_decode, ids):
        return None


def _decode(rt, lg, n: int):
    times = []
    for _ in range(n):
        tok = int(lg.argmax())
        t0 = time.perf_counter()
        lg = rt.eval([tok])
        times.append(time.perf_counter() - t0)
    return lg, times


def worker(a) -> dict:
    import numpy as np

    tasks = a.tasks.split(",")
    steps = tuple(x for x in LONG_STEPS if x <= a.max_context)
    rng = np.random.default_rng(1234)
    prompt = [0] + rng.integers(1000, 120000, max(LONG_STEPS)).tolist()
    n_ctx = max(LONG_STEPS) + N_DECODE + N_DECODE_STEP * (len(LONG_STEPS) + 1) + 64
    t0 = time.perf_counter()
    rt = (_PyV4 if a.worker == "pyv4" else _Llama)(a.model, a.threads, n_ctx)
    out = {"runtime": a.worker, "load_s": time.perf_counter() - t0, "rss_load_mb": _rss_now_mb()}
    finite = True
    if "short" in tasks:
        rt.reset()
        lg = rt.eval(prompt[:N_SHORT_PROMPT])
        finite &= bool(np.isfinite(lg).all())
        lg, times = _decode(rt, lg, a.n_decode)
        finite &= bool(np.isfinite(lg).all())
        out["decode_short_ms"] = 1000 * sum(times) / len(times)
        out["decode_short_med_ms"] = 1000 * statistics.median(times)
    if "prefill" in tasks or "long" in tasks:
        rt.reset()
        t = time.perf_counter()
        lg = rt.eval(prompt[:N_PREFILL])
        out["prefill_tps"] = N_PREFILL / (time.perf_counter() - t)
        finite &= bool(np.isfinite(lg).all())
        if "long" in tasks:
            curve = []  # (context, decode ms/token, prefill tok/s of the chunk that got there)
            ctx, pos, chunk_tps = N_PREFILL, N_PREFILL, out["prefill_tps"]
            for step_end in (N_PREFILL,) + steps:
                while pos < step_end:
                    ids = prompt[pos:pos + N_PREFILL]
                    t = time.perf_counter()
                    lg = rt.eval(ids)
                    chunk_tps = len(ids) / (time.perf_counter() - t)
                    pos += len(ids)
                    ctx += len(ids)
                n = N_DECODE if step_end == (steps[-1] if steps else N_PREFILL) else N_DECODE_STEP
                lg, times = _decode(rt, lg, n)
                curve.append((ctx, 1000 * sum(times) / n, chunk_tps))
                ctx += n
            finite &= bool(np.isfinite(lg).all())
            out["curve"] = curve
            out["decode_long_ms"] = curve[-1][1]
    if "layers" in tasks:
        # Per-layer cost: the 2- and 6-layer files loaded side by side in this
        # process, decode tokens alternating between them in blocks of 4, so a
        # swing of the host's bandwidth hits T2 and T6 alike.
        pair = {2: rt, 6: (_PyV4 if a.worker == "pyv4" else _Llama)(a.model6, a.threads, n_ctx)}
        logits, times = {}, {2: [], 6: []}
        for k, r in pair.items():
            r.reset()
            logits[k] = r.eval(prompt[:N_SHORT_PROMPT])
        for _ in range(a.n_decode // 4):
            for k, r in pair.items():
                logits[k], ts = _decode(r, logits[k], 4)
                times[k] += ts
        finite &= all(bool(np.isfinite(v).all()) for v in logits.values())
        out["t2_ms"] = 1000 * statistics.median(times[2])
        out["t6_ms"] = 1000 * statistics.median(times[6])
    if "profile" in tasks:
        out["profile"] = rt.profile(16, prompt[:N_SHORT_PROMPT])
    out["finite"] = finite
    out["rss_peak_mb"] = _peak_rss_mb()
    return out


# ---------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------

def bandwidth_probe(threads: int) -> float:
    from pyv4 import _core

    return float(_core.read_bandwidth(512 << 20, threads, 3))


def run_worker(runtime: str, model: Path, threads: int, tasks: list[str], n_decode: int, env_extra=None,
               model6: Path | None = None, isa: str = "native") -> dict:
    py = str(VENV_PY if isa == "native" else VENV_PY_AVX2) if runtime == "llama" else sys.executable
    cmd = [py, str(Path(__file__).resolve()), "--worker", runtime, "--model", str(model),
           "--threads", str(threads), "--tasks", ",".join(tasks), "--n-decode", str(n_decode),
           "--max-context", str(MAX_CONTEXT)] + (["--model6", str(model6)] if model6 else [])
    env = dict(os.environ)
    if isa == "avx2":
        env["PYV4_ISA"] = "avx2"
    env.update(env_extra or {})
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{runtime} worker failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1])


def machine_info() -> dict:
    info = {"cpu": platform.processor() or "?", "cores": os.cpu_count(), "flags": ""}
    try:
        txt = Path("/proc/cpuinfo").read_text()
        for line in txt.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                fl = line.split(":", 1)[1].split()
                info["flags"] = " ".join(f for f in fl if f.startswith(("avx", "amx", "fma", "f16c", "bmi2")))
                break
    except OSError:
        pass
    try:
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def drive(a) -> dict:
    sys.path.insert(0, str(HERE))
    from make_wide import decode_bytes_per_token, ensure

    t_start = time.time()
    log = lambda *m: print(f"[{time.time() - t_start:6.0f}s]", *m, flush=True)  # noqa: E731
    main = ensure(a.layers, a.experts, a.recipe, log=log)
    f2 = ensure(2, a.layer_experts, a.recipe, log=log) if a.per_layer else None
    f6 = ensure(6, a.layer_experts, a.recipe, log=log) if a.per_layer else None
    bpt = decode_bytes_per_token(main)
    bpt2 = decode_bytes_per_token(f2)["total"] if f2 else None
    bpt6 = decode_bytes_per_token(f6)["total"] if f6 else None
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
           "threads": a.threads, "isa": a.isa, "recipe": a.recipe, "main_file": main.name, "main_bytes": main.stat().st_size,
           "bytes_per_token": bpt, "layer_bytes": (bpt6 - bpt2) / 4 if f2 else None,
           "load_before": os.getloadavg(), "rounds": []}
    runtimes = ["pyv4", "llama"]
    for r in range(a.rounds):
        order = runtimes if r % 2 == 0 else runtimes[::-1]
        rd = {}
        for rt in order:
            tasks = ["short", "prefill"] + (["long"] if r < a.long_rounds else [])
            bw = bandwidth_probe(a.threads)
            o = run_worker(rt, main, a.threads, tasks, a.n_decode, isa=a.isa)
            o["bw_gbs"] = bw
            rd[rt] = o
            log(f"round {r} {rt:5s}: bw {bw:5.1f} GB/s, decode {o['decode_short_ms']:6.1f} ms/tok, prefill "
                f"{o['prefill_tps']:6.1f} tok/s" + (f", decode@{MAX_CONTEXT} {o['decode_long_ms']:6.1f} ms" if "long" in tasks
                                                      else "") + f", peak RSS {o['rss_peak_mb']:.0f} MB"
                + ("" if o["finite"] else "  NON-FINITE LOGITS"))
        if a.per_layer:
            for rt in order:
                bw = bandwidth_probe(a.threads)
                o = run_worker(rt, f2, a.threads, ["layers"], a.n_decode_layer, model6=f6, isa=a.isa)
                rd[rt + "_layer"] = {"t2": o["t2_ms"], "t6": o["t6_ms"], "bw_gbs": bw,
                                     "per_layer_ms": (o["t6_ms"] - o["t2_ms"]) / 4, "finite": o["finite"]}
                log(f"round {r} {rt:5s} per layer: T2 {o['t2_ms']:.1f} T6 {o['t6_ms']:.1f} "
                    f"-> {rd[rt + '_layer']['per_layer_ms']:.2f} ms/layer (bw {bw:.1f})")
        res["rounds"].append(rd)
    if a.profile:
        res["profile"] = run_worker("pyv4", main, a.threads, ["profile"], a.n_decode,
                                    {"PYV4_PROFILE": "1"}, isa=a.isa)["profile"]
    res["load_after"] = os.getloadavg()
    res["elapsed_s"] = time.time() - t_start
    res["summary"] = summarize(res)
    return res


def summarize(res: dict) -> dict:
    R = res["rounds"]
    s = {}
    bpt = res["bytes_per_token"]["total"]
    for rt in ("pyv4", "llama"):
        d = [r[rt]["decode_short_ms"] for r in R]
        s[rt] = {
            "decode_ms": med(d), "decode_tps": 1000 / med(d), "prefill_tps": med([r[rt]["prefill_tps"] for r in R]),
            "decode_4k_ms": med([r[rt].get("decode_long_ms") for r in R]),
            "rss_peak_mb": max(r[rt]["rss_peak_mb"] for r in R), "rss_load_mb": med([r[rt]["rss_load_mb"] for r in R]),
            "eff_gbs": bpt / (med(d) / 1000) / 1e9, "load_s": med([r[rt]["load_s"] for r in R]),
            "bw_gbs": med([r[rt]["bw_gbs"] for r in R]), "finite": all(r[rt]["finite"] for r in R),
        }
        if res["layer_bytes"] and rt + "_layer" in R[0]:
            pl = med([r[rt + "_layer"]["per_layer_ms"] for r in R])
            s[rt]["per_layer_ms"] = pl
            s[rt]["per_layer_gbs"] = res["layer_bytes"] / (pl / 1000) / 1e9 if pl > 0 else float("nan")
    s["ratio_decode"] = med([r["llama"]["decode_short_ms"] / r["pyv4"]["decode_short_ms"] for r in R])
    s["ratio_prefill"] = med([r["pyv4"]["prefill_tps"] / r["llama"]["prefill_tps"] for r in R])
    long = [r for r in R if "decode_long_ms" in r["pyv4"]]
    s["ratio_decode_4k"] = med([r["llama"]["decode_long_ms"] / r["pyv4"]["decode_long_ms"] for r in long]) if long else None
    if "pyv4_layer" in R[0]:
        s["ratio_per_layer"] = med([r["pyv4_layer"]["per_layer_ms"] / r["llama_layer"]["per_layer_ms"] for r in R])
    s["ratio_rss"] = s["pyv4"]["rss_peak_mb"] / s["llama"]["rss_peak_mb"]
    return s


def markdown(res: dict) -> str:
    s, m = res["summary"], res["machine"]
    P, L = s["pyv4"], s["llama"]
    bpt = res["bytes_per_token"]
    f = lambda x, p=1: "n/a" if x is None or x != x else f"{x:.{p}f}"  # noqa: E731
    ratio = lambda x, what="": "n/a" if x is None or x != x else f"{x:.2f}x{what}"  # noqa: E731
    isa = "" if res.get("isa", "native") == "native" else f", {res['isa']} only (both runtimes)"
    # the 2-bit recipes' decode target is issue #16's, the others' the first comparison's
    decode_target = ">= 1.3x" if res.get("recipe") in ("q2", "q2q4") else ">= 1.2x"
    out = [f"### {res['date']} — {res['main_file']} ({res['main_bytes'] / 1e9:.2f} GB), {res['threads']} threads, "
           f"{len(res['rounds'])} rounds{isa}",
           "",
           f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('mem_gb', '?')} GiB; {m['flags']}. "
           f"Load average before/after: {res['load_before'][0]:.2f} / {res['load_after'][0]:.2f}. "
           f"Run took {res['elapsed_s'] / 60:.1f} min.",
           "",
           "| | pyv4 | llama.cpp | ratio (paired median) | target |",
           "|---|---|---|---|---|",
           f"| decode, 16-token prompt (ms/token) | {f(P['decode_ms'])} | {f(L['decode_ms'])} | "
           f"{ratio(s['ratio_decode'], ' faster')} | {decode_target} |",
           f"| decode tokens/s | {f(P['decode_tps'], 2)} | {f(L['decode_tps'], 2)} | | |",
           f"| decode after {MAX_CONTEXT} tokens (ms/token) | {f(P['decode_4k_ms'])} | {f(L['decode_4k_ms'])} | "
           f"{ratio(s['ratio_decode_4k'], ' faster')} | |",
           f"| prefill, 512-token prompt (tokens/s) | {f(P['prefill_tps'])} | {f(L['prefill_tps'])} | "
           f"{ratio(s['ratio_prefill'])} | >= 2x |",
           f"| per-layer decode cost (ms, (T6-T2)/4) | {f(P.get('per_layer_ms'), 2)} | {f(L.get('per_layer_ms'), 2)} | "
           f"{ratio(s.get('ratio_per_layer'), ' the time')} | <= 0.65x |",
           f"| effective bandwidth, whole token (GB/s) | {f(P['eff_gbs'])} | {f(L['eff_gbs'])} | | |",
           f"| effective bandwidth, one layer (GB/s) | {f(P.get('per_layer_gbs'))} | {f(L.get('per_layer_gbs'))} | | |",
           f"| peak RSS (MB) | {P['rss_peak_mb']:.0f} | {L['rss_peak_mb']:.0f} | {ratio(s['ratio_rss'])} | <= 1x |",
           f"| RSS after load (MB) | {P['rss_load_mb']:.0f} | {L['rss_load_mb']:.0f} | | |",
           f"| load time (s) | {f(P['load_s'])} | {f(L['load_s'])} | | |",
           f"| read-bandwidth probe before the run (GB/s, median) | {f(P['bw_gbs'])} | {f(L['bw_gbs'])} | | |",
           "",
           f"Bytes one decode token reads: {bpt['total'] / 1e6:.0f} MB ("
           + ", ".join(f"{k} {v / 1e6:.0f}" for k, v in sorted(bpt['by_kind'].items(), key=lambda kv: -kv[1]))
           + f"); one added layer (2 -> 6 layer files): {f((res['layer_bytes'] or 0) / 1e6, 0)} MB.",
           "",
           "Per round (ms/token at 16 tokens; prefill tok/s; probe GB/s; per-layer ms):",
           "",
           "| round | pyv4 decode | llama decode | pyv4 prefill | llama prefill | probe (pyv4/llama) "
           "| pyv4 layer | llama layer |",
           "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(res["rounds"]):
        pl, ll = r.get("pyv4_layer", {}), r.get("llama_layer", {})
        out.append(f"| {i} | {r['pyv4']['decode_short_ms']:.1f} | {r['llama']['decode_short_ms']:.1f} | "
                   f"{r['pyv4']['prefill_tps']:.1f} | {r['llama']['prefill_tps']:.1f} | "
                   f"{r['pyv4']['bw_gbs']:.1f} / {r['llama']['bw_gbs']:.1f} | "
                   f"{f(pl.get('per_layer_ms'), 2)} | {f(ll.get('per_layer_ms'), 2)} |")
    curves = [(i, r) for i, r in enumerate(res["rounds"]) if "curve" in r["pyv4"]]
    if curves:
        out += ["", "Decode ms/token vs context (round 0): "
                + "; ".join(f"{c[0]}: pyv4 {c[1]:.1f} / llama {lc[1]:.1f}"
                            for c, lc in zip(curves[0][1]["pyv4"]["curve"], curves[0][1]["llama"]["curve"]))]
    if res.get("profile"):
        out += ["", profile_markdown(res["profile"])]
    return "\n".join(out) + "\n"


def profile_markdown(p: dict) -> str:
    n = p["evals"]
    ops = sorted(p["ops"].items(), key=lambda kv: -kv[1][0])
    tot = p["total"] / n * 1000
    rows = [f"pyv4 profile of one decode step (PYV4_PROFILE=1, mean of {n} steps, {tot:.1f} ms/token):", "",
            "| op | ms | % |", "|---|---|---|"]
    for k, (sec, _) in ops:
        rows.append(f"| {k} | {sec / n * 1000:.2f} | {100 * sec / p['total']:.1f} |")
    other = p["total"] - sum(v[0] for v in p["ops"].values())
    rows.append(f"| (untracked) | {other / n * 1000:.2f} | {100 * other / p['total']:.1f} |")
    return "\n".join(rows)


def plot(res: dict, out: Path) -> None:
    """Runs matplotlib in bench/.venv-llamacpp (not a project dependency)."""
    curves = [r for r in res["rounds"] if "curve" in r["pyv4"]]
    if not curves:
        return
    data = {rt: [[c[0], statistics.median(r[rt]["curve"][i][1] for r in curves)]
                 for i, c in enumerate(curves[0][rt]["curve"])] for rt in ("pyv4", "llama")}
    for rt in data:
        data[rt] = [[N_SHORT_PROMPT, res["summary"][rt]["decode_ms"]]] + data[rt]
    code = f"""
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = {json.dumps(data)}
fig, ax = plt.subplots(figsize=(7, 4.2))
for rt, lab in (("pyv4", "pyv4"), ("llama", "llama.cpp")):
    x = [p[0] for p in d[rt]]; y = [1000.0 / p[1] for p in d[rt]]
    ax.plot(x, y, marker="o", label=lab)
ax.set_xscale("log", base=2); ax.set_xlabel("context (tokens)"); ax.set_ylabel("decode tokens/s")
ax.set_title({json.dumps(f"{res['main_file']}, {res['threads']} threads ({res['date'][:10]})")}, fontsize=9)
ax.grid(True, alpha=0.3); ax.legend(); fig.tight_layout(); fig.savefig({json.dumps(str(out))}, dpi=120)
"""
    subprocess.run([str(VENV_PY), "-c", code], check=True)


PREAMBLE = """Same synthetic GGUF for both runtimes (bench/make_wide.py: V4-Flash widths, real
vocabulary, random weights; recipe mxfp4 = MXFP4 experts, Q8_0 projections, BF16
embed/head/router/compressors, as llama.cpp's converter writes the official checkpoint).
llama.cpp = llama-cpp-python 0.3.36 built from source (bench/setup_llamacpp.sh, native ISA
without AMX, whose buffer stops the deepseek4 graph; OpenMP), `use_mmap=False`, default f16
K/V; pyv4 `Model(resident=True)`, default fp8 KV.
Each runtime runs in its own process; rounds alternate the order; a read-bandwidth probe
(`_core.read_bandwidth`, all threads, 512 MiB) runs before each; ratios are medians of the
per-round pairs. Commands:

```
bash bench/setup_llamacpp.sh                      # once, ~4 min (also installs matplotlib for the plot)
pip install --no-build-isolation --no-deps --target /tmp/site-bench .
PYTHONPATH=/tmp/site-bench python bench/compare.py --write-results --plot
```

The files are generated on first use into bench/.cache/ (~12 GB, ~3 min). The plot is
bench/results.png (decode tokens/s vs context). Older results stay below, newest first.
"""


def write_results(md: str, path: Path) -> None:
    """Inserts the new table at the top of the "pyv4 vs llama.cpp" section (older ones
    stay below it); other sections are left alone."""
    head = "## pyv4 vs llama.cpp"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if head not in text:
        text = text.rstrip("\n") + f"\n\n{head}\n\n{PREAMBLE}\n"
    i = text.index(head) + len(head)
    # keep the section's fixed preamble (up to the first dated table)
    j = text.find("\n### ", i)
    nxt = text.find("\n## ", i)
    if j == -1 or (nxt != -1 and j > nxt):
        j = nxt if nxt != -1 else len(text)
    text = text[:j].rstrip("\n") + "\n\n" + md + ("\n" + text[j:].lstrip("\n") if j < len(text) else "")
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--long-rounds", type=int, default=1, help="rounds that also measure decode at 1k-4k context")
    p.add_argument("--recipe", default="mxfp4", choices=["mxfp4", "q4", "q8", "q2", "q2q4"])
    p.add_argument("--isa", default="native", choices=["native", "avx2"],
                   help="avx2: both runtimes on AVX2 only (llama.cpp from bench/.venv-llamacpp-avx2)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--layer-experts", type=int, default=16, help="routed experts of the 2/6-layer files")
    p.add_argument("--no-per-layer", dest="per_layer", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--n-decode", type=int, default=N_DECODE)
    p.add_argument("--max-context", type=int, default=max(LONG_STEPS), help="last context step of the long runs")
    p.add_argument("--n-decode-layer", type=int, default=64, help="decode tokens per file for the per-layer cost")
    p.add_argument("--write-results", action="store_true", help="add the table to bench/RESULTS.md")
    p.add_argument("--plot", action="store_true", help="write bench/results.png")
    p.add_argument("--json", type=Path, default=None, help="raw results (default bench/.cache/compare-<date>.json)")
    p.add_argument("--from-json", type=Path, default=None, help="re-render a saved run (no measurement)")
    # worker mode (internal)
    p.add_argument("--worker", choices=["pyv4", "llama"])
    p.add_argument("--model")
    p.add_argument("--model6", help="worker 'layers' task: the 6-layer file (--model: the 2-layer one)")
    p.add_argument("--tasks", default="short")
    a = p.parse_args(argv)
    global MAX_CONTEXT
    MAX_CONTEXT = a.max_context
    if a.worker:
        print(json.dumps(worker(a)), flush=True)
        return 0
    if a.from_json:
        res = json.loads(a.from_json.read_text())
        out = a.from_json
    else:
        res = drive(a)
        out = a.json or HERE / ".cache" / f"compare-{res['date'].replace(':', '')}.json"
        out.write_text(json.dumps(res, indent=1))
    md = markdown(res)
    print(md)
    print(f"raw results: {out}")
    if a.write_results:
        write_results(md, HERE / "RESULTS.md")
    if a.plot:
        plot(res, HERE / "results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
