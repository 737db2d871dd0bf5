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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
def test_rnn_gradcheck(device, nonlinearity, reverse):
    torch.manual_seed(0)
    T, B, I, H = 4, 2, 3, 5
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(T, B, I, **f64, requires_grad=True)
    hx = leaf(torch.randn(B, H, **f64))
    w = [leaf(p) for p in params(1, I, H, True, device)]
    fn = lambda x, hx, *w: fused_rnn.rnn_layer(x, hx, *w, nonlinearity=nonlinearity, reverse=reverse)
    assert torch.autograd.gradcheck(fn, (x, hx, *w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_with_lengths(device, cell, reverse):
    """Unsorted per-sequence lengths, one of them 0, inside the fused loop."""
    torch.manual_seed(0)
    T, B, I, H = 4, 3, 3, 4
    f64 = dict(dtype=torch.float64, device=device)
    lengths = torch.tensor([2, 4, 0], device=device)
    x = torch.randn(T, B, I, **f64, requires_grad=True)
    states = [leaf(torch.randn(B, H, **f64)) for _ in range(2 if cell == "lstm" else 1)]
    w = [leaf(p) for p in params(dict(gru=3, lstm=4, rnn=1)[cell], I, H, True, device)]
    layer = getattr(fused_rnn, f"{cell}_layer")
    fn = lambda x, *rest: layer(x, *rest, reverse=reverse, lengths=lengths)
    assert torch.autograd.gradcheck(fn, (x, *states, *w))



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_lstm_proj_gradcheck(device, reverse, with_lengths):
    torch.manual_seed(0)
    T, B, I, H, P = 4, 3, 3, 5, 2
    f64 = dict(dtype=torch.float64, device=device)
    lengths = torch.tensor([2, 4, 0], device=device) if with_lengths else None
    x = torch.randn(T, B, I, **f64, requires_grad=True)
    hx, cx = leaf(torch.randn(B, P, **f64)), leaf(torch.randn(B, H, **f64))
    mk = lambda *s: leaf(torch.randn(*s, **f64) * 0.5)
    w_ih, w_hh, w_hr, b_ih, b_hh = mk(4 * H, I), mk(4 * H, P), mk(P, H), mk(4 * H), mk(4 * H)
    fn = lambda x, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh: fused_rnn.lstm_layer(
        x, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse=reverse, lengths=lengths, w_hr=w_hr)
    assert torch.autograd.gradcheck(fn, (x, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh))
