"""torch.autograd.gradcheck in float64 through the fused operators' backward."""
import pytest
import torch

import fused_rnn
from helpers import DEVICES


def params(G, I, H, bias, device):
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)
    return [mk(G * H, I) * 0.5, mk(G * H, H) * 0.5] + ([mk(G * H), mk(G * H)] if bias else [None, None])


def leaf(t):
    return None if t is None else t.detach().requires_grad_(True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_major", [False, True])
def test_gru_gradcheck(device, bias, reverse, batch_major):
    torch.manual_seed(0)
    T, B, I, H = 4, 2, 3, 5
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(B, T, I, **f64).transpose(0, 1) if batch_major else torch.randn(T, B, I, **f64)
    x = leaf(x) if not batch_major else x.detach().requires_grad_(True)
    hx = leaf(torch.randn(B, H, **f64))
    w = [leaf(p) for p in params(3, I, H, bias, device)]
    fn = lambda x, hx, *w: fused_rnn.gru_layer(x, hx, *w, reverse=reverse)
    assert torch.autograd.gradcheck(fn, (x, hx, *w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_major", [False, True])
def test_lstm_gradcheck(device, bias, reverse, batch_major):
    torch.manual_seed(0)
    T, B, I, H = 4, 2, 3, 5
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(B, T, I, **f64).transpose(0, 1) if batch_major else torch.randn(T, B, I, **f64)
    x = x.detach().requires_grad_(True)
    hx, cx = leaf(torch.randn(B, H, **f64)), leaf(torch.randn(B, H, **f64))
    w = [leaf(p) for p in params(4, I, H, bias, device)]
    fn = lambda x, hx, cx, *w: fused_rnn.lstm_layer(x, hx, cx, *w, reverse=reverse)
    assert torch.autograd.gradcheck(fn, (x, hx, cx, *w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_module_gradcheck_deep_bidirectional(device, cell):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                 dtype=torch.float64, device=device)
    x = torch.randn(2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, *ps):
        out, state = torch.func.functional_call(m, dict(zip(dict(m.named_parameters()), ps)), (x,))
        return (out, *(state if cell == "LSTM" else (state,)))

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_(True) for p in m.parameters()]))
