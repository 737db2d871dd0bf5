#!/usr/bin/env bash
# What an extension build depends on, as one line: the hash of setup.py and every file under
# csrc/, the CUDA architectures, and $PYTHON's version and torch (version and git commit).
# gpu_prebuild.sh writes it next to the extension it built here; gpu_check.sh computes it on the
# GPU box and uses the prebuilt extension only where the two lines are equal.
#   PYTHON=python3 bash benchmarks/gpu_stamp.sh [root] [arch list]
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
arch="${2:-${TORCH_CUDA_ARCH_LIST:-9.0}}"
sources=$(cd "$root" && find setup.py csrc -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
runtime=$("${PYTHON:-python3}" -c 'import sys, torch; v = sys.version_info; git = (torch.version.git_version or "")[:12]; print(f"python{v[0]}.{v[1]} torch{torch.__version__}@{git}")')
echo "sources=$sources arch=$arch $runtime"
