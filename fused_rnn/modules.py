"""Drop-in replacements of nn.GRU and nn.LSTM whose time loops run in the fused kernels.

They subclass nn.RNNBase (not nn.GRU / nn.LSTM: torch.compile refuses any instance of those), so
constructor, parameter names, state_dict and repr are nn.GRU's / nn.LSTM's own.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._ops import gru_layer, lstm_layer


class _FusedRNNBase(nn.RNNBase):
    """Layer / direction loop shared by the fused modules; one fused op call per layer and
    direction. Subclasses give the number of state tensors and the one-layer function."""

    def _unsupported(self, input) -> None:
        name = self._get_name()
        if isinstance(input, PackedSequence):
            raise NotImplementedError(
                f"fused_rnn.{name}: PackedSequence input is not supported yet; pass a padded "
                f"tensor (and mask the padding) instead")
        if self.proj_size > 0:
            raise NotImplementedError(f"fused_rnn.{name}: proj_size={self.proj_size} is not "
                                      f"supported yet; only proj_size=0")

    def _layer_weights(self, idx: int):
        """w_ih: [G*H, I_l], w_hh: [G*H, H], b_ih, b_hh: [G*H] or None, of layer*dirs + dir."""
        names = self._flat_weights_names
        per = len(names) // (self.num_layers * (2 if self.bidirectional else 1))
        # by name, not from the cached self._flat_weights: torch.func.functional_call and
        # parametrizations replace the attributes without refreshing that cache
        w = [getattr(self, n) for n in names[idx * per:(idx + 1) * per]]
        if self.bias:
            return w[0], w[1], w[2], w[3]
        return w[0], w[1], None, None

    def _check_devices_and_dtypes(self, input: Tensor, states: List[Tuple[str, Tensor]]) -> None:
        name = self._get_name()
        weight = self.weight_ih_l0
        if input.device != weight.device:
            raise RuntimeError(f"fused_rnn.{name}: expected input on device {weight.device} (the "
                               f"device of the parameters), got {input.device}")
        for state_name, t in states:
            if t.dtype != input.dtype:
                raise RuntimeError(f"fused_rnn.{name}: expected {state_name} with dtype "
                                   f"{input.dtype} (the dtype of input), got {t.dtype}")
            if t.device != input.device:
                raise RuntimeError(f"fused_rnn.{name}: expected {state_name} on device "
                                   f"{input.device} (the device of input), got {t.device}")

    def _run(self, x: Tensor, states: List[Tensor], layer_fn) -> Tuple[Tensor, List[Tensor]]:
        """x: [T, B, I] (any layout the kernels keep); states: each [L*D, B, H].
        Returns output: [T, B, D*H] and the final states, each [L*D, B, H]."""
        num_dirs = 2 if self.bidirectional else 1
        finals: List[List[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(num_dirs):
                idx = layer * num_dirs + d
                results = layer_fn(layer_input, [s[idx] for s in states],
                                   self._layer_weights(idx), d == 1)
                outs.append(results[0])
                for final, r in zip(finals, results[1:]):
                    final.append(r)
            if num_dirs == 1:
                layer_output = outs[0]
            elif outs[0].is_contiguous():
                layer_output = torch.cat(outs, 2)
            else:  # batch-major: concatenate features in that layout so batch_first stays free
                layer_output = torch.cat([o.transpose(0, 1) for o in outs], 2).transpose(0, 1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_output = F.dropout(layer_output, self.dropout, True)
            layer_input = layer_output
        return layer_input, [torch.stack(f) for f in finals]

    def _prepare(self, input: Tensor, hx, num_states: int):
        """nn.*'s input handling: rank check, unbatched input, zero initial states.
        Returns x: [T, B, I], the states (each [L*D, B, H]) and whether input was batched."""
        self._unsupported(input)
        name = self._get_name()
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D input "
                             f"instead")
        batched = input.dim() == 3
        states = None if hx is None else (list(hx) if num_states > 1 else [hx])
        if states is not None:
            want = 3 if batched else 2
            for s in states:
                if s.dim() != want:
                    kind = "batched 3-D" if batched else "unbatched 2-D"
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                                       f"{s.dim()}-D tensor")
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if states is not None:
                states = [s.unsqueeze(1) for s in states]
        batch = input.size(0) if self.batch_first else input.size(1)
        if states is None:
            num_dirs = 2 if self.bidirectional else 1
            zeros = torch.zeros(self.num_layers * num_dirs, batch, self.hidden_size,
                                dtype=input.dtype, device=input.device)
            states = [zeros] * num_states
        return input, states, batched

    def _finish(self, output: Tensor, batched: bool) -> Tensor:
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
        return output


def _gru_layer_fn(x, states, weights, reverse):
    out, h_n = gru_layer(x, states[0], *weights, reverse=reverse)
    return out, h_n


def _lstm_layer_fn(x, states, weights, reverse):
    return lstm_layer(x, states[0], states[1], *weights, reverse=reverse)


class GRU(_FusedRNNBase):
    """Fused drop-in for ``torch.nn.GRU``: same arguments, parameters, state_dict and results.

    Args as nn.GRU: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None.
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """input: [T, B, I] ([B, T, I] if batch_first) or unbatched [T, I];
        hx: [L*D, B, H] (or [L*D, H]) or None. Returns output: [T, B, D*H], h_n: [L*D, B, H]."""
        input, (h0,), batched = self._prepare(input, hx, 1)
        self.check_forward_args(input, h0, None)
        self._check_devices_and_dtypes(input, [("hx", h0)])
        x = input.transpose(0, 1) if self.batch_first else input
        output, (h_n,) = self._run(x, [h0], _gru_layer_fn)
        if not batched:
            h_n = h_n.squeeze(1)
        return self._finish(output, batched), h_n


class LSTM(_FusedRNNBase):
    """Fused drop-in for ``torch.nn.LSTM``: same arguments, parameters, state_dict and results.

    Args as nn.LSTM: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0 (only 0 is fused so far), device=None,
    dtype=None.
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def check_forward_args(self, input: Tensor, hidden: Tuple[Tensor, Tensor], batch_sizes):
        # nn.LSTM's checks: input, then h and c shapes
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """input: [T, B, I] ([B, T, I] if batch_first) or unbatched [T, I];
        hx: (h0, c0), each [L*D, B, H] (or [L*D, H]), or None.
        Returns output: [T, B, D*H] and (h_n, c_n), each [L*D, B, H]."""
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise RuntimeError(f"fused_rnn.LSTM: expected hx to be a tuple (h0, c0), got "
                               f"{type(hx).__name__}")
        input, (h0, c0), batched = self._prepare(input, hx, 2)
        self.check_forward_args(input, (h0, c0), None)
        self._check_devices_and_dtypes(input, [("h0", h0), ("c0", c0)])
        x = input.transpose(0, 1) if self.batch_first else input
        output, (h_n, c_n) = self._run(x, [h0, c0], _lstm_layer_fn)
        if not batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish(output, batched), (h_n, c_n)
