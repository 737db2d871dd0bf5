"""fused_rnn.GRU / LSTM / RNN against nn.GRU / nn.LSTM / nn.RNN with copied weights: outputs,
final states and the gradients of input, initial states and every parameter."""
import itertools

import pytest
import torch

import fused_rnn
from helpers import DEVICES, compare_with_nn, flat, nn_and_fused

CONFIGS = [  # num_layers, bidirectional, batch_first, bias
    c for c in itertools.product([1, 2], [False, True], [False, True], [True, False])
]


# "RNN_RELU" is nn.RNN with nonlinearity="relu"
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", CONFIGS)
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
def test_module_matches_nn(device, cell, num_layers, bidirectional, batch_first, bias, with_h0):
    torch.manual_seed(num_layers + 2 * bidirectional + 4 * batch_first + 8 * bias)
    T, B, I, H = 5, 3, 6, 9
    ref, fused = nn_and_fused(cell, I, H, torch.float32, device, num_layers=num_layers, bias=bias,
                              bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), device=device, requires_grad=True)
    hx = None
    if with_h0:
        shape = (num_layers * (2 if bidirectional else 1), B, H)
        hx = torch.randn(shape, device=device, requires_grad=True)
        if cell == "LSTM":
            hx = (hx, torch.randn(shape, device=device, requires_grad=True))
    compare_with_nn(ref, fused, x, hx, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 4, 3, 5), (8, 1, 20, 8), (3, 2, 300, 17)])
def test_module_matches_nn_sizes_float64(device, cell, T, B, I, H):
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, I, H, torch.float64, device)
    compare_with_nn(ref, fused, torch.randn(T, B, I, dtype=torch.float64, device=device,
                                    requires_grad=True), None, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_module_float16_on_cpu_matches_nn(cell, bidirectional):
    """module.half() on the CPU, as nn.* runs it there (the fused kernels store float16 and
    compute in float)."""
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 6, 9, torch.float16, num_layers=2,
                              bidirectional=bidirectional)
    x = torch.randn(5, 3, 6, dtype=torch.float16, requires_grad=True)
    compare_with_nn(ref, fused, x, None, torch.float16)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_matches_nn(cell, batch_first):
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 4, 6, torch.float32, num_layers=2, batch_first=batch_first)
    x = torch.randn(5, 4, requires_grad=True)
    h = torch.randn(2, 6, requires_grad=True)
    hx = (h, torch.randn(2, 6, requires_grad=True)) if cell == "LSTM" else h
    compare_with_nn(ref, fused, x, hx, torch.float32)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_batch_first_output_is_contiguous(cell):
    _, fused = nn_and_fused(cell, 4, 6, torch.float32, batch_first=True, bidirectional=True)
    out, _ = fused(torch.randn(3, 5, 4))
    assert out.shape == (3, 5, 12) and out.is_contiguous()


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers_matches_nn_in_eval(cell):
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 4, 6, torch.float32, num_layers=3, dropout=0.5)
    ref.eval(), fused.eval()
    compare_with_nn(ref, fused, torch.randn(5, 2, 4, requires_grad=True), None, torch.float32)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_dropout_between_layers_active_in_training(cell):
    """Training mode drops between layers (like nn.*), never on the last layer's output."""
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, 4, 6, torch.float32, num_layers=2, dropout=0.9)
    x = torch.randn(5, 2, 4)
    fused.eval()
    out_eval, _ = fused(x)
    fused.train()
    torch.manual_seed(1)
    out_a, _ = fused(x)
    torch.manual_seed(1)
    out_b, _ = fused(x)
    assert torch.equal(out_a, out_b)  # same seed, same mask
    assert not torch.allclose(out_a, out_eval)
    single = getattr(fused_rnn, cell)(4, 6)
    single.train()
    torch.manual_seed(2)
    y1, _ = single(x)
    single.eval()
    y2, _ = single(x)
    assert torch.equal(y1, y2)  # one layer: nothing to drop (as nn.*)


@pytest.mark.parametrize("cell", CELLS)
def test_saturated_gates_match_nn(cell):
    """Inputs far outside the activations' linear range (|pre-activation| in the thousands)."""
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 4, 19, torch.float32)
    x = (torch.randn(5, 3, 4) * 3000).requires_grad_(True)
    compare_with_nn(ref, fused, x, None, torch.float32)


@pytest.mark.parametrize("cell", CELLS)
def test_nan_and_inf_propagate_like_nn(cell):
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 4, 19, torch.float32)
    x = torch.randn(5, 3, 4)
    x[1, 0, 2] = float("nan")
    x[2, 2, 1] = float("inf")
    with torch.no_grad():
        want, got = flat(*ref(x)), flat(*fused(x))
    for g, w in zip(got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, equal_nan=True)



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,bias", CONFIGS)
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
def test_lstm_proj_size_matches_nn(device, num_layers, bidirectional, batch_first, bias, with_h0):
    """LSTM with proj_size: h = (o * tanh(c)) W_hr^T, h0 of size proj_size, c0 of hidden_size."""
    torch.manual_seed(0)
    T, B, I, H, P = 5, 3, 6, 9, 4
    ref, fused = nn_and_fused("LSTM", I, H, torch.float64, device, num_layers=num_layers, bias=bias,
                              bidirectional=bidirectional, batch_first=batch_first, proj_size=P)
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), dtype=torch.float64,
                    device=device, requires_grad=True)
    hx = None
    if with_h0:
        L = num_layers * (2 if bidirectional else 1)
        hx = (torch.randn(L, B, P, dtype=torch.float64, device=device, requires_grad=True),
              torch.randn(L, B, H, dtype=torch.float64, device=device, requires_grad=True))
    compare_with_nn(ref, fused, x, hx, torch.float64)
