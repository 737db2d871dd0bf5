"""The textbook cells (the oracle) agree with nn.GRU / nn.LSTM on copied weights."""
import pytest
import torch
from torch import nn

from fused_rnn import reference
from helpers import SIZES, assert_close


@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_gru_reference_matches_nn_gru(T, B, I, H, bias):
    torch.manual_seed(0)
    m = nn.GRU(I, H, bias=bias, dtype=torch.float64)
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    out, h_n = m(x, h0)
    p = reference.gru_params_from_torch(m.weight_ih_l0, m.weight_hh_l0,
                                        m.bias_ih_l0 if bias else None,
                                        m.bias_hh_l0 if bias else None)
    ref_out, ref_h = reference.gru(x, h0[0], p)
    assert_close(ref_out, out, torch.float64, "output")
    assert_close(ref_h, h_n[0], torch.float64, "h_n")


@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_reference_matches_nn_lstm(T, B, I, H, bias):
    torch.manual_seed(0)
    m = nn.LSTM(I, H, bias=bias, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(2, 1, B, H, dtype=torch.float64)
    out, (h_n, c_n) = m(x, (h0, c0))
    p = reference.lstm_params_from_torch(m.weight_ih_l0, m.weight_hh_l0,
                                         m.bias_ih_l0 if bias else None,
                                         m.bias_hh_l0 if bias else None)
    ref_out, ref_h, ref_c = reference.lstm(x, h0[0], c0[0], p)
    assert_close(ref_out, out, torch.float64, "output")
    assert_close(ref_h, h_n[0], torch.float64, "h_n")
    assert_close(ref_c, c_n[0], torch.float64, "c_n")


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_run_module_matches_nn_deep_bidirectional(cell):
    torch.manual_seed(0)
    m = getattr(nn, cell)(5, 6, num_layers=2, bidirectional=True, batch_first=True,
                          dtype=torch.float64)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    out, state = m(x)
    ref_out, ref_state = reference.run_module(m, x)
    assert_close(ref_out, out, torch.float64, "output")
    for r, s in zip(ref_state if cell == "LSTM" else [ref_state], state if cell == "LSTM" else [state]):
        assert_close(r, s, torch.float64, "final state")


def test_textbook_gru_differs_from_pytorch_form():
    """reset_after=False is the lesson's candidate (R * H) W_hh: a different function."""
    torch.manual_seed(0)
    m = nn.GRU(4, 5, dtype=torch.float64)
    x, h0 = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    p = reference.gru_params_from_torch(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    a, _ = reference.gru(x, h0, p, reset_after=True)
    b, _ = reference.gru(x, h0, p, reset_after=False)
    assert (a - b).abs().max() > 1e-6
