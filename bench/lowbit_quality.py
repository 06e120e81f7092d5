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
2. `llama-quantize --imatrix ours.imatrix` to IQ2_XXS, Q2_K and Q3_K
   (llama.cpp accepting our file), and pyv4's quantizers (convert/quants_lowbit.py)
   on the same F32 tensors with the same importance vectors;
3. per tensor that llama.cpp stored in a low-bit type, both tools' results
   dequantized (gguf.quants) and compared with the F32 weights: RMSE weighted by
   the importance of each input column (sum w_c (x - q)^2 / sum w_c), pooled
   per type. Reported: ours / theirs (the target: <= 1.02).
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
FTYPES = {"IQ2_XXS": "IQ2_XXS", "Q2_K": "Q2_K", "Q3_K": "Q3_K_M"}


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
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)

    import gguf
    from gguf import GGMLQuantizationType as T, GGUFReader
    from gguf.quants import dequantize

    from pyv4.convert.imatrix import load_imatrix, matrix_weights
    from pyv4.convert.quants_lowbit import iq2_xxs_quantize, q2_k_quantize, q3_k_quantize
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
    ours_im, theirs_im = a.out / "ours.imatrix", a.out / "theirs.imatrix"
    run([sys.executable, "-m", "pyv4.cli", "imatrix", f32, "-f", calib, "-o", ours_im,
         "--chunk-size", "512", "--chunks", a.chunks])
    run([a.tools / "llama-imatrix", "-m", f32, "-f", calib, "-o", theirs_im, "-c", "512",
         "--chunks", a.chunks, "-t", "2"])
    print(f"llama-imatrix wrote {theirs_im.name}; pyv4 reads it: {len(load_imatrix(theirs_im))} entries")
    ours = load_imatrix(ours_im)
    print(f"pyv4 imatrix wrote {ours_im.name}: {len(ours)} entries")

    src = {t.name: t for t in GGUFReader(str(f32)).tensors}
    quantizers = {"IQ2_XXS": iq2_xxs_quantize, "Q2_K": q2_k_quantize, "Q3_K": q3_k_quantize}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
