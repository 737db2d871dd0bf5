"""PackedSequence input against nn.* with copied weights: the fused loop runs each sequence to
its own length (unsorted lengths, enforce_sorted both ways, h0 given, deep and bidirectional),
same PackedSequence out, same final states, same gradients."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import fused_rnn
from helpers import DEVICES, assert_close, compare_packed_with_nn, flat

CELLS = ["GRU", "LSTM", "RNN"]


def pair(cell, device, **kw):
    ref = getattr(nn, cell)(5, 7, device=device, dtype=torch.float64, **kw)
    fused = getattr(fused_rnn, cell)(5, 7, device=device, dtype=torch.float64, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_packed_matches_nn(device, cell, enforce_sorted, num_layers, bidirectional, with_h0):
    torch.manual_seed(0)
    ref, fused = pair(cell, device, num_layers=num_layers, bidirectional=bidirectional)
    lengths = [6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4]
    x = torch.randn(6, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = None
    if with_h0:
        shape = (num_layers * (2 if bidirectional else 1), 4, 7)
        hx = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        if cell == "LSTM":
            hx = (hx, torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True))
    compare_packed_with_nn(ref, fused, x, packed, hx, torch.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_pack_sequence_of_tensors(cell):
    torch.manual_seed(0)
    ref, fused = pair(cell, "cpu")
    seqs = [torch.randn(n, 5, dtype=torch.float64) for n in (3, 5, 1)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    for g, w in zip(flat(*fused(packed)), flat(*ref(packed))):
        assert_close(g, w, torch.float64, "packed result")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_keyword_equals_packing(cell, batch_first):
    """module(padded, lengths=...) == module(pack_padded_sequence(padded, lengths)), padded."""
    torch.manual_seed(0)
    _, fused = pair(cell, "cpu", bidirectional=True, batch_first=batch_first)
    x = torch.randn(*((3, 6, 5) if batch_first else (6, 3, 5)), dtype=torch.float64)
    lengths = torch.tensor([2, 6, 4])
    out, state = fused(x, lengths=lengths)
    packed_out, packed_state = fused(pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                          enforce_sorted=False))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=batch_first)
    assert_close(out, padded, torch.float64, "output")
    for a, b in zip(state if cell == "LSTM" else (state,), packed_state if cell == "LSTM" else (packed_state,)):
        assert_close(a, b, torch.float64, "state")


def test_lengths_keyword_bad_values():
    m = fused_rnn.GRU(5, 7)
    with pytest.raises(ValueError, match=r"expected lengths in \[0, seq_len=4\], got values in \[1, 9\]"):
        m(torch.randn(4, 2, 5), lengths=torch.tensor([1, 9]))
    with pytest.raises(ValueError, match=r"expected lengths as integers of shape \[batch=2\]"):
        m(torch.randn(4, 2, 5), lengths=torch.tensor([1, 2, 3]))



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_lstm_proj_size_matches_nn(device, enforce_sorted):
    torch.manual_seed(0)
    ref, fused = pair("LSTM", device, num_layers=2, bidirectional=True, proj_size=3)
    lengths = [6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4]
    x = torch.randn(6, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    compare_packed_with_nn(ref, fused, x, packed, None, torch.float64)
