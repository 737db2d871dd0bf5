"""The bad-input matrix, every cell on every device: each wrong input gets a clear Python
exception naming what was expected and what was given (the same exception type as nn.* where
nn.* raises one); inputs that are only laid out unusually (sliced, transposed, expanded,
non-contiguous states) work and match nn.*; empty batches and sequences, NaN and Inf behave as
nn.* does. The operators' own C++ checks are covered per operator at the end."""
import pytest
import torch
from torch import nn

import fused_rnn
from helpers import DEVICES, TOL, compare_with_nn, flat, nn_and_fused

CELLS = ["GRU", "LSTM", "RNN"]
T, B, I, H, L = 4, 3, 5, 6, 2  # two layers, both directions: states [L*2, B, H]


def pair(cell, device, **kw):
    torch.manual_seed(0)
    return nn_and_fused(cell, I, H, torch.float32, device, num_layers=L, bidirectional=True,
                        **kw)


def states(cell, device, batch=B, dtype=torch.float32, layers=2 * L, hidden=H):
    h = torch.randn(layers, batch, hidden, device=device, dtype=dtype)
    return (h, torch.randn_like(h)) if cell == "LSTM" else h


def raises_like_nn(ref, fused, *args, match):
    """fused raises the exception type nn.* raises, with a message matching `match` (which
    names expected and actual)."""
    with pytest.raises(Exception) as nn_err:
        ref(*args)
    with pytest.raises(type(nn_err.value), match=match):
        fused(*args)


# ----------------------------------------------------------------------------- wrong inputs
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_input_rank(cell, device):
    ref, fused = pair(cell, device)
    for shape in [(T * B * I,), (T, B, I, 1)]:
        raises_like_nn(ref, fused, torch.randn(*shape, device=device),
                       match=f"Expected input to be 2D or 3D, got {len(shape)}D")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_input_feature_size(cell, device):
    ref, fused = pair(cell, device)
    raises_like_nn(ref, fused, torch.randn(T, B, I + 2, device=device),
                   match=f"input.size\\(-1\\) must be equal to input_size. Expected {I}, got {I + 2}")


# wrong state shapes: (layers * directions, batch, hidden) each off by one in turn
STATE_SHAPES = {"batch": (2 * L, B + 1, H), "layers_times_directions": (L, B, H),
                "hidden_size": (2 * L, B, H + 1)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("wrong", list(STATE_SHAPES))
def test_state_wrong_shape(cell, device, wrong):
    layers, batch, hidden = STATE_SHAPES[wrong]
    ref, fused = pair(cell, device)
    raises_like_nn(ref, fused, torch.randn(T, B, I, device=device),
                   states(cell, device, batch=batch, layers=layers, hidden=hidden),
                   match=rf"Expected hidden(\[0\])? size \({2 * L}, {B}, {H}\), got "
                         rf"\[{layers}, {batch}, {hidden}\]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_packed_input_state_wrong_batch(cell, device):
    """enforce_sorted=True: the state's batch must be the packed batch's (batch_sizes[0])."""
    _, fused = pair(cell, device)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I, device=device),
                                               torch.tensor([T, T - 1, 1]))
    with pytest.raises(RuntimeError, match=rf"Expected hidden size \({2 * L}, {B}, {H}\), got "
                                           rf"\[{2 * L}, {B - 1}, {H}\]"):
        fused(packed, states(cell, device, batch=B - 1))


@pytest.mark.parametrize("device", DEVICES)
def test_lstm_cell_state_wrong_shape(device):
    ref, fused = pair("LSTM", device)
    h0 = torch.randn(2 * L, B, H, device=device)
    raises_like_nn(ref, fused, torch.randn(T, B, I, device=device),
                   (h0, torch.randn(2 * L, B, H + 1, device=device)),
                   match=rf"Expected hidden\[1\] size \({2 * L}, {B}, {H}\), got \[{2 * L}, {B}, {H + 1}\]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_state_rank_vs_input_rank(cell, device):
    ref, fused = pair(cell, device)
    h = torch.randn(B, H, device=device)
    raises_like_nn(ref, fused, torch.randn(T, B, I, device=device),
                   (h, h.clone()) if cell == "LSTM" else h,
                   match="For batched 3-D input, hx should also be 3-D but got 2-D")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_input_dtype_vs_weights(cell, device):
    ref, fused = pair(cell, device)
    raises_like_nn(ref, fused, torch.randn(T, B, I, device=device, dtype=torch.float64),
                   match=r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_state_dtype_vs_input(cell, device):
    _, fused = pair(cell, device)
    with pytest.raises(RuntimeError, match=r"expected (hx|h0) with dtype torch.float32 \(the "
                                           r"dtype of input\), got torch.float64"):
        fused(torch.randn(T, B, I, device=device), states(cell, device, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_lstm_cell_state_dtype_vs_input(device):
    _, fused = pair("LSTM", device)
    h0 = torch.randn(2 * L, B, H, device=device)
    with pytest.raises(RuntimeError, match=r"expected c0 with dtype torch.float32 \(the dtype "
                                           r"of input\), got torch.float64"):
        fused(torch.randn(T, B, I, device=device), (h0, h0.double()))


@pytest.mark.parametrize("cell", CELLS)
def test_input_device_vs_parameters(cell):
    other = "cuda" if torch.cuda.is_available() else "meta"
    _, fused = pair(cell, "cpu")
    with pytest.raises(RuntimeError, match=f"expected input on device cpu \\(the device of the "
                                           f"parameters\\), got {other}"):
        fused(torch.randn(T, B, I, device=other))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_state_device_vs_input(cell, device):
    other = "cpu" if device == "cuda" else "meta"
    _, fused = pair(cell, device)
    with pytest.raises(RuntimeError, match=f"expected (hx|h0) on device {device}.* \\(the device "
                                           f"of input\\), got {other}"):
        fused(torch.randn(T, B, I, device=device), states(cell, other))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bad", [-1, 10], ids=["negative", "vocab_size"])
def test_token_ids_out_of_range(cell, device, bad):
    torch.manual_seed(0)
    fused = getattr(fused_rnn, cell)(10, H, device=device)
    ids = (torch.arange(T * B, device=device) % 10).reshape(T, B)  # every id 0..9
    ids[2, 1] = bad
    with pytest.raises(IndexError, match=f"token ids must be in \\[0, input_size=10\\), got "
                                         f"values in \\[{min(bad, 0)}, {max(bad, 9)}\\]"):
        fused(ids)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_empty_sequence_refused_as_nn_does(cell, device):
    ref, fused = pair(cell, device)
    raises_like_nn(ref, fused, torch.randn(0, B, I, device=device),
                   match=r"Expected sequence length to be larger than 0 in RNN, got input of "
                         r"shape \[0, 3, 5\]")


# ------------------------------------------------------------------ must work, and match nn.*
def leaf(t):
    """t as a leaf that requires grad, keeping its (unusual) strides."""
    return t.detach().requires_grad_(True)


LAYOUTS = {
    "time_sliced": lambda d: torch.randn(2 * T, B, I, device=d)[::2],
    "batch_major_storage": lambda d: torch.randn(B, T, I, device=d).transpose(0, 1),
    "feature_strided": lambda d: torch.randn(T, B, 2 * I, device=d)[..., ::2],
    "batch_expanded": lambda d: torch.randn(T, 1, I, device=d).expand(T, B, I),
    "offset_view": lambda d: torch.randn(T + 1, B, I, device=d)[1:],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_unusual_input_layouts_work_and_match(cell, device, layout):
    ref, fused = pair(cell, device)
    x = LAYOUTS[layout](device)
    if layout != "batch_expanded":
        x = leaf(x)
    compare_with_nn(ref, fused, x, None, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_unusual_state_layouts_work_and_match(cell, device):
    ref, fused = pair(cell, device)
    if device == "cuda":  # nn.* on cuDNN takes contiguous states only ("hx is not contiguous")
        forward = ref.forward
        ref.forward = lambda x, hx: forward(
            x, tuple(s.contiguous() for s in hx) if isinstance(hx, tuple) else hx.contiguous())
    h = leaf(torch.randn(B, 2 * L, H, device=device).transpose(0, 1))  # batch-major storage
    c = leaf(torch.randn(2 * L, B, 2 * H, device=device)[..., ::2])     # strided features
    x = leaf(torch.randn(T, B, I, device=device))
    compare_with_nn(ref, fused, x, (h, c) if cell == "LSTM" else h, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_transposed_input_works_and_matches(cell, device):
    ref, fused = pair(cell, device, batch_first=True)
    x = leaf(torch.randn(T, B, I, device=device).transpose(0, 1))  # [B, T, I] of seq-major storage
    compare_with_nn(ref, fused, x, None, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
def test_empty_batch_behaves_as_nn(cell, device):
    ref, fused = pair(cell, device)
    x = leaf(torch.randn(T, 0, I, device=device))
    compare_with_nn(ref, fused, x, None, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
def test_nan_and_inf_propagate_as_nn(cell, device, value):
    ref, fused = pair(cell, device)
    x = torch.randn(T, B, I, device=device)
    x[1, 2, 3] = value  # one bad element in one sequence at one step
    for g, w in zip(flat(*fused(x)), flat(*ref(x))):
        assert torch.equal(torch.isnan(g), torch.isnan(w)), "NaN positions differ from nn.*"
        assert torch.equal(torch.isinf(g), torch.isinf(w)), "Inf positions differ from nn.*"
        finite = torch.isfinite(w)
        torch.testing.assert_close(g[finite], w[finite], **TOL[torch.float32])


# ------------------------------------------------------------------------ the C++ operators
def op_args(op, device, **over):
    """Arguments of torch.ops.fused_rnn.<op>_forward, each replaceable by name."""
    G = {"gru": 3, "lstm": 4, "rnn": 1}[op]
    a = dict(input=torch.randn(T, B, I, device=device), hx=torch.randn(B, H, device=device),
             cx=torch.randn(B, H, device=device), w_ih=torch.randn(G * H, I, device=device),
             w_hh=torch.randn(G * H, H, device=device), b_ih=torch.randn(G * H, device=device),
             b_hh=torch.randn(G * H, device=device))
    a.update(over)
    head = [a["input"], a["hx"]] + ([a["cx"]] if op == "lstm" else [])
    tail = [None, False, False]  # lengths, relu / reverse, reverse / save
    return head + [a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]] + tail


OPS = ["gru", "lstm", "rnn"]


def call(op, args):
    return getattr(torch.ops.fused_rnn, f"{op}_forward")(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_op_input_rank(op, device):
    with pytest.raises(RuntimeError, match=rf"fused_rnn::{op}_forward: expected input to be 3-D "
                                           rf"\[seq_len, batch, input_size\], got 2-D tensor"):
        call(op, op_args(op, device, input=torch.randn(T, I, device=device)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_op_state_shape(op, device):
    with pytest.raises(RuntimeError, match=rf"expected hx of shape \[batch, hidden_size\] = "
                                           rf"\[{B}, {H}\], got \[{B + 1}, {H}\]"):
        call(op, op_args(op, device, hx=torch.randn(B + 1, H, device=device)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_op_dtype_mismatch(op, device):
    with pytest.raises(RuntimeError, match=r"expected w_hh to have dtype Float \(the dtype of "
                                           r"input\), got Double"):
        G = {"gru": 3, "lstm": 4, "rnn": 1}[op]
        call(op, op_args(op, device, w_hh=torch.randn(G * H, H, device=device,
                                                      dtype=torch.float64)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_op_device_mismatch(op, device):
    other = "cpu" if device == "cuda" else "meta"
    # a meta tensor sends the call to the fake kernel (Python's message); CUDA + CPU tensors reach
    # the CUDA kernel (C++'s message, naming the tensor)
    with pytest.raises(RuntimeError, match=rf"expected (all tensors|hx) on device {device}\S* "
                                           rf"\(the device of input\), got (one on )?{other}"):
        call(op, op_args(op, device, hx=torch.randn(B, H, device=other)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS)
def test_op_token_ids_out_of_range(op, device):
    ids = (torch.arange(T * B, device=device) % I).reshape(T, B)
    ids[0, 0] = I
    with pytest.raises(RuntimeError, match=rf"fused_rnn::{op}_forward: expected token ids in "
                                           rf"\[0, input_size={I}\), got values in \[0, {I}\]"):
        call(op, op_args(op, device, input=ids))
        if device == "cuda":
            torch.cuda.synchronize()
