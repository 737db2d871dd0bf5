"""Textbook GRU and LSTM cells, written as plain PyTorch loops over time: the test oracle.

Notation of the gated-RNN lesson (d2l): X_t: [B, I] the input of step t, H: [B, H] the hidden
state, W_x*: [I, H] input weights, W_h*: [H, H] hidden weights, b_*: [H] biases.

GRU:  R = sigmoid(X W_xr + H W_hr + b_r)            reset gate
      Z = sigmoid(X W_xz + H W_hz + b_z)            update gate
      H~ = tanh(X W_xh + b_xh + R * (H W_hh + b_hh))    PyTorch / cuDNN form (reset_after=True)
      H~ = tanh(X W_xh + b_xh + (R * H) W_hh + b_hh)    textbook form        (reset_after=False)
      H = Z * H + (1 - Z) * H~
LSTM: I = sigmoid(X W_xi + H W_hi + b_i), F = sigmoid(...f), O = sigmoid(...o),
      C~ = tanh(X W_xc + H W_hc + b_c),  C = F * C + I * C~,  H = O * tanh(C)
RNN:  H = phi(X W_xh + H W_hh + b_h), phi = tanh or relu

`*_params_from_torch` convert nn.GRU / nn.LSTM's layout (w_ih: [G*H, I] with gate blocks
r, z, n / i, f, g, o, separate b_ih and b_hh) into these names.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor


@dataclass
class GRUParams:
    W_xr: Tensor  # [I, H]
    W_hr: Tensor  # [H, H]
    b_r: Tensor   # [H]
    W_xz: Tensor  # [I, H]
    W_hz: Tensor  # [H, H]
    b_z: Tensor   # [H]
    W_xh: Tensor  # [I, H]
    W_hh: Tensor  # [H, H]
    b_xh: Tensor  # [H]  input-side bias of the candidate
    b_hh: Tensor  # [H]  hidden-side bias of the candidate (inside the reset gate's product)


@dataclass
class LSTMParams:
    W_xi: Tensor  # [I, H]
    W_hi: Tensor  # [H, H]
    b_i: Tensor   # [H]
    W_xf: Tensor
    W_hf: Tensor
    b_f: Tensor
    W_xo: Tensor
    W_ho: Tensor
    b_o: Tensor
    W_xc: Tensor
    W_hc: Tensor
    b_c: Tensor


@dataclass
class RNNParams:
    W_xh: Tensor  # [I, H]
    W_hh: Tensor  # [H, H]
    b_h: Tensor   # [H]


def _blocks(w: Tensor, n: int):
    """Split a [n*H, ...] PyTorch weight into n gate blocks, each transposed to [..., H]."""
    return [blk.t() if blk.dim() == 2 else blk for blk in w.chunk(n, 0)]


def gru_params_from_torch(w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                          b_hh: Optional[Tensor] = None) -> GRUParams:
    """w_ih: [3H, I], w_hh: [3H, H], b_ih, b_hh: [3H] or None (nn.GRU's weight_ih_l0 etc.)."""
    H = w_hh.shape[1]
    zeros = w_hh.new_zeros(3 * H)
    b_ih = zeros if b_ih is None else b_ih
    b_hh = zeros if b_hh is None else b_hh
    (W_xr, W_xz, W_xh), (W_hr, W_hz, W_hh) = _blocks(w_ih, 3), _blocks(w_hh, 3)
    (bi_r, bi_z, bi_n), (bh_r, bh_z, bh_n) = b_ih.chunk(3), b_hh.chunk(3)
    return GRUParams(W_xr, W_hr, bi_r + bh_r, W_xz, W_hz, bi_z + bh_z, W_xh, W_hh, bi_n, bh_n)


def lstm_params_from_torch(w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                           b_hh: Optional[Tensor] = None) -> LSTMParams:
    """w_ih: [4H, I], w_hh: [4H, H], b_ih, b_hh: [4H] or None (nn.LSTM's weight_ih_l0 etc.)."""
    H = w_hh.shape[1]
    zeros = w_hh.new_zeros(4 * H)
    b = (zeros if b_ih is None else b_ih) + (zeros if b_hh is None else b_hh)
    (W_xi, W_xf, W_xc, W_xo), (W_hi, W_hf, W_hc, W_ho) = _blocks(w_ih, 4), _blocks(w_hh, 4)
    b_i, b_f, b_c, b_o = b.chunk(4)
    return LSTMParams(W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c)


def rnn_params_from_torch(w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
                          b_hh: Optional[Tensor] = None) -> RNNParams:
    """w_ih: [H, I], w_hh: [H, H], b_ih, b_hh: [H] or None (nn.RNN's weight_ih_l0 etc.)."""
    zeros = w_hh.new_zeros(w_hh.shape[0])
    b = (zeros if b_ih is None else b_ih) + (zeros if b_hh is None else b_hh)
    return RNNParams(w_ih.t(), w_hh.t(), b)


def rnn_cell(X: Tensor, H: Tensor, p: RNNParams, nonlinearity: str = "tanh") -> Tensor:
    """One step. X: [B, I], H: [B, H] -> new H: [B, H]."""
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    return phi(X @ p.W_xh + H @ p.W_hh + p.b_h)


def gru_cell(X: Tensor, H: Tensor, p: GRUParams, reset_after: bool = True) -> Tensor:
    """One step. X: [B, I], H: [B, H] -> new H: [B, H]."""
    R = torch.sigmoid(X @ p.W_xr + H @ p.W_hr + p.b_r)
    Z = torch.sigmoid(X @ p.W_xz + H @ p.W_hz + p.b_z)
    if reset_after:
        H_tilda = torch.tanh(X @ p.W_xh + p.b_xh + R * (H @ p.W_hh + p.b_hh))
    else:
        H_tilda = torch.tanh(X @ p.W_xh + p.b_xh + (R * H) @ p.W_hh + p.b_hh)
    return Z * H + (1 - Z) * H_tilda


def lstm_cell(X: Tensor, H: Tensor, C: Tensor, p: LSTMParams) -> Tuple[Tensor, Tensor]:
    """One step. X: [B, I], H, C: [B, H] -> new (H, C)."""
    I = torch.sigmoid(X @ p.W_xi + H @ p.W_hi + p.b_i)
    F = torch.sigmoid(X @ p.W_xf + H @ p.W_hf + p.b_f)
    O = torch.sigmoid(X @ p.W_xo + H @ p.W_ho + p.b_o)
    C_tilda = torch.tanh(X @ p.W_xc + H @ p.W_hc + p.b_c)
    C = F * C + I * C_tilda
    return O * torch.tanh(C), C


def _unroll(step, inputs: Tensor, states: Tuple[Tensor, ...], reverse: bool):
    """Run step(X_t, *states) -> new states (the first is H) over inputs: [T, B, I], from the
    last step first if reverse. Returns outputs: [T, B, H] (H of each step) and final states."""
    T = inputs.shape[0]
    outputs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        states = step(inputs[t], *states)
        outputs[t] = states[0]
    return (torch.stack(outputs) if T else inputs.new_zeros(0, *states[0].shape)), states


def gru(inputs: Tensor, H: Tensor, p: GRUParams, reverse: bool = False,
        reset_after: bool = True) -> Tuple[Tensor, Tensor]:
    """inputs: [T, B, I], H: [B, H] -> outputs: [T, B, H], final H: [B, H]."""
    outputs, (H,) = _unroll(lambda X, H: (gru_cell(X, H, p, reset_after),), inputs, (H,), reverse)
    return outputs, H


def rnn(inputs: Tensor, H: Tensor, p: RNNParams, nonlinearity: str = "tanh",
        reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """inputs: [T, B, I], H: [B, H] -> outputs: [T, B, H], final H: [B, H]."""
    outputs, (H,) = _unroll(lambda X, H: (rnn_cell(X, H, p, nonlinearity),), inputs, (H,), reverse)
    return outputs, H


def lstm(inputs: Tensor, H: Tensor, C: Tensor, p: LSTMParams, reverse: bool = False
         ) -> Tuple[Tensor, Tensor, Tensor]:
    """inputs: [T, B, I], H, C: [B, H] -> outputs: [T, B, H], final H, final C: [B, H]."""
    outputs, (H, C) = _unroll(lambda X, H, C: lstm_cell(X, H, C, p), inputs, (H, C), reverse)
    return outputs, H, C


def run_module(module, input: Tensor, hx=None):
    """The textbook cells run with the parameters of an nn.GRU / LSTM / RNN (or fused_rnn) module,
    any num_layers / bidirectional / batch_first, no dropout. Returns what the module returns."""
    is_lstm = module.mode == "LSTM"
    if module.proj_size:
        raise NotImplementedError("reference.run_module: proj_size is not modelled")
    D = 2 if module.bidirectional else 1
    x = input.transpose(0, 1) if module.batch_first else input
    B, Hs = x.shape[1], module.hidden_size
    if hx is None:
        zeros = x.new_zeros(module.num_layers * D, B, Hs)
        hx = (zeros, zeros) if is_lstm else zeros
    h0, c0 = hx if is_lstm else (hx, None)
    finals_h, finals_c = [], []
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = [getattr(module, f"weight_ih{sfx}"), getattr(module, f"weight_hh{sfx}")]
            b = ([getattr(module, f"bias_ih{sfx}"), getattr(module, f"bias_hh{sfx}")]
                 if module.bias else [None, None])
            idx = layer * D + d
            if is_lstm:
                out, h, c = lstm(x, h0[idx], c0[idx], lstm_params_from_torch(*w, *b), reverse=d == 1)
                finals_c.append(c)
            elif module.mode == "GRU":
                out, h = gru(x, h0[idx], gru_params_from_torch(*w, *b), reverse=d == 1)
            else:
                phi = "relu" if module.mode == "RNN_RELU" else "tanh"
                out, h = rnn(x, h0[idx], rnn_params_from_torch(*w, *b), phi, reverse=d == 1)
            outs.append(out)
            finals_h.append(h)
        x = torch.cat(outs, 2)
    output = x.transpose(0, 1) if module.batch_first else x
    if is_lstm:
        return output, (torch.stack(finals_h), torch.stack(finals_c))
    return output, torch.stack(finals_h)
