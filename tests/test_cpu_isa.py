"""Every instruction-set build of the CPU step kernels (DEFAULT, AVX2, AVX512 where the CPU has
them) computes the same function, forward and backward; the best one is used by default."""
import pytest
import torch

import fused_rnn
from helpers import assert_close, assert_grads_close


@pytest.fixture
def restore_isa():
    active = fused_rnn.cpu_isa()
    yield
    fused_rnn.set_cpu_isa(active)


def run(cell, isa, dtype):
    fused_rnn.set_cpu_isa(isa)
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(7, 37, dtype=dtype)  # 37: full vectors and a partial tail
    x = torch.randn(6, 5, 7, dtype=dtype, requires_grad=True)
    out, state = m(x)
    h = state[0] if isinstance(state, tuple) else state
    g = torch.autograd.grad((out.square().sum() + h.sum()), [x, *m.parameters()])
    return [out, h], list(g)


def test_best_build_is_default_choice():
    assert fused_rnn.cpu_isa() == fused_rnn.available_cpu_isas()[-1]
    assert fused_rnn.available_cpu_isas()[0] == "DEFAULT"


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_every_build_matches_portable_build(cell, dtype, restore_isa):
    base_out, base_grads = run(cell, "DEFAULT", dtype)
    for isa in fused_rnn.available_cpu_isas()[1:]:
        out, grads = run(cell, isa, dtype)
        for a, b in zip(out, base_out):
            assert_close(a, b, dtype, f"{isa} output")
        assert_grads_close(grads, base_grads, dtype, [f"{isa} grad {i}" for i in range(len(grads))])
