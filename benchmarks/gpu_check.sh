#!/usr/bin/env bash
# The prepared GPU check, one script for a machine with an NVIDIA GPU (written for the lent
# H100 / H200 box: python3 3.12 with torch 2.11.0+cu130, nvcc 13.0, ninja, no network; it starts
# bare).
#   1. builds fused_rnn in place against that machine's own torch (no pip, no downloads), or takes
#      the extension benchmarks/gpu_prebuild.sh built for it on a CPU machine (.gpu_prebuilt/,
#      carried; used only where its stamp matches the sources, Python and torch here)
#   2. runs the CUDA tests twice: CUDA path 'auto' (the persistent kernels wherever they suit the
#      shapes; tests/test_cuda_paths.py forces each path in turn) and FUSED_RNN_CUDA_PATH=general
#   3. compute-sanitizer memcheck + racecheck on a small forward+backward of every kernel, with
#      the persistent kernels forced, and memcheck on the general path
#   4. the persistent kernels' tuning sweep (benchmarks/persistent_sweep.py: the variants of
#      barrier, product, staging and exchange against nn.* in one interleaved run, then their
#      phase clocks, point by point, most telling point first, within SWEEP_TIMEOUT; a variant
#      that loses the CUDA context is left out and the sweep goes on in a new process)
#   5. the GPU benchmark (benchmarks/bench.py --device cuda, fp32 and bf16): nn.* on cuDNN
#      against the fused layer on the persistent and on the general path, TF32 as PyTorch's
#      defaults (stated in the report), and issue 7's targets read off it
#      (benchmarks/gpu_targets.py)
# Writes report.md, the logs, gpu_benchmark.json and sweep.json into $OUT (default
# benchmarks/results/gpu_check_out): 8 files, the device tool's limit.
#   QUICK=1 bash benchmarks/gpu_check.sh   # small benchmark grid
#   BENCH_ARGS="--full --cells GRU --T 512 --B 16 64" bash benchmarks/gpu_check.sh
# Every step has a time limit (TEST_TIMEOUT, SANITIZER_TIMEOUT, SWEEP_TIMEOUT, BENCH_TIMEOUT seconds;
# CALL_BUDGET_S for the whole call: later steps skipped, the sweep shortened), so the
# check can be cut to fit one call of the device tool (600 s). Every step: about 11 minutes on
# the H200 (estimated from run 6 plus the version-4 steps), more than one call allows; the
# report keeps what a cut-off call finished (benchmarks/persistent_kernel_notes.md, "Next GPU
# session", gives a first call that fits). STEPS chooses and orders the steps after the build
# (default: tests:auto sanitizer:persistent:memcheck
# sanitizer:persistent:racecheck sanitizer:persistent:memcheck:counter
# sanitizer:persistent:memcheck:grid:mma:async sanitizer:persistent:racecheck:grid:mma:async
# sanitizer:persistent:memcheck:cluster:mma:async:dsmem
# sanitizer:persistent:racecheck:cluster:mma:async:dsmem sanitizer:persistent:memcheck:grid:fma:shared
# sanitizer:persistent:racecheck:grid:fma:shared sanitizer:persistent:memcheck:tagged
# sanitizer:persistent:memcheck:grid:mma:loads:l2:8 sanitizer:persistent:racecheck:grid:fma:loads:l2:8
# sweep bench tests:general
# sanitizer:general:memcheck; a sanitizer step's 4th to 8th fields are
# FUSED_RNN_PERSISTENT_BARRIER, _PRODUCT, _STAGING, _EXCHANGE and _SPLIT).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_check_out}"
mkdir -p "$OUT"
py="${PYTHON:-python3}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
report="$OUT/report.md"
status() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$report"; }
t0=$(date +%s)
{
  echo "# fused_rnn GPU check ($(date -u +%Y-%m-%d))"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  "$py" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")'
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
} > "$report"

s=$(date +%s)
# An extension built for this box on a CPU machine (benchmarks/gpu_prebuild.sh, carried in
# .gpu_prebuilt/): used where its stamp matches these sources, this Python and this torch and it
# imports with its CUDA kernels; anything else builds here as before.
prebuilt=""
: > "$OUT/build.log"
if [ -f .gpu_prebuilt/stamp ] && ls .gpu_prebuilt/_C*.so > /dev/null 2>&1; then
  here_stamp=$(PYTHON="$py" bash benchmarks/gpu_stamp.sh "$PWD" "$TORCH_CUDA_ARCH_LIST" 2>&1)
  built_stamp=$(cat .gpu_prebuilt/stamp)
  if [ "$here_stamp" = "$built_stamp" ]; then
    rm -f fused_rnn/_C*.so && cp .gpu_prebuilt/_C*.so fused_rnn/
    if "$py" -c 'import torch, fused_rnn; assert fused_rnn._C.built_with_cuda' >> "$OUT/build.log" 2>&1; then
      prebuilt="prebuilt ($here_stamp)"
    else
      rm -f fused_rnn/_C*.so; echo "prebuilt extension did not import: building" >> "$OUT/build.log"
    fi
  else
    echo "prebuilt stamp '$built_stamp' is not this box's '$here_stamp': building" >> "$OUT/build.log"
  fi
fi
if [ -n "$prebuilt" ]; then
  rc=0; status build "$prebuilt" $(( $(date +%s) - s ))
else
  timeout 300 "$py" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1
  rc=$?; status build "rc=$rc" $(( $(date +%s) - s ))
fi
if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; cat "$report"; exit 1; fi
# the toolchain the extension was built with and the C++ runtime it loads (run 5 found a copy of
# std::ostream::_M_insert<long> inside the extension that crashed: checks.h, num())
built_with="$(${CXX:-c++} --version 2>&1 | head -1) ($(command -v ${CXX:-c++}))"
[ -n "$prebuilt" ] && built_with="$(cat .gpu_prebuilt/toolchain 2>/dev/null || echo unknown), on a CPU machine"
{ echo; echo "Built with: $built_with; loads" \
    "$(ldd fused_rnn/_C*.so 2>/dev/null | grep -o '/[^ ]*libstdc++[^ ]*' | head -1);" \
    "ostream instantiations inside: $(nm -C fused_rnn/_C*.so 2>/dev/null | grep -c ' [TW] .*basic_ostream')"
  echo; } >> "$OUT/build.log"

# pytest-xdist and pytest-timeout are on the lent box's image; plain pytest where they are not.
# The timeout's thread method ends a worker whose test hangs inside a CUDA call (the signal
# method waits for the call to return); xdist replaces the worker, as it does one that exits
# after a lost CUDA context (tests/cuda_context_guard.py)
par=""; "$py" -c "import xdist, pytest_timeout" 2>/dev/null && par="-n 8 --timeout 90 --timeout-method thread"
sanitizer="$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")"
: > "$OUT/sanitizer.log"

run_tests() {  # $1: CUDA path
  local log="$OUT/tests.log"; [ "$1" = general ] && log="$OUT/tests_general.log"
  local s=$(date +%s)
  FUSED_RNN_CUDA_PATH=$1 timeout "${TEST_TIMEOUT:-240}" "$py" -m pytest -q -p no:cacheprovider \
    $par tests -k "${TEST_FILTER:-cuda}" > "$log" 2>&1
  local rc=$?; status "CUDA tests, path $1" "rc=$rc, $(tail -1 "$log")" $(( $(date +%s) - s ))
  if [ $rc -ne 0 ]; then
    { echo; echo '```'; grep -E "^FAILED|^ERROR|Error:|Timeout" "$log" | head -30; echo '```'; } >> "$report"
  fi
}

run_sanitizer() {  # $1: CUDA path, $2: memcheck or racecheck, $3: barrier (default grid),
                  # $4: product (default fma), $5: staging (default loads), $6: exchange (l2),
                  # $7: blocks splitting the reduction (default 1: none)
  local s=$(date +%s) barrier="${3:-grid}" product="${4:-fma}" staging="${5:-loads}" exchange="${6:-l2}" split="${7:-1}"
  if [ -x "$sanitizer" ]; then
    echo "=== path $1, $2, barrier $barrier, product $product, staging $staging, exchange $exchange, split $split" >> "$OUT/sanitizer.log"
    FUSED_RNN_CUDA_PATH=$1 FUSED_RNN_PERSISTENT_BARRIER=$barrier \
      FUSED_RNN_PERSISTENT_PRODUCT=$product FUSED_RNN_PERSISTENT_STAGING=$staging \
      FUSED_RNN_PERSISTENT_EXCHANGE=$exchange FUSED_RNN_PERSISTENT_SPLIT=$split \
      timeout "${SANITIZER_TIMEOUT:-120}" "$sanitizer" --tool "$2" \
      --error-exitcode 9 "$py" benchmarks/gpu_sanitize_case.py >> "$OUT/sanitizer.log" 2>&1
    local rc=$?
    status "compute-sanitizer $2, path $1, barrier $barrier, $product, $staging, $exchange, split $split" "rc=$rc, $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1)" $(( $(date +%s) - s ))
  else
    status "compute-sanitizer $2" "not installed" 0
  fi
}

run_bench() {
  local s=$(date +%s) grid
  if [ -n "${BENCH_ARGS:-}" ]; then grid="$BENCH_ARGS"
  elif [ -n "${QUICK:-}" ]; then grid="--quick"; else grid="--full --min-run-time 0.03"; fi
  timeout "${BENCH_TIMEOUT:-300}" "$py" benchmarks/bench.py $grid --device cuda \
    --dtype float32 bfloat16 --cuda-path persistent general \
    --json "$OUT/gpu_benchmark.json" --md "$OUT/gpu_benchmark.md" > "$OUT/benchmark.log" 2>&1
  local rc=$?; status benchmark "rc=$rc" $(( $(date +%s) - s ))
  if [ $rc -ne 0 ]; then { echo; echo '```'; tail -20 "$OUT/benchmark.log"; echo '```'; } >> "$report"; fi
  # issue 7's targets from the rows measured (appended to the report at the end)
  [ -s "$OUT/gpu_benchmark.json" ] && "$py" benchmarks/gpu_targets.py "$OUT/gpu_benchmark.json" \
    > "$OUT/gpu_targets.md" 2>> "$OUT/benchmark.log"
}

run_sweep() {
  local s=$(date +%s)
  local limit="${SWEEP_TIMEOUT:-200}"  # the sweep starts no point that would end within 20 s of it
  if [ -n "${CALL_BUDGET_S:-}" ]; then  # and ends 15 s before the call's budget
    local left=$(( CALL_BUDGET_S - (s - t0) - 15 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 40 ]; then status "persistent tuning sweep" "skipped: ${limit} s left of CALL_BUDGET_S" 0; return; fi
  fi
  # a variant that loses the CUDA context (a sticky error: an illegal address, a kernel's trap)
  # ends the sweep's process with status 75 after writing what it has; it goes on in a new
  # process (--resume) without that variant, within the same limit
  local deadline=$(( s + limit )) resume="" rc restarts=0
  while :; do
    local left=$(( deadline - $(date +%s) ))
    timeout "$left" "$py" benchmarks/persistent_sweep.py --budget-s $(( left - 20 )) \
      ${SWEEP_ARGS:-} $resume --json "$OUT/sweep.json" --md "$OUT/sweep.md" >> "$OUT/benchmark.log" 2>&1
    rc=$?
    if [ $rc -ne 75 ] || [ $(( deadline - $(date +%s) )) -lt 40 ]; then break; fi
    resume="--resume"; restarts=$(( restarts + 1 ))
  done
  status "persistent tuning sweep" "rc=$rc$([ $restarts -gt 0 ] && echo ", $restarts restarts after a lost CUDA context")" $(( $(date +%s) - s ))
}

# A crash (SIGSEGV) of a test under cuda-gdb, for its C++ backtrace: DEBUG_TEST names the test.
run_debug() {
  local s=$(date +%s) gdb="$(command -v cuda-gdb || echo "$CUDA_HOME/bin/cuda-gdb")"
  timeout "${DEBUG_TIMEOUT:-90}" "$gdb" -q -batch -ex "set pagination off" -ex run -ex bt \
    --args "$py" -m pytest -q -p no:cacheprovider "${DEBUG_TEST:?}" > "$OUT/debug.log" 2>&1
  local rc=$?; status "cuda-gdb run of $DEBUG_TEST" "rc=$rc, $(grep -cE '^#[0-9]+' "$OUT/debug.log") frames" $(( $(date +%s) - s ))
}

# STEPS: what runs, in this order (most important first, so a cut-off run still reports them)
# CALL_BUDGET_S (optional): the seconds this call may take in all (the device tool's timeout_s
# less a margin); a step that would start past it is skipped and the sweep is shortened to fit,
# so that the report and the files under $OUT are written before the call is killed.
for step in ${STEPS:-tests:auto sanitizer:persistent:memcheck sanitizer:persistent:racecheck sanitizer:persistent:memcheck:counter sanitizer:persistent:memcheck:grid:mma:async sanitizer:persistent:racecheck:grid:mma:async sanitizer:persistent:memcheck:cluster:mma:async:dsmem sanitizer:persistent:racecheck:cluster:mma:async:dsmem sanitizer:persistent:memcheck:grid:fma:shared sanitizer:persistent:racecheck:grid:fma:shared sanitizer:persistent:memcheck:tagged sanitizer:persistent:memcheck:grid:mma:loads:l2:8 sanitizer:persistent:racecheck:grid:fma:loads:l2:8 sweep bench tests:general sanitizer:general:memcheck}; do
  IFS=: read -r kind a b c d e f g <<< "$step"
  if [ -n "${CALL_BUDGET_S:-}" ] && [ $(( $(date +%s) - t0 )) -ge "$CALL_BUDGET_S" ]; then
    status "$step" "skipped: CALL_BUDGET_S=$CALL_BUDGET_S reached" 0; continue
  fi
  case $kind in
    tests) run_tests "$a" ;;
    sanitizer) run_sanitizer "$a" "$b" "$c" "$d" "$e" "$f" "$g" ;;
    sweep) run_sweep ;;
    debug) run_debug ;;
    bench) run_bench ;;
  esac
done

{ echo; echo "Total $(( $(date +%s) - t0 )) s."; echo; tail -2 "$OUT/build.log"; echo
  for f in sweep.md gpu_benchmark.md gpu_targets.md; do [ -f "$OUT/$f" ] && { cat "$OUT/$f"; echo; }; done
} >> "$report"
# in report.md; the device tool brings back 8 files at most
rm -f "$OUT/gpu_benchmark.md" "$OUT/sweep.md" "$OUT/gpu_targets.md"
grep -E "^FAILED|^ERROR" "$OUT"/tests*.log | head -20
head -16 "$report"
