"""Bad input gets a clear error naming what was expected and what was given; one test per case.
Modules check like nn.* (same messages where nn.* has one); the operators check in C++."""
import pytest
import torch

import fused_rnn

ops = torch.ops.fused_rnn
T, B, I, H = 4, 3, 5, 6


@pytest.fixture
def gru():
    return fused_rnn.GRU(I, H)


@pytest.fixture
def lstm():
    return fused_rnn.LSTM(I, H)


# ------------------------------------------------------------------ modules
def test_module_input_rank(gru):
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        gru(torch.randn(T, B, I, 1))


def test_module_input_feature_size(gru):
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 5, got 4"):
        gru(torch.randn(T, B, I - 1))


def test_module_h0_wrong_batch(gru):
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 3, 6\), got \[1, 2, 6\]"):
        gru(torch.randn(T, B, I), torch.randn(1, B - 1, H))


def test_module_h0_wrong_rank(gru):
    with pytest.raises(RuntimeError, match="For batched 3-D input, hx should also be 3-D but got 2-D"):
        gru(torch.randn(T, B, I), torch.randn(B, H))


def test_module_input_dtype_vs_weights(gru):
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        gru(torch.randn(T, B, I, dtype=torch.float64))


def test_module_h0_dtype(gru):
    with pytest.raises(RuntimeError, match="expected hx with dtype torch.float32 \\(the dtype of input\\), got torch.float64"):
        gru(torch.randn(T, B, I), torch.randn(1, B, H, dtype=torch.float64))


def test_module_h0_device(gru):
    with pytest.raises(RuntimeError, match="expected hx on device cpu \\(the device of input\\), got meta"):
        gru(torch.randn(T, B, I), torch.randn(1, B, H, device="meta"))


def test_module_input_device_vs_parameters(gru):
    with pytest.raises(RuntimeError, match="expected input on device cpu \\(the device of the parameters\\), got meta"):
        gru(torch.randn(T, B, I, device="meta"))


def test_module_lstm_c0_shape(lstm):
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 3, 6\), got \[1, 3, 5\]"):
        lstm(torch.randn(T, B, I), (torch.randn(1, B, H), torch.randn(1, B, H - 1)))


def test_module_lstm_hx_not_a_pair(lstm):
    with pytest.raises(RuntimeError, match="expected hx to be a tuple \\(h0, c0\\), got Tensor"):
        lstm(torch.randn(T, B, I), torch.randn(1, B, H))


def test_module_unsupported_dtype_complex_on_cpu():
    m = fused_rnn.GRU(I, H, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="the CPU kernels support float32, float64, bfloat16 "
                                           "and float16, got dtype ComplexFloat"):
        m(torch.randn(T, B, I, dtype=torch.complex64))


# ------------------------------------------------------------------ operators (C++ checks)
def gru_args(**over):
    a = dict(input=torch.randn(T, B, I), hx=torch.randn(B, H), w_ih=torch.randn(3 * H, I),
             w_hh=torch.randn(3 * H, H), b_ih=torch.randn(3 * H), b_hh=torch.randn(3 * H))
    a.update(over)
    return (a["input"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], None, False, False)


def test_op_input_rank():
    with pytest.raises(RuntimeError, match=r"expected input to be 3-D \[seq_len, batch, input_size\], got 2-D tensor of shape \[4, 5\]"):
        ops.gru_forward(*gru_args(input=torch.randn(T, I)))


def test_op_hx_shape():
    with pytest.raises(RuntimeError, match=r"expected hx of shape \[batch, hidden_size\] = \[3, 6\], got \[2, 6\]"):
        ops.gru_forward(*gru_args(hx=torch.randn(B - 1, H)))


def test_op_w_ih_shape():
    with pytest.raises(RuntimeError, match=r"expected w_ih of shape \[gates\*hidden_size, input_size\] = \[18, 5\], got \[18, 4\]"):
        ops.gru_forward(*gru_args(w_ih=torch.randn(3 * H, I - 1)))


def test_op_w_hh_shape():
    with pytest.raises(RuntimeError, match=r"expected w_hh of shape \[3\*hidden_size, hidden_size\], got \[12, 6\]"):
        ops.gru_forward(*gru_args(w_hh=torch.randn(2 * H, H)))


def test_op_bias_shape():
    with pytest.raises(RuntimeError, match=r"expected b_hh of shape \[gates\*hidden_size\] = \[18\], got \[6\]"):
        ops.gru_forward(*gru_args(b_hh=torch.randn(H)))


def test_op_dtype_mismatch():
    with pytest.raises(RuntimeError, match="expected hx to have dtype Float \\(the dtype of input\\), got Double"):
        ops.gru_forward(*gru_args(hx=torch.randn(B, H, dtype=torch.float64)))


def test_op_device_mismatch():
    with pytest.raises(RuntimeError, match="expected all tensors on device cpu \\(the device of input\\), got one on meta"):
        ops.gru_forward(*gru_args(hx=torch.randn(B, H, device="meta")))


def test_op_lstm_cx_shape():
    with pytest.raises(RuntimeError, match=r"expected cx of shape \[batch, hidden_size\] = \[3, 6\], got \[3, 7\]"):
        ops.lstm_forward(torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H + 1),
                         torch.randn(4 * H, I), torch.randn(4 * H, H), None, None, None, False, False)


def test_backward_without_saved_activations():
    x = torch.randn(T, B, I, requires_grad=True)
    args = list(gru_args(input=x))
    out, _, _ = ops.gru_forward(*args)  # save_activations=False
    with pytest.raises(RuntimeError, match="save_activations=False, so it cannot be differentiated"):
        out.sum().backward()


def test_backward_op_saved_shape():
    a = gru_args()
    out, h_n, _ = ops.gru_forward(*a)
    with pytest.raises(RuntimeError, match=r"expected saved of shape \[4, 3, 24\], got \[0\] \(was the forward called with save_activations=False\?\)"):
        ops.gru_backward(torch.ones_like(out), torch.ones_like(h_n), a[0], a[1], a[2], a[3], out,
                         torch.empty(0), None, False, True)


def test_set_cpu_isa_unknown_name():
    with pytest.raises(RuntimeError, match="CPU kernel build 'sse9' is not available here; available: DEFAULT"):
        fused_rnn.set_cpu_isa("sse9")
