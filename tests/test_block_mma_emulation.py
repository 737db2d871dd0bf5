"""The persistent kernels' tensor-core product (csrc/cuda/block_products.cuh, block_mma) run on the
host: tests/block_mma_emulation.cpp emulates the block's 256 threads and each mma.sync from the
PTX ISA's fragment layouts, and compares every output of bf16, fp16 and tf32 products (tile
shapes with partial tiles, k split over warps or not) with a float64 reference, checking that
every output is written and nothing else is, and (AddressSanitizer) that nothing outside the
operands is read. Needs a C++ compiler, no GPU."""
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_block_mma_matches_float64_on_every_tile_shape(tmp_path):
    exe = tmp_path / "block_mma_emulation"
    includes = [f"-I{d}" for d in include_paths()]
    cmd = [CXX, "-std=c++17", "-O1", *includes, os.path.join(HERE, "block_mma_emulation.cpp"),
           "-o", str(exe)]
    # AddressSanitizer: a read past W or X (the kernels' shared memory) fails the run
    build = subprocess.run(cmd + ["-fsanitize=address"], capture_output=True, text=True)
    if build.returncode != 0:  # a compiler without it: the results are still checked
        build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and "all cases pass" in run.stdout, run.stdout + run.stderr
    assert run.stdout.count("\nok ") + run.stdout.startswith("ok ") == 30, run.stdout
