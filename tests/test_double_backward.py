"""Double backward is not supported: differentiating a gradient that went through a fused layer
raises a clear error (instead of silently dropping the second-order terms), for every cell and
both routes a second-order term can take (input gradient, parameter gradient); a plain
create_graph=True backward still works and gives the first-order gradients."""
import pytest
import torch
from torch import nn

import fused_rnn
from helpers import DEVICES, GRAD_TOL

CELLS = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 2}),
         ("RNN", {})]
IDS = ["gru", "gru_textbook", "lstm", "lstm_proj", "rnn"]


def model(cell, kw, device):
    torch.manual_seed(0)
    return getattr(fused_rnn, cell)(3, 4, num_layers=2, device=device, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_double_backward_through_input_gradient_raises(cell, kw, device):
    m = model(cell, kw, device)
    x = torch.randn(5, 2, 3, device=device, requires_grad=True)
    out, _ = m(x)
    g, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"double backward is not supported: a gradient "
                                           f"computed through {cell}"):
        (g.square().sum() + x.sum()).backward()


@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_gradient_penalty_on_parameters_raises(cell, kw):
    m = model(cell, kw, "cpu")
    out, _ = m(torch.randn(5, 2, 3))
    gs = torch.autograd.grad(out.square().sum(), list(m.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        sum(g.square().sum() for g in gs).backward()


@pytest.mark.parametrize("cell,kw", [c for c in CELLS if c[1] == {}], ids=["gru", "lstm", "rnn"])
def test_create_graph_first_order_gradients_still_right(cell, kw):
    m = model(cell, kw, "cpu")
    ref = getattr(nn, cell)(3, 4, num_layers=2)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    got, = torch.autograd.grad(m(x)[0].square().sum(), x, create_graph=True)
    want, = torch.autograd.grad(ref(x)[0].square().sum(), x)
    torch.testing.assert_close(got, want, **GRAD_TOL[torch.float32])
