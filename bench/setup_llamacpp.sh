#!/usr/bin/env bash
# Builds the benchmark peer, llama-cpp-python 0.3.36, from source into
# bench/.venv-llamacpp (about 4 minutes on 2 cores). Not a test dependency.
# CPU-only, native ISA (it is a local benchmark peer, not something we ship).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llamacpp"
python3 -m venv --system-site-packages "$venv"
export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=ON"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
"$venv/bin/pip" install --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==0.3.36"
"$venv/bin/pip" install matplotlib  # bench/compare.py --plot draws with it
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
