"""CPU kernel builds and backends. Every instruction-set build of the CPU step kernels (DEFAULT, AVX2, AVX512, AVX512_BF16 where
the CPU has them) computes the same function, forward and backward; the best one is used by default. (AVX512_BF16's bfloat16
products: tests/test_cpu_bfloat16_dot_products.py.)"""
import subprocess
import sys

import pytest
import torch

import fused_rnn
from helpers import assert_close, assert_grads_close


@pytest.fixture
def restore_isa():
    active = fused_rnn.cpu_isa()
    yield
    fused_rnn.set_cpu_isa(active)


def make(cell, hidden, dtype):
    if cell == "GRU-textbook":
        return fused_rnn.GRU(7, hidden, reset_after=False, dtype=dtype)
    return getattr(fused_rnn, cell)(7, hidden, dtype=dtype)


def run(cell, isa, dtype, hidden=37):
    fused_rnn.set_cpu_isa(isa)
    torch.manual_seed(0)
    m = make(cell, hidden, dtype)
    # 7 steps x 5 rows: >= 32 rows in all, so that the per-step GEMM prepares (packs) W
    x = torch.randn(7, 5, 7, dtype=dtype, requires_grad=True)
    out, state = m(x)
    h = state[0] if isinstance(state, tuple) else state
    g = torch.autograd.grad((out.square().sum() + h.sum()), [x, *m.parameters()])
    return [out, h], list(g)


def test_best_build_is_default_choice():
    assert fused_rnn.cpu_isa() == fused_rnn.available_cpu_isas()[-1]
    assert fused_rnn.available_cpu_isas()[0] == "DEFAULT"


# The step kernels work on groups of 1, 2 or 4 SIMD registers (csrc/cpu/row_kernels.cpp): 37 and
# 70 hidden units give whole groups, a tail with a partial register, and tails that leave
# registers of a group empty, for every build's vector width.
@pytest.mark.parametrize("hidden", [37, 70])
@pytest.mark.parametrize("cell", ["GRU", "GRU-textbook", "LSTM", "RNN"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
def test_every_build_matches_portable_build(cell, dtype, hidden, restore_isa):
    base_out, base_grads = run(cell, "DEFAULT", dtype, hidden)
    for isa in fused_rnn.available_cpu_isas()[1:]:
        out, grads = run(cell, isa, dtype, hidden)
        for a, b in zip(out, base_out):
            assert_close(a, b, dtype, f"{isa} output")
        assert_grads_close(grads, base_grads, dtype, [f"{isa} grad {i}" for i in range(len(grads))])


@pytest.fixture
def restore_gemm():
    active = fused_rnn._C.cpu_gemm_backend()
    yield
    fused_rnn._C.set_cpu_gemm_backend(active)


@pytest.mark.parametrize("backend", ["own-packed", "mkl-packed"])
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_aten_gemm_fallback_matches_packed(cell, backend, restore_gemm):
    """The per-step GEMM on W packed for the library's own kernel (float32, default off Intel
    CPUs), through MKL's packed API (float32 where torch has MKL) and through ATen's mm (float64,
    and torch builds without MKL) give the same results within rounding."""
    try:
        fused_rnn._C.set_cpu_gemm_backend(backend)
    except RuntimeError:
        pytest.skip("this torch has no MKL packed GEMM")
    assert fused_rnn._C.cpu_gemm_backend() == backend
    packed_out, packed_grads = run(cell, fused_rnn.cpu_isa(), torch.float32)
    fused_rnn._C.set_cpu_gemm_backend("aten")
    aten_out, aten_grads = run(cell, fused_rnn.cpu_isa(), torch.float32)
    for a, b in zip(aten_out, packed_out):
        assert_close(a, b, torch.float32, "output")
    assert_grads_close(aten_grads, packed_grads, torch.float32, [f"grad {i}" for i in range(len(aten_grads))])


def test_default_gemm_backend_is_own_packed():
    """The own packed kernel on every CPU (measured ahead of MKL's packed API as complete rule
    sets on an AMD EPYC and a Sapphire Rapids Xeon)."""
    saved = fused_rnn._C.cpu_gemm_backend()
    code = "import fused_rnn; print(fused_rnn._C.cpu_gemm_backend())"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert got == "own-packed"
    assert fused_rnn._C.cpu_gemm_backend() == saved


def test_unknown_gemm_backend():
    with pytest.raises(RuntimeError, match="unknown gemm backend 'cublas'; expected 'own-packed', "
                                           "'mkl-packed' or 'aten'"):
        fused_rnn._C.set_cpu_gemm_backend("cublas")
