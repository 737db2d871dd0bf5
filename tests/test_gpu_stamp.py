"""benchmarks/gpu_stamp.sh: the line that decides whether the GPU check may use an extension
built on a CPU machine (benchmarks/gpu_prebuild.sh) instead of building on the GPU box. Equal for
the same sources, architectures, Python and torch; different when any of them changes."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAMP = ROOT / "benchmarks" / "gpu_stamp.sh"


def stamp(root, arch="9.0"):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(STAMP), str(root), arch], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tree(tmp_path):
    # tree: a copy of what the build reads (setup.py, csrc/)
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    return tmp_path


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="no sha256sum")
def test_stamp_names_sources_arch_python_and_torch(tree):
    first = stamp(tree)
    assert first == stamp(tree)  # stable
    assert first == stamp(ROOT)  # the sources, not where they lie
    v = sys.version_info
    assert f"arch=9.0 python{v[0]}.{v[1]} torch{torch.__version__}@" in first
    assert stamp(tree, "8.0;9.0") != first

    gates = tree / "csrc" / "gates.h"
    original = gates.read_bytes()
    gates.write_bytes(original + b"\n")
    assert stamp(tree) != first
    gates.write_bytes(original)
    assert stamp(tree) == first

    (tree / "csrc" / "cuda" / "new_kernel.cu").write_text("// a new file\n")
    assert stamp(tree) != first
    (tree / "csrc" / "cuda" / "new_kernel.cu").unlink()
    (tree / "setup.py").write_text((tree / "setup.py").read_text() + "# changed\n")
    assert stamp(tree) != first
