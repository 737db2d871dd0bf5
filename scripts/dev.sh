#!/usr/bin/env bash
# Set up a virtual environment, build fused_rnn into it, and run something.
#
#   bash scripts/dev.sh demo    # the main job: character language model, fused vs nn.GRU
#                               # (10 epochs on the built-in corpus, side by side)
#   bash scripts/dev.sh test    # the test suite
#   bash scripts/dev.sh bench   # benchmark suite (quick preset), fused vs nn.GRU / LSTM / RNN
#   bash scripts/dev.sh setup   # only set up and build
#
# Environment (all optional):
#   FUSED_RNN_VENV   where the venv lives (default: .venv in the repository)
#   FUSED_RNN_TORCH  pip requirement for torch (default: "torch>=2.4"; CI pins torch==2.14.1)
#   PYTHON           interpreter that creates the venv (default: python3)
#   FORCE_CUDA=1 / FUSED_RNN_FORCE_CPU=1, CUDA_HOME, TORCH_CUDA_ARCH_LIST: see setup.py
set -euo pipefail

cmd="${1:-test}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${FUSED_RNN_VENV:-$root/.venv}"
torch_req="${FUSED_RNN_TORCH:-torch>=2.4}"

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
echo "== installing $torch_req and build/test requirements"
"$py" -m pip install -q --upgrade pip setuptools wheel
# hypothesis: the property-based conformance tests (tests/test_conformance_hypothesis.py)
"$py" -m pip install -q "$torch_req" numpy ninja pybind11 pytest hypothesis
echo "== building fused_rnn (torch $("$py" -c 'import torch; print(torch.__version__)'))"
MAX_JOBS="${MAX_JOBS:-2}" "$py" -m pip install -q --no-build-isolation --no-deps -e .
"$py" -c 'import fused_rnn; print("fused_rnn built: CPU kernels", fused_rnn.cpu_isa(), "| CUDA kernels", fused_rnn._C.built_with_cuda)'

case "$cmd" in
  setup) ;;
  demo) "$py" examples/char_lm.py --compare --epochs 10 --max-chars 40000 "$@" ;;
  bench) "$py" benchmarks/bench.py --quick "$@" ;;
  test) "$py" -m pytest -q tests "$@" ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|bench|setup} [args...]" >&2; exit 2 ;;
esac
