"""Drop-in replacements of nn.GRU, nn.LSTM and nn.RNN whose time loops run in the fused kernels.

They subclass nn.RNNBase (not nn.GRU / nn.LSTM / nn.RNN: torch.compile refuses any instance of
those), so constructor, parameter names, state_dict and repr are nn.*'s own.
PackedSequence input is run as a padded batch with per-sequence lengths inside the fused loop.
Integer input holds token ids ([T, B], [B, T] if batch_first, or [T]) of a layer built with
input_size = vocabulary size: the result equals feeding one-hot vectors, computed by gathering
columns of weight_ih_l0 (no one-hot tensor is built).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._ops import _is_tokens, gru_layer, lstm_layer, rnn_layer


def _unpack(packed: PackedSequence, batch: int) -> Tuple[Tensor, Tensor]:
    """pad_packed_sequence as gathers: x: [T, B, *F] in the caller's order of sequences (zeros
    past each end) and lengths: int64 [B] on the data's device. packed.data: [N, *F]."""
    data = packed.data
    sizes = packed.batch_sizes.to(data.device)                          # [T]
    T = sizes.shape[0]
    cols = torch.arange(batch, device=data.device)                      # [B]
    valid = cols.unsqueeze(0) < sizes.unsqueeze(1)                      # [T, B], sorted order
    starts = torch.cumsum(sizes, 0) - sizes                             # [T]
    index = torch.where(valid, starts.unsqueeze(1) + cols.unsqueeze(0), 0)  # [T, B]
    feat = data.shape[1:]
    x = data[index.reshape(-1)].reshape(T, batch, *feat)
    x = torch.where(valid.reshape(T, batch, *([1] * len(feat))), x, torch.zeros_like(x))
    lengths = valid.sum(0)                                              # [B]
    if packed.unsorted_indices is not None:
        x = x.index_select(1, packed.unsorted_indices)
        lengths = lengths.index_select(0, packed.unsorted_indices)
    return x, lengths


def _repack(output: Tensor, packed: PackedSequence) -> PackedSequence:
    """pack_padded_sequence of output: [T, B, H] (caller's order) as a gather into the layout
    of `packed` (same batch_sizes and indices): data [N, H]."""
    sizes = packed.batch_sizes.to(output.device)                        # [T]
    if packed.sorted_indices is not None:
        output = output.index_select(1, packed.sorted_indices)
    ends = torch.cumsum(sizes, 0)                                       # [T]
    rows = torch.arange(packed.data.shape[0], device=output.device)     # [N]
    t = torch.searchsorted(ends, rows, right=True)                      # [N]
    b = rows - (ends - sizes)[t]
    return PackedSequence(output[t, b], packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


class _FusedRNNBase(nn.RNNBase):
    """Layer / direction loop shared by the fused modules; one fused op call per layer and
    direction. Subclasses give the number of state tensors and the one-layer function."""

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: the forward is Python (PackedSequence, token ids,
        lengths, the operators' autograd), not TorchScript, so say what works instead of
        failing inside the script compiler."""
        raise RuntimeError(
            f"fused_rnn.{type(self).__name__} cannot be compiled by torch.jit.script "
            f"(TorchScript); use torch.compile, torch.export.export or torch.jit.trace, which "
            f"record the fused operators (fused_rnn::*), or nn.{type(self).__name__} for "
            f"TorchScript.")

    def _layer_weights(self, idx: int):
        """w_ih: [G*H, I_l], w_hh: [G*H, H], b_ih, b_hh: [G*H] or None, of layer*dirs + dir
        (LSTM with proj_size: w_hh: [4H, P], and w_hr: [P, H] follows)."""
        names = self._flat_weights_names
        per = len(names) // (self.num_layers * (2 if self.bidirectional else 1))
        # by name, not from the cached self._flat_weights: torch.func.functional_call and
        # parametrizations replace the attributes without refreshing that cache. The
        # _parameters entry first (what functional_call swaps; nn.Module.__getattr__ would look
        # there after a failed attribute lookup, ~2 us a name), getattr for anything else
        # (a parametrized weight is a property).
        params, layer = self._parameters, names[idx * per:(idx + 1) * per]
        w = [params.get(n) for n in layer]
        w = [getattr(self, n) if p is None else p for n, p in zip(layer, w)]
        weights = (w[0], w[1], w[2], w[3]) if self.bias else (w[0], w[1], None, None)
        return weights + ((w[-1],) if self.proj_size > 0 else ())

    def _check_devices_and_dtypes(self, input: Tensor, states: List[Tuple[str, Tensor]]) -> None:
        name = self._get_name()
        weight = self.weight_ih_l0
        if input.device != weight.device:
            raise RuntimeError(f"fused_rnn.{name}: expected input on device {weight.device} (the "
                               f"device of the parameters), got {input.device}")
        dtype, of = (weight.dtype, "parameters") if _is_tokens(input) else (input.dtype, "input")
        for state_name, t in states:
            if t.dtype != dtype:
                raise RuntimeError(f"fused_rnn.{name}: expected {state_name} with dtype "
                                   f"{dtype} (the dtype of {of}), got {t.dtype}")
            if t.device != input.device:
                raise RuntimeError(f"fused_rnn.{name}: expected {state_name} on device "
                                   f"{input.device} (the device of input), got {t.device}")

    def _run(self, x: Tensor, states: List[Tensor], layer_fn, lengths: Optional[Tensor] = None
             ) -> Tuple[Tensor, List[Tensor]]:
        """x: [T, B, I] (any layout the kernels keep); states: each [L*D, B, H]; lengths: int64
        [B] on x's device or None. Returns output: [T, B, D*H], final states each [L*D, B, H]."""
        num_dirs = 2 if self.bidirectional else 1
        finals: List[List[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(num_dirs):
                idx = layer * num_dirs + d
                results = layer_fn(self, layer_input, [s[idx] for s in states],
                                   self._layer_weights(idx), d == 1, lengths)
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
        return layer_input, [f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f)
                             for f in finals]

    def _forward(self, input, hx, num_states: int, layer_fn, lengths: Optional[Tensor] = None):
        """The whole forward: nn.*'s input handling, then the layers. Returns the output (a
        tensor or a PackedSequence, like input) and the final states, each [L*D, B, H]."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(f"fused_rnn.{self._get_name()}: lengths= goes with a padded "
                                 f"tensor, not with a PackedSequence (which has its own)")
            return self._forward_packed(input, hx, num_states, layer_fn)
        input, states, batched = self._prepare(input, hx, num_states)
        self._check_states(input, states, None)
        x = input.transpose(0, 1) if self.batch_first else input
        if lengths is not None:
            lengths = self._check_lengths(lengths, x)
        output, finals = self._run(x, states, layer_fn, lengths)
        if not batched:
            finals = [f.squeeze(1) for f in finals]
        return self._finish(output, batched), finals

    def _forward_packed(self, packed: PackedSequence, hx, num_states: int, layer_fn):
        """PackedSequence: padded [T, B, I] in the caller's batch order plus per-sequence lengths,
        which the fused loop honours (no per-length slicing); repacked like the input. Unpacking
        and repacking are gathers that torch.compile traces (pad_packed_sequence and
        pack_padded_sequence are skipped by dynamo)."""
        B = self._packed_batch(packed, hx)
        x, lengths = _unpack(packed, B)  # x: [T, B, I] (ids: [T, B]), lengths: [B]
        states = self._initial_states(hx, num_states, B, x)
        self._check_states(x.transpose(0, 1) if self.batch_first else x, states, None)
        output, finals = self._run(x, states, layer_fn, lengths)
        return _repack(output, packed), finals

    def _packed_batch(self, packed: PackedSequence, hx) -> int:
        """Number of sequences of `packed`: from a shape where there is one (sorted_indices, or
        the given initial state), else the value batch_sizes[0] (under torch.compile an unbacked
        size, which dynamo allows with capture_scalar_outputs)."""
        if packed.sorted_indices is not None:
            return packed.sorted_indices.shape[0]
        if hx is not None:
            h = hx[0] if isinstance(hx, tuple) else hx
            if isinstance(h, Tensor) and h.dim() == 3:
                batch = h.shape[1]  # must be the packed batch's size (batch_sizes[0])
                if torch.compiler.is_compiling():
                    torch._assert_async(packed.batch_sizes[0] == batch,
                                        "fused_rnn: the initial state's batch size differs "
                                        "from the PackedSequence's (batch_sizes[0])")
                elif int(packed.batch_sizes[0]) != batch:
                    want = (h.shape[0], int(packed.batch_sizes[0]), h.shape[2])
                    raise RuntimeError(f"Expected hidden size {want}, got {list(h.shape)}")
                return batch
        if torch.compiler.is_compiling():
            if not torch._dynamo.config.capture_scalar_outputs:
                raise RuntimeError(
                    f"fused_rnn.{self._get_name()}: under torch.compile a PackedSequence packed "
                    f"with enforce_sorted=True and no initial state has its batch size only as "
                    f"the value batch_sizes[0]: pack with enforce_sorted=False, pass the initial "
                    f"state, give padded input with lengths=, or set "
                    f"torch._dynamo.config.capture_scalar_outputs = True")
            batch = packed.batch_sizes[0].item()  # an unbacked size in the graph
            torch._check(batch >= 1)
            return batch
        return int(packed.batch_sizes[0])

    def _check_lengths(self, lengths: Tensor, x: Tensor) -> Tensor:
        """lengths: [B] integers in [0, T] for x: [T, B, ...]; returned as int64 on x's device."""
        name = self._get_name()
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != x.shape[1] or lengths.is_floating_point():
            raise ValueError(f"fused_rnn.{name}: expected lengths as integers of shape [batch="
                             f"{x.shape[1]}], got {lengths.dtype} of shape {list(lengths.shape)}")
        if lengths.numel() and not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 0 or hi > x.shape[0]:
                raise ValueError(f"fused_rnn.{name}: expected lengths in [0, seq_len={x.shape[0]}],"
                                 f" got values in [{lo}, {hi}]")
        return lengths.to(device=x.device, dtype=torch.long)

    def _initial_states(self, hx, num_states: int, batch: int, like: Tensor) -> List[Tensor]:
        if hx is not None:
            return list(hx) if num_states > 1 else [hx]
        num_dirs = 2 if self.bidirectional else 1
        dtype = self.weight_ih_l0.dtype if _is_tokens(like) else like.dtype
        sizes = [self.proj_size or self.hidden_size, self.hidden_size][:num_states]  # h, c
        return [torch.zeros(self.num_layers * num_dirs, batch, n, dtype=dtype, device=like.device)
                for n in sizes]

    def _check_states(self, input: Tensor, states: List[Tensor], batch_sizes) -> None:
        names = ["hx"] if len(states) == 1 else ["h0", "c0"]
        if _is_tokens(input):
            self._check_tokens(input, batch_sizes)
            for i, state in enumerate(states):
                expected = (self.get_expected_cell_size(input, batch_sizes) if i == 1
                            else self.get_expected_hidden_size(input, batch_sizes))
                msg = "Expected hidden size {}, got {}" if len(states) == 1 else \
                    f"Expected hidden[{i}] size {{}}, got {{}}"
                self.check_hidden_size(state, expected, msg)
        else:
            self.check_forward_args(input, states[0] if len(states) == 1 else tuple(states),
                                    batch_sizes)
        self._check_devices_and_dtypes(input, list(zip(names, states)))

    def _check_tokens(self, ids: Tensor, batch_sizes) -> None:
        """Token ids: [T, B] ([B, T] if batch_first), or packed [N]; values in [0, input_size)."""
        name = self._get_name()
        want = 1 if batch_sizes is not None else 2
        if ids.dim() != want:
            raise RuntimeError(f"fused_rnn.{name}: expected token-id input of {want} dimensions, "
                               f"got {ids.dim()}-D tensor of shape {list(ids.shape)}")
        # Reading the values back: not when compiling (the compiled graph's operator checks
        # them in C++), nor while a CUDA stream is being captured into a graph, where reading
        # back is not allowed (the operators skip their own check then too: csrc/rnn_ops.h)
        capturing = ids.is_cuda and torch.cuda.is_current_stream_capturing()
        if ids.numel() and not torch.compiler.is_compiling() and not capturing:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.input_size:
                raise IndexError(f"fused_rnn.{name}: token ids must be in [0, input_size="
                                 f"{self.input_size}), got values in [{lo}, {hi}]")

    def _prepare(self, input: Tensor, hx, num_states: int):
        """nn.*'s input handling: rank check, unbatched input, zero initial states.
        Returns x: [T, B, I], the states (each [L*D, B, H]) and whether input was batched."""
        name = self._get_name()
        tokens = _is_tokens(input)
        dims = (1, 2) if tokens else (2, 3)
        if input.dim() not in dims:
            kind = "token-id input to be 1D or 2D" if tokens else "input to be 2D or 3D"
            raise ValueError(f"{name}: Expected {kind}, got {input.dim()}D input instead")
        batched = input.dim() == dims[1]
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
        steps = input.size(1) if self.batch_first else input.size(0)
        if steps == 0:  # as nn.*, which refuses empty sequences
            raise RuntimeError(f"{name}: Expected sequence length to be larger than 0 in RNN, "
                               f"got input of shape {list(input.shape)}")
        batch = input.size(0) if self.batch_first else input.size(1)
        if states is None:
            states = self._initial_states(None, num_states, batch, input)
        return input, states, batched

    def _finish(self, output: Tensor, batched: bool) -> Tensor:
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(0 if self.batch_first else 1)
        return output


def _gru_layer_fn(module, x, states, weights, reverse, lengths):
    return gru_layer(x, states[0], *weights, reverse=reverse, lengths=lengths,
                     reset_after=module.reset_after)


def _lstm_layer_fn(module, x, states, weights, reverse, lengths):
    w_hr = weights[4] if len(weights) > 4 else None
    return lstm_layer(x, states[0], states[1], *weights[:4], reverse=reverse, lengths=lengths,
                      w_hr=w_hr)


def _rnn_layer_fn(module, x, states, weights, reverse, lengths):
    return rnn_layer(x, states[0], *weights, nonlinearity=module.nonlinearity, reverse=reverse,
                     lengths=lengths)


class GRU(_FusedRNNBase):
    """Fused drop-in for ``torch.nn.GRU``: same arguments, parameters, state_dict and results.

    Args as nn.GRU: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None; and, keyword only,
    reset_after=True (PyTorch's cell). reset_after=False is the textbook cell of the gated-RNN
    lesson: the reset gate scales h before the hidden matmul,
    n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn); same parameters, fused the same way.
    """

    def __init__(self, *args, reset_after: bool = True, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        self.reset_after = bool(reset_after)
        super().__init__("GRU", *args, **kwargs)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset_after else s + ", reset_after=False"

    def forward(self, input, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None):
        """input: [T, B, I] ([B, T, I] if batch_first), unbatched [T, I], token ids, or a
        PackedSequence; hx: [L*D, B, H] (or [L*D, H]) or None.
        lengths (fused_rnn only): [B] per-sequence lengths of a padded batch, the same result
        as packing it, with no PackedSequence (which torch.compile cannot trace).
        Returns output: [T, B, D*H], h_n: [L*D, B, H]."""
        output, (h_n,) = self._forward(input, hx, 1, _gru_layer_fn, lengths)
        return output, h_n


class LSTM(_FusedRNNBase):
    """Fused drop-in for ``torch.nn.LSTM``: same arguments, parameters, state_dict and results.

    Args as nn.LSTM: input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None.
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def check_forward_args(self, input: Tensor, hidden: Tuple[Tensor, Tensor], batch_sizes):
        # nn.LSTM's checks: input, then h (proj_size wide if projected) and c shapes
        self.check_input(input, batch_sizes)
        self.check_hidden_size(hidden[0], self.get_expected_hidden_size(input, batch_sizes),
                               "Expected hidden[0] size {}, got {}")
        self.check_hidden_size(hidden[1], self.get_expected_cell_size(input, batch_sizes),
                               "Expected hidden[1] size {}, got {}")

    def get_expected_cell_size(self, input: Tensor, batch_sizes) -> Tuple[int, int, int]:
        h = self.get_expected_hidden_size(input, batch_sizes)
        return (h[0], h[1], self.hidden_size)

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None):
        """input as in fused_rnn.GRU.forward; hx: (h0, c0), each [L*D, B, H] (or [L*D, H]), or
        None; lengths as in fused_rnn.GRU.forward.
        Returns output: [T, B, D*H] and (h_n, c_n), each [L*D, B, H]."""
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise RuntimeError(f"fused_rnn.LSTM: expected hx to be a tuple (h0, c0), got "
                               f"{type(hx).__name__}")
        output, (h_n, c_n) = self._forward(input, hx, 2, _lstm_layer_fn, lengths)
        return output, (h_n, c_n)


class RNN(_FusedRNNBase):
    """Fused drop-in for ``torch.nn.RNN`` (Elman, tanh or relu): same arguments, parameters,
    state_dict and results.

    Args as nn.RNN: input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None.
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:  # nn.RNN's positional order: nonlinearity is the fourth argument
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(mode, *args, **kwargs)

    def forward(self, input, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None):
        """As fused_rnn.GRU.forward."""
        output, (h_n,) = self._forward(input, hx, 1, _rnn_layer_fn, lengths)
        return output, h_n
