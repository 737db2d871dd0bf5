"""The fused one-layer operators against the textbook cells: outputs, final states and the
gradients of input, initial states and every weight and bias."""
import pytest
import torch

import fused_rnn
from fused_rnn import reference
from helpers import DEVICES, SIZES, assert_close, assert_grads_close, grads

# GRU_TEXTBOOK: fused_rnn's reset_after=False (the lesson's cell), against reference's.
GATES = {"GRU": 3, "GRU_TEXTBOOK": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}
CELLS = list(GATES)
N_STATES = {"GRU": 1, "GRU_TEXTBOOK": 1, "LSTM": 2, "RNN_TANH": 1, "RNN_RELU": 1}


def make_input(T, B, I, dtype, layout, device="cpu"):
    """x: [T, B, I] as seq-major, batch-major (what batch_first gives) or a strided slice."""
    if layout == "seq_major":
        return torch.randn(T, B, I, dtype=dtype, device=device)
    if layout == "batch_major":
        return torch.randn(B, T, I, dtype=dtype, device=device).transpose(0, 1)
    return torch.randn(T, B, 2 * I + 1, dtype=dtype, device=device)[:, :, 1::2]  # inner stride 2


def make_params(cell, I, H, dtype, bias, device="cpu"):
    """w_ih: [G*H, I], w_hh: [G*H, H], b_ih, b_hh: [G*H] or None."""
    scale = H ** -0.5
    G = GATES[cell] * H
    u = lambda *shape: torch.empty(*shape, dtype=dtype, device=device).uniform_(-scale, scale)
    return [u(G, I), u(G, H), *([u(G), u(G)] if bias else [None, None])]


def run_fused(cell, x, states, params, reverse, lengths=None):
    if cell in ("GRU", "GRU_TEXTBOOK"):
        return list(fused_rnn.gru_layer(x, states[0], *params, reverse=reverse, lengths=lengths,
                                        reset_after=cell == "GRU"))
    if cell == "LSTM":
        return list(fused_rnn.lstm_layer(x, *states, *params, reverse=reverse, lengths=lengths))
    phi = "relu" if cell == "RNN_RELU" else "tanh"
    return list(fused_rnn.rnn_layer(x, states[0], *params, nonlinearity=phi, reverse=reverse,
                                    lengths=lengths))


def run_reference_full(cell, x, states, params, reverse):
    if cell in ("GRU", "GRU_TEXTBOOK"):
        return list(reference.gru(x, states[0], reference.gru_params_from_torch(*params),
                                  reverse=reverse, reset_after=cell == "GRU"))
    if cell == "LSTM":
        return list(reference.lstm(x, *states, reference.lstm_params_from_torch(*params), reverse=reverse))
    phi = "relu" if cell == "RNN_RELU" else "tanh"
    return list(reference.rnn(x, states[0], reference.rnn_params_from_torch(*params), phi, reverse=reverse))


def run_reference(cell, x, states, params, reverse, lengths=None):
    """The textbook cells; with lengths, each sequence alone on its own steps, zero padded."""
    if lengths is None:
        return run_reference_full(cell, x, states, params, reverse)
    outs, finals = [], [[] for _ in states]
    for b, n in enumerate(lengths.tolist()):
        res = run_reference_full(cell, x[:n, b:b + 1], [s[b:b + 1] for s in states], params, reverse)
        outs.append(torch.cat([res[0], res[0].new_zeros(x.shape[0] - n, *res[0].shape[1:])]))
        for f, r in zip(finals, res[1:]):
            f.append(r)
    return [torch.cat(outs, 1)] + [torch.cat(f) for f in finals]


def float64_copy(t):
    return None if t is None else t.detach().double().requires_grad_(True)


def check_against_reference(cell, T, B, I, H, dtype, bias, reverse, layout, device="cpu",
                            lengths=None):
    """The fused op in `dtype` on `device` against the textbook cells in float64 on the same
    values: outputs, final states, and the gradients of every input."""
    torch.manual_seed(T * 1000 + B * 100 + I * 10 + H)
    x = make_input(T, B, I, dtype, layout, device).requires_grad_(True)
    states = [torch.randn(B, H, dtype=dtype, device=device, requires_grad=True)
              for _ in range(N_STATES[cell])]
    params = [p.requires_grad_(True) if p is not None else None
              for p in make_params(cell, I, H, dtype, bias, device)]
    inputs = [x, *states, *params]
    ref_inputs = [float64_copy(t) for t in inputs]
    n_states = len(states)
    got = run_fused(cell, x, states, params, reverse,
                    None if lengths is None else lengths.to(device))
    want = run_reference(cell, ref_inputs[0], ref_inputs[1:1 + n_states], ref_inputs[1 + n_states:],
                         reverse, lengths)
    names = ["output", "h_n", "c_n"]
    for g, w, n in zip(got, want, names):
        assert g.shape == w.shape and g.dtype == dtype and g.device.type == device, n
        assert_close(g, w, dtype, n)
    seeds = [torch.randn_like(w) for w in want]
    input_names = ["input", "hx", "cx"][:1 + n_states] + ["w_ih", "w_hh", "b_ih", "b_hh"]
    assert_grads_close(grads(got, inputs, [sd.to(dtype) for sd in seeds]),
                       grads(want, ref_inputs, seeds), dtype, input_names)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_op_matches_reference(device, cell, dtype, T, B, I, H, bias, reverse):
    check_against_reference(cell, T, B, I, H, dtype, bias, reverse, "seq_major", device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["batch_major", "strided"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_op_matches_reference_any_input_layout(device, cell, layout, reverse):
    check_against_reference(cell, 5, 3, 6, 11, torch.float32, True, reverse, layout, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["seq_major", "batch_major"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_op_with_lengths_matches_reference_per_sequence(device, cell, layout, reverse):
    """Per-sequence lengths inside the fused loop (unsorted, one empty, one full): each
    sequence gives what it gives alone, zero outputs past its end, and the right gradients."""
    lengths = torch.tensor([3, 6, 0, 1, 6])
    check_against_reference(cell, 6, 5, 4, 7, torch.float64, True, reverse, layout, device, lengths)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_op_half_types_on_cuda_match_reference(cell, dtype, T, B, I, H):
    check_against_reference(cell, T, B, I, H, dtype, True, False, "seq_major", "cuda")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_op_half_types_on_cpu_match_reference(cell, dtype, T, B, I, H, reverse):
    """bfloat16 (what CPU autocast gives nn.LSTM / nn.RNN) and float16 (nn.*'s .half() on the
    CPU) on the CPU: stored in the half type, computed in float."""
    check_against_reference(cell, T, B, I, H, dtype, True, reverse, "seq_major", "cpu")


@pytest.mark.parametrize("cell", CELLS)
def test_batch_major_input_gives_batch_major_output(cell):
    """batch_first costs no copy: the output keeps the input's [B, T, H] memory layout."""
    x = torch.randn(4, 6, 5).transpose(0, 1)  # [T=6, B=4, I=5] seen from [B, T, I] memory
    states = [torch.zeros(4, 7)] * N_STATES[cell]
    out = run_fused(cell, x, states, make_params(cell, 5, 7, torch.float32, True), False)[0]
    assert out.shape == (6, 4, 7)
    assert out.transpose(0, 1).is_contiguous()


@pytest.mark.parametrize("cell", CELLS)
def test_empty_sequence_returns_initial_state(cell):
    states = [torch.randn(3, 5) for _ in range(N_STATES[cell])]
    res = run_fused(cell, torch.randn(0, 3, 4), states, make_params(cell, 4, 5, torch.float32, True), False)
    assert res[0].shape == (0, 3, 5)
    for got, s in zip(res[1:], states):
        assert torch.equal(got, s)


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_forward_matches_training_forward(cell):
    """Inference (save_activations=False) computes the same numbers as training."""
    torch.manual_seed(1)
    x = torch.randn(6, 3, 5)
    states = [torch.randn(3, 7) for _ in range(N_STATES[cell])]
    params = make_params(cell, 5, 7, torch.float32, True)
    with torch.no_grad():
        a = run_fused(cell, x, states, params, False)
    b = run_fused(cell, x.requires_grad_(True), states, params, False)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_eager_calls_skip_the_python_autograd_wrapper(monkeypatch):
    """In eager mode the layer functions never redispatch from Python (fused_rnn/_ops.py's
    _call): under no_grad they call the operators below the autograd key; with gradients the
    forward is recorded by the eager autograd.Function (same setup_context and backward as
    register_autograd), and the backward runs its operator below the key too."""
    calls = []
    original = torch._ops.OpOverload.redispatch

    def counting(self, *args, **kwargs):
        calls.append(str(self))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch._ops.OpOverload, "redispatch", counting)
    m = fused_rnn.GRU(4, 6)
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        m(x)
    assert calls == []
    out, _ = m(x)
    assert type(out.grad_fn).__name__ == "Fused_gru_forwardBackward"
    out.sum().backward()
    assert calls == []
    assert m.weight_hh_l0.grad is not None and m.weight_hh_l0.grad.abs().sum() > 0
    # under autocast (or where torch lacks the check) the operator itself is called: its
    # autocast kernel casts, then register_autograd's wrapper records the call
    monkeypatch.setattr(fused_rnn._ops, "_autocast_enabled", lambda: True)
    out, _ = m(x)
    assert calls == ["fused_rnn.gru_forward.default"]
    assert type(out.grad_fn).__name__.startswith("GeneratedBackwardFor_fused_rnn_gru_forward")


@pytest.mark.parametrize("cell", CELLS + ["LSTM_PROJ"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_eager_autograd_function_matches_registered_autograd(cell, with_lengths, monkeypatch):
    """The eager autograd.Function and the operator's register_autograd formula (what
    torch.compile and direct operator calls use) give the same bits: outputs, final states and
    the gradients of input, states and every weight, also with the output unused (its
    gradient arrives as None)."""
    torch.manual_seed(3)
    T, B, I, H, P = 5, 3, 4, 6, 2
    lengths = torch.tensor([5, 2, 4]) if with_lengths else None
    x = torch.randn(T, B, I, requires_grad=True)
    if cell == "LSTM_PROJ":
        states = [torch.randn(B, P, requires_grad=True), torch.randn(B, H, requires_grad=True)]
        w_ih, _, b_ih, b_hh = make_params("LSTM", I, H, torch.float32, True)
        params = [w_ih, torch.randn(4 * H, P) * 0.3, b_ih, b_hh, torch.randn(P, H) * 0.3]
    else:
        states = [torch.randn(B, H, requires_grad=True) for _ in range(N_STATES[cell])]
        params = make_params(cell, I, H, torch.float32, True)
    params = [p.requires_grad_(True) for p in params]
    inputs = [x, *states, *params]

    def run():
        if cell == "LSTM_PROJ":  # params: w_ih, w_hh: [4H, P], b_ih, b_hh, w_hr: [P, H]
            got = list(fused_rnn.lstm_layer(x, *states, *params[:4], reverse=True,
                                            lengths=lengths, w_hr=params[4]))
        else:
            got = run_fused(cell, x, states, params, True, lengths)
        return (got[0].grad_fn, got,
                grads(got[1:], inputs, [torch.ones_like(g) for g in got[1:]]),
                grads(got, inputs, [torch.full_like(g, 0.5) for g in got]))

    eager = run()
    assert type(eager[0]).__name__.startswith("Fused_")
    monkeypatch.setattr(fused_rnn._ops, "_EAGER_AUTOGRAD", {})
    registered = run()
    assert type(registered[0]).__name__.startswith("GeneratedBackwardFor_fused_rnn")
    for a, b in zip(eager[1:], registered[1:]):  # outputs, then the two sets of gradients
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
