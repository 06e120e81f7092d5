#!/usr/bin/env bash
# Builds the benchmark peer, llama-cpp-python 0.3.36, from source into
# bench/.venv-llamacpp (about 4 minutes on 2 cores). Not a test dependency.
# CPU-only, native ISA (it is a local benchmark peer, not something we ship).
#   --avx2: a second peer in bench/.venv-llamacpp-avx2 built for AVX2 + FMA + F16C
#   only (what an Intel desktop without AVX-512 runs), for `compare.py --isa avx2`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llamacpp"
isa_args="-DGGML_NATIVE=ON"
if [ "${1:-}" = "--avx2" ]; then
  venv="$here/.venv-llamacpp-avx2"
  isa_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF"
fi
# On a CPU with AMX (Intel Xeon since Sapphire Rapids) a native build puts the Q8_0
# matrices into ggml's AMX buffer, and the deepseek4 graph then stops in the scheduler
# (ggml-backend.cpp: GGML_ASSERT(*cur_backend_id != -1)) at the first prefill. Built
# without AMX, llama.cpp keeps everything else native (AVX-512, VNNI, its CPU repack).
# GCC keeps explicit -mno-* over what -march=native implies.
if [ "$isa_args" = "-DGGML_NATIVE=ON" ] && grep -q amx_int8 /proc/cpuinfo; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  isa_args="$isa_args -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
fi
python3 -m venv --system-site-packages "$venv"
export CMAKE_ARGS="$isa_args -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=ON"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
"$venv/bin/pip" install --no-binary llama-cpp-python --no-cache-dir "llama-cpp-python==0.3.36"
"$venv/bin/pip" install matplotlib  # bench/compare.py --plot draws with it
# The same release's sources (for llama.cpp's own converter, tests/llamacpp_peer.py convert).
"$venv/bin/pip" download --no-binary llama-cpp-python --no-deps --no-cache-dir "llama-cpp-python==0.3.36" -d "$venv/src"
tar -xzf "$venv/src/llama_cpp_python-0.3.36.tar.gz" -C "$venv/src"
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
