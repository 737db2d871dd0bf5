"""Integer token input: a layer built with input_size = vocabulary size, fed token ids, equals
the same layer fed one-hot vectors (outputs, states, gradients of every parameter), computed by
gathering columns of weight_ih_l0 with no one-hot tensor."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import DEVICES, assert_close, assert_grads_close, flat

V = 11  # vocabulary size
ops = torch.ops.fused_rnn


def compare_tokens_with_one_hot(m, ids, one_hot, dtype):
    got = flat(*m(ids))
    want = flat(*m(one_hot))
    for g, w in zip(got, want):
        assert_close(g, w, dtype, "token vs one-hot")
    seeds = [torch.randn_like(w) for w in want]
    g_tok = torch.autograd.grad(got, list(m.parameters()), seeds)
    g_hot = torch.autograd.grad(want, list(m.parameters()), seeds)
    assert_grads_close(g_tok, g_hot, dtype, [n for n, _ in m.named_parameters()])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_token_ids_equal_one_hot(device, cell, batch_first, num_layers, bidirectional):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(V, 6, num_layers=num_layers, bidirectional=bidirectional,
                                 batch_first=batch_first, device=device, dtype=torch.float64)
    ids = torch.randint(0, V, (4, 5), device=device)
    compare_tokens_with_one_hot(m, ids, F.one_hot(ids, V).double(), torch.float64)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_int32_and_unbatched_token_ids(cell):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(V, 6, dtype=torch.float64)
    ids = torch.randint(0, V, (7,), dtype=torch.int32)
    compare_tokens_with_one_hot(m, ids, F.one_hot(ids.long(), V).double(), torch.float64)


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_packed_token_ids_equal_packed_one_hot(cell):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(V, 6, dtype=torch.float64)
    ids = torch.randint(0, V, (5, 3))
    lengths = [2, 5, 3]
    compare_tokens_with_one_hot(m, pack_padded_sequence(ids, lengths, enforce_sorted=False),
                                pack_padded_sequence(F.one_hot(ids, V).double(), lengths,
                                                     enforce_sorted=False), torch.float64)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_token_input_gradcheck(cell):
    torch.manual_seed(0)
    G = dict(gru=3, lstm=4, rnn=1)[cell]
    H = 3
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (4, 2))
    states = [mk(2, H) for _ in range(2 if cell == "lstm" else 1)]
    layer = getattr(fused_rnn, f"{cell}_layer")
    fn = lambda *t: layer(ids, *t, reverse=True)
    assert torch.autograd.gradcheck(fn, (*states, mk(G * H, 5), mk(G * H, H), mk(G * H), mk(G * H)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_major", [False, True])
def test_opcheck_token_input(device, batch_major):
    torch.manual_seed(0)
    ids = torch.randint(0, V, (5, 4), device=device)
    if batch_major:
        ids = ids.t().contiguous().t()
    w = dict(w_ih=torch.randn(9, V, device=device, requires_grad=True),
             w_hh=torch.randn(9, 3, device=device, requires_grad=True))
    hx = torch.randn(4, 3, device=device, requires_grad=True)
    torch.library.opcheck(ops.gru_forward.default,
                          (ids, hx, w["w_ih"], w["w_hh"], None, None, None, False, True))


def test_module_token_id_out_of_range():
    m = fused_rnn.GRU(V, 4)
    with pytest.raises(IndexError, match=r"token ids must be in \[0, input_size=11\), got values in \[0, 11\]"):
        m(torch.tensor([[0], [11]]))


def test_op_token_id_out_of_range():
    with pytest.raises(RuntimeError, match=r"expected token ids in \[0, input_size=11\), got values in \[-1, 3\]"):
        ops.gru_forward(torch.tensor([[3], [-1]]), torch.zeros(1, 2), torch.randn(6, V),
                        torch.randn(6, 2), None, None, None, False, False)


def test_token_input_wrong_rank():
    m = fused_rnn.LSTM(V, 4)
    with pytest.raises(ValueError, match="Expected token-id input to be 1D or 2D, got 3D input instead"):
        m(torch.zeros(2, 3, 1, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_token_input_forward_captures_in_a_cuda_graph():
    """The id range check reads values back, which a CUDA graph capture forbids: it is skipped
    while the stream is capturing, and the captured forward replays to the eager result."""
    torch.manual_seed(0)
    m = fused_rnn.GRU(V, 16, device="cuda")
    ids = torch.randint(0, V, (7, 3), device="cuda")
    saved = fused_rnn.cuda_path()
    fused_rnn.set_cuda_path("general")  # cuBLAS + step kernels; no cooperative launch
    try:
        with torch.no_grad():
            want, _ = m(ids)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                m(ids)  # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                got, _ = m(ids)
            graph.replay()
            torch.cuda.synchronize()
    finally:
        fused_rnn.set_cuda_path(saved)
    torch.testing.assert_close(got, want)
