#!/usr/bin/env bash
# A/B of the CPU step kernels of another checkout (OLD) and this one, in one process, AVX512
# only (see step_kernel_ab.cpp). Needs an AVX512 CPU, g++ and the venv's torch.
#   git worktree add /tmp/old <commit>; bash benchmarks/step_kernel_ab.sh /tmp/old
set -euo pipefail
OLD=$(cd "${1:?usage: step_kernel_ab.sh OLD_CHECKOUT}" && pwd)
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
INC=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))" 2>/dev/null)
LIB=$(python -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
ISA="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -DCPU_CAPABILITY_AVX512"
FLAGS="-O3 -std=c++17 -Wno-unknown-pragmas -Wno-maybe-uninitialized"
g++ $FLAGS $ISA -DCPU_CAPABILITY=AVX512 $INC -c "$OLD/csrc/cpu/row_kernels.cpp" -o "$WORK/old.o"
g++ $FLAGS $ISA -DCPU_CAPABILITY=AVX512X $INC -c "$HERE/csrc/cpu/row_kernels.cpp" -o "$WORK/new.o"
g++ $FLAGS -DFUSED_RNN_CPU_AVX512 $INC -c "$HERE/benchmarks/step_kernel_ab.cpp" -o "$WORK/main.o"
g++ "$WORK/main.o" "$WORK/old.o" "$WORK/new.o" -L"$LIB" -lc10 -ltorch_cpu -Wl,-rpath,"$LIB" \
  -o "$WORK/step_kernel_ab"
"$WORK/step_kernel_ab"
