#!/usr/bin/env bash
# Builds fused_rnn._C HERE (no GPU needed) for the lent GPU box, so that the box's device time
# is not spent compiling (run 6: the build was ~130 s of a ~10-minute first call, out of 15
# minutes of device time per task). The box has python3 3.12 with torch 2.11.0+cu130 and nvcc
# 13.0; this script makes a Python 3.12 venv with that torch (pip, ~4.7 GB, ~40 s from PyPI),
# builds the extension against it with this machine's nvcc 13.0 for sm_90 (TORCH_CUDA_ARCH_LIST
# 9.0, as gpu_check.sh builds) in a scratch copy of the tracked sources, and writes
#   .gpu_prebuilt/_C.cpython-312-x86_64-linux-gnu.so   the extension
#   .gpu_prebuilt/stamp                                what it was built from (gpu_stamp.sh)
# .gpu_prebuilt/ is ignored by git; hand it to the device tool with carry: [".gpu_prebuilt"].
# gpu_check.sh uses it only where the stamp matches the box's sources, Python and torch and the
# extension imports with its CUDA kernels; otherwise it builds on the box as before (the report's
# build row says which).
#
#   bash benchmarks/gpu_prebuild.sh
#   PY312=/path/to/python3.12 PREBUILD_VENV=/tmp/venv bash benchmarks/gpu_prebuild.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${PREBUILD_VENV:-/tmp/fused_rnn_gpu_prebuild_venv}"
# a python3.12 that runs (a pyenv shim on PATH may exist without the version being active)
py312="${PY312:-}"
if [ -z "$py312" ]; then
  for cand in "$(command -v python3.12 2>/dev/null || true)" /root/.pyenv/versions/3.12*/bin/python3.12; do
    if [ -x "$cand" ] && "$cand" -c 'import sys' 2>/dev/null; then py312="$cand"; break; fi
  done
fi
torch_req="${PREBUILD_TORCH:-torch==2.11.0}"   # the box's torch (2.11.0+cu130)
arch="${TORCH_CUDA_ARCH_LIST:-9.0}"
[ -x "$py312" ] || { echo "no python3.12 found (set PY312)" >&2; exit 2; }
if [ ! -x "$venv/bin/python" ]; then
  "$py312" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q "$torch_req" numpy ninja pybind11 "setuptools<82" wheel
"$venv/bin/python" -c 'import torch; assert torch.version.cuda, torch.__version__'

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
git ls-files -z | xargs -0 tar cf - | tar xf - -C "$scratch"
start=$(date +%s)
(cd "$scratch" && CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" \
   MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" setup.py -q build_ext --inplace > "$scratch/build.log" 2>&1) \
  || { tail -40 "$scratch/build.log"; exit 1; }
mkdir -p .gpu_prebuilt
rm -f .gpu_prebuilt/_C*.so
cp "$scratch"/fused_rnn/_C*.so .gpu_prebuilt/
# the host code's DWARF (~35 of 54 MB) off, its symbols kept: the device tool carries 64 MiB in
# all; the device code (.nv_fatbin, -lineinfo for compute-sanitizer) stays as built
strip --strip-debug .gpu_prebuilt/_C*.so
# the stamp of the sources as they were copied (the scratch tree) and of the venv's Python + torch
PYTHON="$venv/bin/python" bash "$scratch/benchmarks/gpu_stamp.sh" "$scratch" "$arch" > .gpu_prebuilt/stamp
echo "$(${CXX:-c++} --version 2>&1 | head -1), $("${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version | tail -1)" \
  > .gpu_prebuilt/toolchain
echo "built in $(( $(date +%s) - start )) s:"
ls -la .gpu_prebuilt
cat .gpu_prebuilt/stamp
