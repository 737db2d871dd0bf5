"""torch.library.opcheck on every operator: schema, fake (meta) kernel, autograd registration
and AOT dispatch, on seq-major and batch-major inputs."""
import pytest
import torch

import fused_rnn  # noqa: F401  (registers the ops)
from helpers import DEVICES

ops = torch.ops.fused_rnn


def tensors(G, device, T=4, B=3, I=5, H=6, batch_major=False, requires_grad=True):
    torch.manual_seed(0)
    x = torch.randn(B, T, I).transpose(0, 1) if batch_major else torch.randn(T, B, I)
    t = dict(x=x, hx=torch.randn(B, H), cx=torch.randn(B, H), w_ih=torch.randn(G * H, I) * 0.3,
             w_hh=torch.randn(G * H, H) * 0.3, b_ih=torch.randn(G * H), b_hh=torch.randn(G * H))
    return {k: v.to(device).requires_grad_(requires_grad) for k, v in t.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("save", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_gru_forward(device, batch_major, save, bias):
    t = tensors(3, device, batch_major=batch_major, requires_grad=save)
    b = (t["b_ih"], t["b_hh"]) if bias else (None, None)
    torch.library.opcheck(ops.gru_forward.default,
                          (t["x"], t["hx"], t["w_ih"], t["w_hh"], *b, None, False, save))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("save", [False, True])
def test_opcheck_lstm_forward(device, batch_major, save):
    t = tensors(4, device, batch_major=batch_major, requires_grad=save)
    torch.library.opcheck(ops.lstm_forward.default,
                          (t["x"], t["hx"], t["cx"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                           None, True, save))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
def test_opcheck_gru_backward(device, batch_major, input_grad):
    t = tensors(3, device, batch_major=batch_major, requires_grad=False)
    out, h_n, saved = ops.gru_forward(t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"],
                                      t["b_hh"], None, False, True)
    torch.library.opcheck(ops.gru_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), t["x"], t["hx"],
                           t["w_ih"], t["w_hh"], out, saved, None, False, input_grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("input_grad", [False, True])
def test_opcheck_lstm_backward(device, batch_major, input_grad):
    t = tensors(4, device, batch_major=batch_major, requires_grad=False)
    out, h_n, c_n, gates, cells = ops.lstm_forward(t["x"], t["hx"], t["cx"], t["w_ih"], t["w_hh"],
                                                   t["b_ih"], t["b_hh"], None, False, True)
    torch.library.opcheck(ops.lstm_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n),
                           t["x"], t["hx"], t["cx"], t["w_ih"], t["w_hh"], out, gates, cells,
                           None, False, input_grad))


def lengths_for(device, B=3, T=4):
    return torch.tensor([T, 1, 0, 2, 3][:B], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_forward_with_lengths(device, cell, reverse):
    G = dict(gru=3, lstm=4, rnn=1)[cell]
    t = tensors(G, device)
    common = (t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], lengths_for(device))
    if cell == "gru":
        args = (t["x"], t["hx"], *common, reverse, True)
    elif cell == "lstm":
        args = (t["x"], t["hx"], t["cx"], *common, reverse, True)
    else:
        args = (t["x"], t["hx"], *common, False, reverse)
    torch.library.opcheck(getattr(ops, f"{cell}_forward").default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_opcheck_rnn_forward(device, batch_major, relu):
    t = tensors(1, device, batch_major=batch_major)
    torch.library.opcheck(ops.rnn_forward.default,
                          (t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                           relu, False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("input_grad", [False, True])
def test_opcheck_rnn_backward(device, input_grad):
    t = tensors(1, device, requires_grad=False)
    out, h_n = ops.rnn_forward(t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], None,
                               False, False)
    torch.library.opcheck(ops.rnn_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), t["x"], t["hx"],
                           t["w_ih"], t["w_hh"], out, None, False, False, input_grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("save", [False, True])
def test_opcheck_gru_textbook_forward(device, batch_major, save):
    t = tensors(3, device, batch_major=batch_major, requires_grad=save)
    torch.library.opcheck(ops.gru_textbook_forward.default,
                          (t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                           lengths_for(device), True, save))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("input_grad", [False, True])
def test_opcheck_gru_textbook_backward(device, input_grad):
    t = tensors(3, device, requires_grad=False)
    out, h_n, saved = ops.gru_textbook_forward(t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"],
                                               t["b_hh"], None, False, True)
    torch.library.opcheck(ops.gru_textbook_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), t["x"], t["hx"],
                           t["w_ih"], t["w_hh"], out, saved, None, False, input_grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_opcheck_lstm_proj(device, batch_major, with_lengths):
    t = tensors(4, device, batch_major=batch_major)
    P = 2
    w_hh = (torch.randn(24, P, device=device) * 0.3).requires_grad_(True)
    w_hr = (torch.randn(P, 6, device=device) * 0.3).requires_grad_(True)
    hx = torch.randn(3, P, device=device, requires_grad=True)
    lengths = lengths_for(device) if with_lengths else None
    args = (t["x"], hx, t["cx"], t["w_ih"], w_hh, w_hr, t["b_ih"], t["b_hh"], lengths, False, True)
    torch.library.opcheck(ops.lstm_proj_forward.default, args)
    out, h_n, c_n, gates, cells, hidden = ops.lstm_proj_forward(*[
        a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    torch.library.opcheck(ops.lstm_proj_backward.default,
                          (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n),
                           t["x"].detach(), hx.detach(), t["cx"].detach(), t["w_ih"].detach(),
                           w_hh.detach(), w_hr.detach(), out, gates, cells, hidden, lengths,
                           False, True))
