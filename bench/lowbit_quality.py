"""Low-bit quantization quality against llama.cpp's own quantizer (issue #16; not a test).

    PYTHONPATH=<install> python bench/lowbit_quality.py --tools DIR [--out bench/.cache/lowbit]

DIR holds llama.cpp's `llama-quantize` and `llama-imatrix`, built from the same
sources bench/setup_llamacpp.sh uses:

    cmake -S bench/.venv-llamacpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp -B DIR/.. \\
          -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build DIR/.. --target llama-quantize llama-imatrix

Steps, all on one small random-weight `deepseek4` model in F32 (experts 256 wide,
so every low-bit block fits; real tokenizer):
1. `pyv4 imatrix` on calibration text -> ours.imatrix; `llama-imatrix` on the
   same file and text -> theirs.imatrix (each tool's file must load in the other);
2. `llama-quantize --imatrix ours.imatrix` to IQ2_XXS, Q2_K, Q3_K and IQ4_XS
   (llama.cpp accepting our file), and pyv4's quantizers (convert/quants_lowbit.py)
   on the same F32 tensors with the same importance vectors;
3. per tensor that llama.cpp stored in a low-bit type, both tools' results
   dequantized (gguf.quants) and compared with the F32 weights: RMSE weighted by
   the importance of each input column (sum w_c (x - q)^2 / sum w_c), pooled
   per type. Reported: ours / theirs (the target: <= 1.02).
4. (unless --no-kl) the whole model both ways with the q2 recipe's types: `pyv4
   requantize --recipe q2 --imatrix ours.imatrix` from the F32 file, and
   `llama-quantize --imatrix ours.imatrix` told, tensor by tensor, to write the
   same types (checked after); both files and the F32 one run in pyv4 over the
   same held-out text, and the mean KL(F32 || quantized) of the next-token
   distributions over --kl-positions positions is compared (target: ours <=
   theirs + 10 %).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CONFIG_OVERRIDES = {"hidden_size": 256, "moe_intermediate_size": 256}  # the demo's shape, blocks of 256 fit
FTYPES = {"IQ2_XXS": "IQ2_XXS", "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "IQ4_XS": "IQ4_XS"}


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace",
                       cwd=HERE / ".cache", **kw)  # outside the source tree: `-m pyv4.cli` is the installed one
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tools", type=Path, required=True, help="folder with llama-quantize, llama-imatrix")
    ap.add_argument("--out", type=Path, default=HERE / ".cache" / "lowbit")
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--kl-positions", type=int, default=600)
    ap.add_argument("--no-kl", dest="kl", action="store_false")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)

    import gguf
    from gguf import GGMLQuantizationType as T, GGUFReader
    from gguf.quants import dequantize

    from pyv4.convert.imatrix import load_imatrix, matrix_weights
    from pyv4.convert.quants_lowbit import iq2_xxs_quantize, iq4_xs_quantize, q2_k_quantize, q3_k_quantize
    from pyv4.demo import DEMO_CONFIG, _tokenizer_dir
    from pyv4.synthetic import write_random_gguf

    f32 = a.out / "model-f32.gguf"
    if not f32.exists():
        write_random_gguf(f32, {**DEMO_CONFIG, **CONFIG_OVERRIDES}, _tokenizer_dir(), seed=7, matrix_type=T.F32,
                          name="lowbit-bench")
    calib = a.out / "calib.txt"
    words = ("the of and to in is was for on that with as by at from his her an which this were are "
             "be had it not they or have but one all their been has more when there who so if out "
             "time about up can into than other new some could them only").split()
    rng = np.random.default_rng(0)
    calib.write_text(" ".join(rng.choice(words, 512 * (a.chunks + 2))))
    held_out = " ".join(np.random.default_rng(1).choice(words, 2 * a.kl_positions))
    ours_im, theirs_im = a.out / "ours.imatrix", a.out / "theirs.imatrix"
    run([sys.executable, "-m", "pyv4.cli", "imatrix", f32, "-f", calib, "-o", ours_im,
         "--chunk-size", "512", "--chunks", a.chunks])
    run([a.tools / "llama-imatrix", "-m", f32, "-f", calib, "-o", theirs_im, "-c", "512",
         "--chunks", a.chunks, "-t", "2"])
    print(f"llama-imatrix wrote {theirs_im.name}; pyv4 reads it: {len(load_imatrix(theirs_im))} entries")
    ours = load_imatrix(ours_im)
    print(f"pyv4 imatrix wrote {ours_im.name}: {len(ours)} entries")

    src = {t.name: t for t in GGUFReader(str(f32)).tensors}
    quantizers = {"IQ2_XXS": iq2_xxs_quantize, "Q2_K": q2_k_quantize, "Q3_K": q3_k_quantize,
                  "IQ4_XS": iq4_xs_quantize}
    print("\n| type | tensors | weighted RMSE pyv4 | weighted RMSE llama.cpp | pyv4 / llama.cpp |")
    print("|---|---|---|---|---|")
    for tname, ftype in FTYPES.items():
        q = a.out / f"llama-{ftype}.gguf"
        run([a.tools / "llama-quantize", "--imatrix", ours_im, f32, q, ftype, "2"])
        num_o = num_t = den = 0.0
        n = 0
        for t in GGUFReader(str(q)).tensors:
            if t.tensor_type.name != tname:
                continue
            x = np.asarray(src[t.name].data, np.float32)
            shape = tuple(int(s) for s in reversed(list(t.shape)))
            x = x.reshape(-1, shape[-1])
            imp = matrix_weights(ours, t.name, shape)
            w = np.ones_like(x) if imp is None else imp[np.arange(x.shape[0]) // (x.shape[0] // imp.shape[0])]
            theirs = dequantize(np.asarray(t.data), gguf.GGMLQuantizationType[tname]).reshape(x.shape)
            mine_bytes = quantizers[tname](x, w if imp is not None else None)
            mine = dequantize(np.asarray(mine_bytes).reshape(-1), gguf.GGMLQuantizationType[tname]).reshape(x.shape)
            num_o += float((w * (x - mine) ** 2).sum())
            num_t += float((w * (x - theirs) ** 2).sum())
            den += float(w.sum())
            n += 1
        if n == 0:
            print(f"| {tname} | 0 | - | - | - |")
            continue
        ro, rt = (num_o / den) ** 0.5, (num_t / den) ** 0.5
        print(f"| {tname} | {n} | {ro:.6f} | {rt:.6f} | {ro / rt:.3f} |")
    if a.kl:
        kl_both_ways(a, f32, ours_im, held_out)
    return 0


def kl_both_ways(a, f32: Path, imatrix: Path, text: str) -> None:
    from gguf import GGUFReader

    import pyv4

    ours, theirs = a.out / "pyv4-q2.gguf", a.out / "llama-q2-mix.gguf"
    run([sys.executable, "-m", "pyv4.cli", "requantize", f32, ours, "--recipe", "q2", "--imatrix", imatrix, "-q"])
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(ours)).tensors}
    # every tensor named exactly (llama-quantize matches the names as regular
    # expressions: anchor them, escape the dots); Q8_0 is the --pure default
    lines = [f"^{n.replace('.', '[.]')}$={ty.lower()}" for n, ty in types.items()]
    type_file = a.out / "q2-mix-types.txt"
    type_file.write_text("\n".join(lines) + "\n")
    run([a.tools / "llama-quantize", "--imatrix", imatrix, "--tensor-type-file", type_file, "--pure",
         f32, theirs, "Q8_0", "2"])
    got = {t.name: t.tensor_type.name for t in GGUFReader(str(theirs)).tensors}
    differ = {n: (types[n], got.get(n)) for n in types if got.get(n) != types[n]}
    if differ:
        raise SystemExit(f"llama-quantize wrote other types than pyv4's q2 file: {differ}")

    def log_probs(m: pyv4.Model, ids) -> np.ndarray:
        x = m.new_session(kv="f32").eval(ids, logits="all").astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ref_model = pyv4.Model(f32)
    ids = np.asarray(ref_model.tokenizer.encode(text), np.int64)[: a.kl_positions]
    if len(ids) < a.kl_positions:
        raise SystemExit(f"held-out text has only {len(ids)} tokens")
    ref = log_probs(ref_model, ids)
    del ref_model
    p = np.exp(ref)
    # the floor: the same text through the recipe's non-expert types alone (all Q8_0)
    q8 = a.out / "pyv4-q8.gguf"
    run([sys.executable, "-m", "pyv4.cli", "requantize", f32, q8, "--recipe", "q8", "-q"])
    kl = {}
    for name, path in (("pyv4", ours), ("llama.cpp", theirs), ("Q8_0 only (floor)", q8)):
        lq = log_probs(pyv4.Model(path), ids)
        per_pos = (p * (ref - lq)).sum(axis=1)
        top1 = float((lq.argmax(axis=1) == ref.argmax(axis=1)).mean())
        kl[name] = (float(per_pos.mean()), float(np.median(per_pos)), top1)
    print(f"\nq2 mix ({sum(ty in ('IQ2_XXS', 'Q2_K') for ty in types.values())} 2-bit tensors: experts gate/up IQ2_XXS, down Q2_K, "
          f"the rest as the mxfp4 recipe), {len(ids)} positions, KV f32, pyv4's fast path for every file:\n")
    print("| file | mean KL(F32 \\|\\| file) | median KL | top-1 agreement with F32 |")
    print("|---|---|---|---|")
    for name, (mean, median, top1) in kl.items():
        print(f"| {name} | {mean:.5f} | {median:.5f} | {top1:.3f} |")
    print(f"\npyv4 / llama.cpp mean KL: {kl['pyv4'][0] / kl['llama.cpp'][0]:.3f} (target <= 1.10)")


if __name__ == "__main__":
    sys.exit(main())
