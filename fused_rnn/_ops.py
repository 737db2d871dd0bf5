"""Python side of the fused_rnn operators: shapes for tracing (register_fake), autograd
(register_autograd) and the one-layer functional entry points `gru_layer` / `lstm_layer`."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the operator library and its kernels)

ops = torch.ops.fused_rnn


def _call(op, *args):
    """op(*args), by the cheapest route with the same kernels and the same autograd formula.

    - Tracing (torch.compile): the operator itself, so the graph holds it and its
      register_autograd formula.
    - Grad mode off (torch.no_grad / inference_mode, and a backward pass that does not create a
      graph): straight below the autograd dispatch key. No gradient can be recorded there, and
      the Python autograd wrapper that register_autograd installs would otherwise redispatch from
      Python on every call (measured ~25-35 us per layer and direction here).
    - Grad mode on, eager: the forward operators go through `_EAGER_AUTOGRAD`'s
      autograd.Function, which records the same setup_context and backward as
      register_autograd but skips that wrapper's per-call work (its redispatch from Python and
      torch's `fill_defaults`, which rebuilds the argument list from the schema on every call):
      ~190-290 us less per T=1 training step of one layer here. Not under autocast (its
      kernels sit above autograd and cast the arguments that autograd then saves), where the
      operator is called as it is, as are the other operators (the backward ones,
      differentiated again only under create_graph).
    - torch.jit.trace: the operator itself, so the traced graph holds fused_rnn::* (it can be
      saved and loaded, and traces the same whether grad mode is on or not: trace's check).
    - Under torch.func transforms (grad, vjp, jacrev, vmap, functional_call inside them): every
      operator with an autograd formula through `_FUNCTORCH_AUTOGRAD`'s autograd.Function, which
      has a separate setup_context and a generated vmap rule, as torch.func needs. The Function
      that register_autograd installs has no setup_context, and torch.func refuses it
      (pytorch/pytorch#168393, #170834: "must override the setup_context staticmethod").
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return op(*args)
    if not torch.is_grad_enabled():
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    if _autocast_enabled():
        return op(*args)
    name = op._qualified_op_name
    if _functorch_active():
        function = _FUNCTORCH_AUTOGRAD.get(name)
        return op(*args) if function is None else function.apply(*args)
    function = _EAGER_AUTOGRAD.get(name)
    return op(*args) if function is None else function.apply(*args)


# qualified forward operator name -> autograd.Function running it eagerly (see _call).
_EAGER_AUTOGRAD = {}
# qualified operator name (forward and backward operators) -> autograd.Function in the form
# torch.func transforms accept (see _call).
_FUNCTORCH_AUTOGRAD = {}
# torch's own checks (private: a torch without them gets the operator itself every time)
_autocast_enabled = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def _register_autograd(name: str, backward, setup_context) -> None:
    """register_autograd(name, backward, setup_context) for tracing and for other callers of the
    operator, and the same two functions as an autograd.Function for _call's eager route."""
    torch.library.register_autograd(name, backward, setup_context=setup_context)
    op_name = name.split("::")[1]
    op = getattr(ops, op_name)

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    _EAGER_AUTOGRAD[name] = type(f"Fused_{op_name}", (torch.autograd.Function,),
                                 {"forward": staticmethod(forward),
                                  "backward": staticmethod(backward),
                                  "jvp": staticmethod(_no_forward_mode(name))})
    _register_functorch_autograd(name, backward, setup_context)


def _no_forward_mode(name: str):
    """A jvp staticmethod that says forward-mode AD is not supported, naming the operator
    (torch's own message would name no library)."""
    def jvp(ctx, *tangents):
        raise NotImplementedError(
            f"fused_rnn: forward-mode AD (torch.func.jvp / jacfwd / hessian, "
            f"torch.autograd.forward_ad) is not supported by the fused layers (operator {name}); "
            f"reverse mode is (backward, torch.func.grad / vjp / jacrev / vmap of grad). Use the "
            f"nn.* layer for forward-mode derivatives.")
    return jvp


def _register_functorch_autograd(name: str, backward, setup_context) -> None:
    """The operator `name` with this backward and setup_context as an autograd.Function that
    torch.func transforms accept: forward without ctx, setup_context apart, and a vmap rule
    generated from forward (under vmap the operator itself runs once per batch element)."""
    op_name = name.split("::")[1]
    op = getattr(ops, op_name)

    def forward(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    _FUNCTORCH_AUTOGRAD[name] = type(
        f"FusedFunc_{op_name}", (torch.autograd.Function,),
        {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
         "backward": staticmethod(backward), "jvp": staticmethod(_no_forward_mode(name)),
         "generate_vmap_rule": True})


def _batch_major(input: Tensor) -> bool:
    """The kernels keep sequence tensors in the input's memory layout: [T, B, F] contiguous
    (seq-major) or [B, T, F] contiguous seen as [T, B, F] (batch-major, as batch_first gives)."""
    return (not input.is_contiguous()) and input.transpose(0, 1).is_contiguous()


def _seq_empty(input: Tensor, features: int, like: Tensor) -> Tensor:
    """Empty [T, B, features] with like's dtype and device, in the layout the kernels give a
    sequence output for `input` ([T, B, I], or [T, B] token ids)."""
    T, B = input.shape[0], input.shape[1]
    if _batch_major(input):
        return like.new_empty((B, T, features)).transpose(0, 1)
    return like.new_empty((T, B, features))


def _is_tokens(input: Tensor) -> bool:
    return not input.is_floating_point() and not input.is_complex() and input.dtype != torch.bool


def _check_fake_args(op: str, gates: int, input: Tensor, w_hh: Tensor, *others) -> int:
    """Rank, w_hh shape and devices; the C++ kernels check everything else."""
    for t in (w_hh, *others):
        if isinstance(t, Tensor) and t.device != input.device:
            raise RuntimeError(f"{op}: expected all tensors on device {input.device} (the device "
                               f"of input), got one on {t.device}")
    if _is_tokens(input):
        torch._check(input.dim() == 2, lambda: f"{op}: expected token-id input to be 2-D "
                     f"[seq_len, batch], got {input.dim()}-D tensor of shape {list(input.shape)}")
    else:
        torch._check(input.dim() == 3, lambda: f"{op}: expected input to be 3-D [seq_len, "
                     f"batch, input_size], got {input.dim()}-D tensor of shape {list(input.shape)}")
    if gates is None:  # projected LSTM: w_hh is [4H, P], checked in C++
        return None
    torch._check(w_hh.dim() == 2 and w_hh.shape[0] == gates * w_hh.shape[1],
                 lambda: f"{op}: expected w_hh of shape [{gates}*hidden_size, hidden_size], "
                 f"got {list(w_hh.shape)}")
    return w_hh.shape[1]


def _require_saved(ctx, op: str, layer_fn: str) -> None:
    if not ctx.saved_activations:
        raise RuntimeError(
            f"{op} was called with save_activations=False, so it cannot be differentiated; call "
            f"it with save_activations=True (fused_rnn.{layer_fn} does so whenever a gradient is "
            f"needed)")


def _or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The gradient autograd passed for an output, zeros where the output was not used.
    The setup_context functions turn off autograd's own zero-filling (set_materialize_grads):
    it also filled the gradients of the saved activations, outputs nothing differentiates
    (GRU at T=35, B=32, H=256: a [T, B, 4H] fill, 0.7 ms of a 19 ms training step)."""
    return torch.zeros_like(like) if grad is None else grad


def _grad_input_fake(input: Tensor, w_hh: Tensor, compute_input_grad: bool) -> Tensor:
    if compute_input_grad and not _is_tokens(input):
        return _seq_empty(input, input.shape[2], w_hh)
    return w_hh.new_empty((0,))


# --------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------

@torch.library.register_fake("fused_rnn::gru_forward")
def _gru_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save_activations):
    H = _check_fake_args("fused_rnn::gru_forward", 3, input, w_hh, hx, w_ih, b_ih, b_hh)
    T, B = input.shape[0], input.shape[1]
    saved = w_hh.new_empty((T, B, 4 * H)) if save_activations else w_hh.new_empty((0,))
    return _seq_empty(input, H, w_hh), hx.new_empty((B, H)), saved


@torch.library.register_fake("fused_rnn::gru_backward")
def _gru_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, saved, lengths,
                       reverse, compute_input_grad):
    H = _check_fake_args("fused_rnn::gru_backward", 3, input, w_hh, grad_output, grad_hy, hx,
                         w_ih, output, saved)
    return (_grad_input_fake(input, w_hh, compute_input_grad), hx.new_empty((input.shape[1], H)),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_hh.new_empty((3 * H,)),
            w_hh.new_empty((3 * H,)))


def _gru_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (see _or_zeros)
    input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save_activations = inputs
    out, _h_n, saved = output
    ctx.mark_non_differentiable(saved)
    ctx.save_for_backward(input, hx, w_ih, w_hh, out, saved, lengths)
    ctx.reverse = reverse
    ctx.saved_activations = save_activations
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _gru_backward(ctx, grad_output, grad_hy, _grad_saved, backward_op=None):
    backward_op = backward_op or ops.gru_backward
    _require_saved(ctx, "fused_rnn GRU forward", "gru_layer")
    input, hx, w_ih, w_hh, out, saved, lengths = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    g_in, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = _call(
        backward_op, _or_zeros(grad_output, out), _or_zeros(grad_hy, hx), input, hx, w_ih, w_hh,
        out, saved, lengths, ctx.reverse, need_input)
    return (g_in if need_input else None, g_hx, g_w_ih, g_w_hh,
            g_b_ih if ctx.has_bias[0] else None, g_b_hh if ctx.has_bias[1] else None,
            None, None, None)


_register_autograd("fused_rnn::gru_forward", _gru_backward, _gru_setup_context)


# GRU, textbook form (reset gate before the hidden matmul): saved is [T, B, 3H] (r, z, n).
@torch.library.register_fake("fused_rnn::gru_textbook_forward")
def _gru_textbook_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                               save_activations):
    H = _check_fake_args("fused_rnn::gru_textbook_forward", 3, input, w_hh, hx, w_ih, b_ih, b_hh)
    T, B = input.shape[0], input.shape[1]
    saved = w_hh.new_empty((T, B, 3 * H)) if save_activations else w_hh.new_empty((0,))
    return _seq_empty(input, H, w_hh), hx.new_empty((B, H)), saved


@torch.library.register_fake("fused_rnn::gru_textbook_backward")
def _gru_textbook_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, saved,
                                lengths, reverse, compute_input_grad):
    return _gru_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, saved,
                              lengths, reverse, compute_input_grad)


def _gru_textbook_backward(ctx, grad_output, grad_hy, _grad_saved):
    return _gru_backward(ctx, grad_output, grad_hy, _grad_saved, ops.gru_textbook_backward)


_register_autograd("fused_rnn::gru_textbook_forward", _gru_textbook_backward, _gru_setup_context)


# --------------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------------

@torch.library.register_fake("fused_rnn::lstm_forward")
def _lstm_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save_activations):
    H = _check_fake_args("fused_rnn::lstm_forward", 4, input, w_hh, hx, cx, w_ih, b_ih, b_hh)
    T, B = input.shape[0], input.shape[1]
    if save_activations:
        gates, cells = _seq_empty(input, 4 * H, w_hh), w_hh.new_empty((T, B, H))
    else:
        gates, cells = w_hh.new_empty((0,)), w_hh.new_empty((0,))
    return _seq_empty(input, H, w_hh), hx.new_empty((B, H)), cx.new_empty((B, H)), gates, cells


@torch.library.register_fake("fused_rnn::lstm_backward")
def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, output,
                        saved_gates, saved_cells, lengths, reverse, compute_input_grad):
    H = _check_fake_args("fused_rnn::lstm_backward", 4, input, w_hh, grad_output, grad_hy,
                         grad_cy, hx, cx, w_ih, output, saved_gates, saved_cells)
    B = input.shape[1]
    return (_grad_input_fake(input, w_hh, compute_input_grad), hx.new_empty((B, H)),
            cx.new_empty((B, H)), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            w_hh.new_empty((4 * H,)), w_hh.new_empty((4 * H,)))


def _lstm_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (see _or_zeros)
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save_activations = inputs
    out, _h_n, _c_n, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, out, gates, cells, lengths)
    ctx.reverse = reverse
    ctx.saved_activations = save_activations
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _lstm_backward(ctx, grad_output, grad_hy, grad_cy, _grad_gates, _grad_cells):
    _require_saved(ctx, "fused_rnn::lstm_forward", "lstm_layer")
    input, hx, cx, w_ih, w_hh, out, gates, cells, lengths = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    g_in, g_hx, g_cx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = _call(
        ops.lstm_backward,
        _or_zeros(grad_output, out), _or_zeros(grad_hy, hx), _or_zeros(grad_cy, cx), input, hx,
        cx, w_ih, w_hh, out, gates, cells, lengths, ctx.reverse, need_input)
    return (g_in if need_input else None, g_hx, g_cx, g_w_ih, g_w_hh,
            g_b_ih if ctx.has_bias[0] else None, g_b_hh if ctx.has_bias[1] else None,
            None, None, None)


_register_autograd("fused_rnn::lstm_forward", _lstm_backward, _lstm_setup_context)


# LSTM with projection (proj_size P): w_hr: [P, H]; saved_hidden: [T, B, H].
@torch.library.register_fake("fused_rnn::lstm_proj_forward")
def _lstm_proj_forward_fake(input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse,
                            save_activations):
    _check_fake_args("fused_rnn::lstm_proj_forward", None, input, w_hh, hx, cx, w_ih, w_hr, b_ih, b_hh)
    T, B, P, H = input.shape[0], input.shape[1], w_hr.shape[0], w_hr.shape[1]
    if save_activations:
        saved = (_seq_empty(input, 4 * H, w_hh), w_hh.new_empty((T, B, H)), w_hh.new_empty((T, B, H)))
    else:
        saved = (w_hh.new_empty((0,)),) * 3
    return (_seq_empty(input, P, w_hh), hx.new_empty((B, P)), cx.new_empty((B, H)), *saved)


@torch.library.register_fake("fused_rnn::lstm_proj_backward")
def _lstm_proj_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr,
                             output, saved_gates, saved_cells, saved_hidden, lengths, reverse,
                             compute_input_grad):
    _check_fake_args("fused_rnn::lstm_proj_backward", None, input, w_hh, grad_output, hx, cx,
                     w_ih, w_hr, output)
    B, P, H = input.shape[1], w_hr.shape[0], w_hr.shape[1]
    return (_grad_input_fake(input, w_hh, compute_input_grad), hx.new_empty((B, P)),
            cx.new_empty((B, H)), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            w_hr.new_empty(w_hr.shape), w_hh.new_empty((4 * H,)), w_hh.new_empty((4 * H,)))


def _lstm_proj_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (see _or_zeros)
    input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh, lengths, reverse, save_activations = inputs
    out, _h_n, _c_n, gates, cells, hidden = output
    ctx.mark_non_differentiable(gates, cells, hidden)
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, w_hr, out, gates, cells, hidden, lengths)
    ctx.reverse = reverse
    ctx.saved_activations = save_activations
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _lstm_proj_backward(ctx, grad_output, grad_hy, grad_cy, *_grad_saved):
    _require_saved(ctx, "fused_rnn::lstm_proj_forward", "lstm_layer")
    input, hx, cx, w_ih, w_hh, w_hr, out, gates, cells, hidden, lengths = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    g_in, g_hx, g_cx, g_w_ih, g_w_hh, g_w_hr, g_b_ih, g_b_hh = _call(
        ops.lstm_proj_backward,
        _or_zeros(grad_output, out), _or_zeros(grad_hy, hx), _or_zeros(grad_cy, cx), input, hx,
        cx, w_ih, w_hh, w_hr, out, gates, cells, hidden, lengths, ctx.reverse, need_input)
    return (g_in if need_input else None, g_hx, g_cx, g_w_ih, g_w_hh, g_w_hr,
            g_b_ih if ctx.has_bias[0] else None, g_b_hh if ctx.has_bias[1] else None,
            None, None, None)


_register_autograd("fused_rnn::lstm_proj_forward", _lstm_proj_backward, _lstm_proj_setup_context)


# --------------------------------------------------------------------------------------------
# Elman RNN
# --------------------------------------------------------------------------------------------

@torch.library.register_fake("fused_rnn::rnn_forward")
def _rnn_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, relu, reverse):
    H = _check_fake_args("fused_rnn::rnn_forward", 1, input, w_hh, hx, w_ih, b_ih, b_hh)
    return _seq_empty(input, H, w_hh), hx.new_empty((input.shape[1], H))


@torch.library.register_fake("fused_rnn::rnn_backward")
def _rnn_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, lengths, relu,
                       reverse, compute_input_grad):
    H = _check_fake_args("fused_rnn::rnn_backward", 1, input, w_hh, grad_output, grad_hy, hx,
                         w_ih, output)
    return (_grad_input_fake(input, w_hh, compute_input_grad), hx.new_empty((input.shape[1], H)),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_hh.new_empty((H,)),
            w_hh.new_empty((H,)))


def _rnn_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (see _or_zeros)
    input, hx, w_ih, w_hh, b_ih, b_hh, lengths, relu, reverse = inputs
    out, _h_n = output
    ctx.save_for_backward(input, hx, w_ih, w_hh, out, lengths)
    ctx.relu, ctx.reverse = relu, reverse
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _rnn_backward(ctx, grad_output, grad_hy):
    input, hx, w_ih, w_hh, out, lengths = ctx.saved_tensors
    need_input = ctx.needs_input_grad[0]
    g_in, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = _call(
        ops.rnn_backward,
        _or_zeros(grad_output, out), _or_zeros(grad_hy, hx), input, hx, w_ih, w_hh, out, lengths,
        ctx.relu, ctx.reverse, need_input)
    return (g_in if need_input else None, g_hx, g_w_ih, g_w_hh,
            g_b_ih if ctx.has_bias[0] else None, g_b_hh if ctx.has_bias[1] else None,
            None, None, None)


_register_autograd("fused_rnn::rnn_forward", _rnn_backward, _rnn_setup_context)


# --------------------------------------------------------------------------------------------
# Double backward: not supported, and said so. The backward operators get an autograd formula
# that raises, so differentiating a gradient (create_graph=True, then backward through it)
# fails loudly instead of silently dropping the second-order terms through the fused layer.
# --------------------------------------------------------------------------------------------

def _register_no_double_backward(backward_op: str, layer: str) -> None:
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(
            f"fused_rnn: double backward is not supported: a gradient computed through "
            f"{layer} (the operator fused_rnn::{backward_op}) was differentiated again "
            f"(create_graph=True, then backward through that gradient). Use nn.{layer} for "
            f"higher-order gradients.")

    torch.library.register_autograd(f"fused_rnn::{backward_op}", backward,
                                    setup_context=setup_context)
    _register_functorch_autograd(f"fused_rnn::{backward_op}", backward, setup_context)


for _op, _layer in [("gru_backward", "GRU"), ("gru_textbook_backward", "GRU"),
                    ("lstm_backward", "LSTM"), ("lstm_proj_backward", "LSTM"),
                    ("rnn_backward", "RNN")]:
    _register_no_double_backward(_op, _layer)


# --------------------------------------------------------------------------------------------
# Functional entry points
# --------------------------------------------------------------------------------------------

def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether the forward operator saves its activations for a backward. Always while
    torch.jit.trace records: the traced graph keeps the value as a constant and must serve
    training as well (trace's own check traces again under no_grad and compares)."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, reverse: bool = False,
              lengths: Optional[Tensor] = None, reset_after: bool = True) -> Tuple[Tensor, Tensor]:
    """One fused GRU layer, one direction, PyTorch's gate order and semantics.

    input: [T, B, I], hx: [B, H], w_ih: [3H, I], w_hh: [3H, H], b_ih, b_hh: [3H] or None.
    Returns output: [T, B, H] (in input's memory layout) and h_n: [B, H].
    `reverse=True` runs from the last step to the first (the backward direction).
    lengths: int64 [B] on input's device, or None: sequence b has lengths[b] steps (h_n is its
    state after its own last step; outputs past its end are zero).
    reset_after=False: the textbook cell, reset gate applied before the hidden matmul,
    n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn) (PyTorch's: r * (h W_hn^T + b_hn)).
    """
    save = _needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh)
    op = ops.gru_forward if reset_after else ops.gru_textbook_forward
    output, h_n, _ = _call(op, input, hx, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save)
    return output, h_n


def lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
               reverse: bool = False, lengths: Optional[Tensor] = None,
               w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One fused LSTM layer, one direction, PyTorch's gate order (i, f, g, o) and semantics.

    input: [T, B, I], hx, cx: [B, H], w_ih: [4H, I], w_hh: [4H, H], b_ih, b_hh: [4H] or None,
    lengths: int64 [B] or None (see gru_layer). Returns output: [T, B, H], h_n, c_n: [B, H].
    w_hr: [P, H] (nn.LSTM's proj_size = P): h = (o * tanh(c)) W_hr^T, then hx, h_n: [B, P],
    w_hh: [4H, P] and output: [T, B, P].
    """
    save = _needs_grad(input, hx, cx, w_ih, w_hh, w_hr, b_ih, b_hh)
    if w_hr is not None:
        output, h_n, c_n, _, _, _ = _call(ops.lstm_proj_forward, input, hx, cx, w_ih, w_hh,
                                          w_hr, b_ih, b_hh, lengths, reverse, save)
        return output, h_n, c_n
    output, h_n, c_n, _, _ = _call(ops.lstm_forward, input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                                   lengths, reverse, save)
    return output, h_n, c_n


def rnn_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, nonlinearity: str = "tanh", reverse: bool = False,
              lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One fused Elman RNN layer: h = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act tanh or relu.

    input: [T, B, I], hx: [B, H], w_ih: [H, I], w_hh: [H, H], b_ih, b_hh: [H] or None,
    lengths: int64 [B] or None (see gru_layer). Returns output: [T, B, H], h_n: [B, H].
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return _call(ops.rnn_forward, input, hx, w_ih, w_hh, b_ih, b_hh, lengths,
                 nonlinearity == "relu", reverse)
