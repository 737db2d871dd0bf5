"""TorchScript: torch.jit.trace records the fused operators (the trace passes its own check,
can be saved and loaded, and the loaded module trains with nn.*'s numbers); torch.jit.script
is refused with an error that says what to use instead."""
import io
import warnings

import pytest
import torch
from torch import nn

import fused_rnn
from helpers import DEVICES, GRAD_TOL, TOL

CELLS = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 2}),
         ("RNN", {})]
IDS = ["gru", "gru_textbook", "lstm", "lstm_proj", "rnn"]


def traced(module, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's warnings on Python values in the forward
        return torch.jit.trace(module, (x,))  # check_trace on: traces again under no_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_trace_save_load_trains_like_the_module(cell, kw, device):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                 device=device, **kw)
    program = traced(m, torch.randn(2, 5, 3, device=device))  # x: [B, T, I]
    assert sum(f"fused_rnn::{cell.lower()}" in n.kind() for n in program.graph.nodes()) == 4
    buf = io.BytesIO()
    torch.jit.save(program, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf, map_location=device)
    # another batch size and length than traced with
    x = torch.randn(3, 7, 3, device=device, requires_grad=True)
    got = loaded(x)[0]
    got.square().sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    want = m(xr)[0]
    want.square().sum().backward()
    torch.testing.assert_close(got, want, **TOL[torch.float32])
    torch.testing.assert_close(x.grad, xr.grad, **GRAD_TOL[torch.float32])
    for (name, p), q in zip(m.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **GRAD_TOL[torch.float32], msg=name)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], want, **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_traced_module_matches_nn(cell):
    torch.manual_seed(0)
    ref = getattr(nn, cell)(3, 4)
    m = getattr(fused_rnn, cell)(3, 4)
    m.load_state_dict(ref.state_dict())
    program = traced(m, torch.randn(5, 2, 3))
    x = torch.randn(6, 4, 3)
    torch.testing.assert_close(program(x)[0], ref(x)[0], **TOL[torch.float32])


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_script_raises_a_clear_error(cell):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation warning
        for module in (getattr(fused_rnn, cell)(3, 4),
                       nn.Sequential(nn.Linear(3, 3), getattr(fused_rnn, cell)(3, 4))):
            with pytest.raises(RuntimeError, match=f"fused_rnn.{cell} cannot be compiled by "
                                                   f"torch.jit.script .* torch.jit.trace"):
                torch.jit.script(module)
