"""The two CUDA paths of the GRU / LSTM / RNN recurrences: the persistent kernels (one cooperative
launch for all steps, recurrent weights in shared memory) and the general path (per step a cuBLAS
GEMM and a pointwise kernel). Each is forced in turn and compared with nn.* on copied weights
(outputs, final states, all gradients), with the other path, with a float64 oracle for the half
types, and by gradcheck in float64. The path setting itself is tested on every machine."""
import pytest
import torch
from torch import nn

import fused_rnn
from helpers import (GRAD_TOL, TOL, assert_close, compare_packed_with_nn, compare_with_nn,
                     cuda_path, flat, grads, nn_and_fused, persistent_matches_nn)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
PATHS = ["persistent", "general"]
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]


def test_path_setting_round_trips_and_rejects_unknown_names():
    saved = fused_rnn.cuda_path()
    assert saved in ("auto", "persistent", "general")
    try:
        for name in ("general", "persistent", "auto"):
            fused_rnn.set_cuda_path(name)
            assert fused_rnn.cuda_path() == name
        with pytest.raises(RuntimeError, match="'auto', 'persistent' or 'general', got 'fast'"):
            fused_rnn.set_cuda_path("fast")
    finally:
        fused_rnn.set_cuda_path(saved)


def test_path_setting_leaves_cpu_results_alone():
    torch.manual_seed(0)
    ref, fused = nn_and_fused("GRU", 4, 6, torch.float32, "cpu")
    x = torch.randn(3, 2, 4)
    outs = []
    for name in ("persistent", "general"):
        with cuda_path(name):
            outs.append(fused(x)[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert_close(outs[0], ref(x)[0], torch.float32, "output")


# (T, B, I, H): B=1 (one batch row per tile), B=5 (tile of 4 plus a partial one), B=37 (tiles of
# 8, partial), H=150 and H=300 (more units than multiprocessors: several units per block, the
# last block partial), T=1.
SIZES = [(6, 1, 5, 13), (4, 5, 7, 150), (3, 37, 9, 300), (1, 3, 4, 8)]


@needs_cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
@pytest.mark.parametrize("bidirectional,batch_first", [(False, False), (True, True)])
def test_path_matches_nn(path, cell, T, B, I, H, bidirectional, batch_first):
    torch.manual_seed(T + B + H)
    ref, fused = nn_and_fused(cell, I, H, torch.float32, "cuda", num_layers=2,
                              bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), device="cuda",
                    requires_grad=True)
    D = 2 if bidirectional else 1
    h0 = torch.randn(2 * D, B, H, device="cuda", requires_grad=True)
    hx = (h0, torch.randn_like(h0, requires_grad=True)) if cell == "LSTM" else h0
    # The gradients sum T*B*H products: float32 rounding grows with H (seen: the Elman RNN at
    # H=300 differs from cuDNN by 1.4e-4 on both paths alike).
    scale = max(1.0, H / 64)
    tol = dict(atol=GRAD_TOL[torch.float32]["atol"] * scale,
               rtol=GRAD_TOL[torch.float32]["rtol"] * scale)
    with cuda_path(path):
        compare_with_nn(ref, fused, x, hx, torch.float32, grad_tol=tol)


@needs_cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_path_packed_sequences_match_nn(path, cell, enforce_sorted):
    torch.manual_seed(3)
    T, B, I, H = 7, 6, 5, 11
    ref, fused = nn_and_fused(cell, I, H, torch.float32, "cuda", bidirectional=True)
    lengths = torch.tensor([7, 5, 4, 4, 2, 1] if enforce_sorted else [2, 7, 1, 4, 5, 3])
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    with cuda_path(path):
        compare_packed_with_nn(ref, fused, x, packed, None, torch.float32)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_half_types_match_float64_oracle_on_both_paths(dtype, cell):
    torch.manual_seed(5)
    T, B, I, H = 6, 9, 8, 40
    oracle, _ = nn_and_fused(cell, I, H, torch.float64, "cuda")
    x64 = torch.randn(T, B, I, device="cuda", dtype=torch.float64)
    want = flat(*oracle(x64))
    seeds = [torch.randn_like(w) for w in want]
    want_g = grads(want, [*oracle.parameters()], seeds)
    results = {}
    for path in PATHS:
        _, fused = nn_and_fused(cell, I, H, dtype, "cuda")
        fused.load_state_dict({k: v.to(dtype) for k, v in oracle.state_dict().items()})
        with cuda_path(path):
            got = flat(*fused(x64.to(dtype)))
            for g, w, n in zip(got, want, ["output", "h_n", "c_n"]):
                torch.testing.assert_close(g.double(), w, **TOL[dtype],
                                           msg=lambda m: f"{path} {n}: {m}")
            got_g = grads(got, [*fused.parameters()], [s.to(dtype) for s in seeds])
        for g, w in zip(got_g, want_g):
            torch.testing.assert_close(g.double(), w, **GRAD_TOL[dtype])
        results[path] = got
    for a, b in zip(results["persistent"], results["general"]):
        torch.testing.assert_close(a.double(), b.double(), **TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_persistent_gradcheck_float64(cell, reverse):
    from torch.autograd import gradcheck
    torch.manual_seed(7)
    T, B, I, H = 4, 3, 3, 5
    G = {"GRU": 3, "LSTM": 4}.get(cell, 1)
    dev = dict(device="cuda", dtype=torch.float64)
    x = torch.randn(T, B, I, **dev, requires_grad=True)
    h0 = torch.randn(B, H, **dev, requires_grad=True)
    w_ih = torch.randn(G * H, I, **dev, requires_grad=True)
    w_hh = torch.randn(G * H, H, **dev, requires_grad=True)
    b_ih = torch.randn(G * H, **dev, requires_grad=True)
    b_hh = torch.randn(G * H, **dev, requires_grad=True)
    lengths = torch.tensor([4, 2, 3], device="cuda")
    with cuda_path("persistent"):
        if cell == "GRU":
            fn = lambda *a: fused_rnn.gru_layer(*a, reverse=reverse, lengths=lengths)  # noqa: E731
            args = (x, h0, w_ih, w_hh, b_ih, b_hh)
        elif cell == "LSTM":
            c0 = torch.randn(B, H, **dev, requires_grad=True)
            fn = lambda *a: fused_rnn.lstm_layer(*a, reverse=reverse, lengths=lengths)  # noqa: E731
            args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        else:
            act = "relu" if cell == "RNN_RELU" else "tanh"
            fn = lambda *a: fused_rnn.rnn_layer(*a, nonlinearity=act,  # noqa: E731
                                                reverse=reverse, lengths=lengths)
            args = (x, h0, w_ih, w_hh, b_ih, b_hh)
        assert gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cell", CELLS)
def test_runs_are_bitwise_deterministic(path, cell):
    """Same inputs, same outputs and gradients, bit for bit (no atomics in any reduction)."""
    torch.manual_seed(11)
    _, fused = nn_and_fused(cell, 16, 64, torch.float32, "cuda", num_layers=2)
    x = torch.randn(20, 8, 16, device="cuda", requires_grad=True)
    runs = []
    with cuda_path(path):
        for _ in range(2):
            out = flat(*fused(x))
            g = grads(out, [x, *fused.parameters()], [torch.ones_like(o) for o in out])
            runs.append([o.detach() for o in out] + g)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_cuda
def test_forced_persistent_raises_when_weights_do_not_fit():
    lstm = fused_rnn.LSTM(8, 2048, device="cuda")  # W_hh slice per block > shared memory
    x = torch.randn(2, 1, 8, device="cuda")
    with cuda_path("persistent"):
        with pytest.raises(RuntimeError, match="persistent CUDA kernel cannot run"):
            lstm(x)
    with cuda_path("auto"):  # auto falls back to the general path
        out, _ = lstm(x)
        torch.cuda.synchronize()
    assert out.shape == (2, 1, 2048)


@needs_cuda
@pytest.mark.parametrize("op", ["gru", "lstm", "rnn"])
def test_persistent_opcheck(op):
    torch.manual_seed(2)
    T, B, I, H = 3, 2, 4, 6
    G = {"gru": 3, "lstm": 4, "rnn": 1}[op]
    dev = dict(device="cuda")
    x = torch.randn(T, B, I, **dev)
    h0 = torch.randn(B, H, **dev)
    w_ih, w_hh = torch.randn(G * H, I, **dev), torch.randn(G * H, H, **dev)
    b_ih, b_hh = torch.randn(G * H, **dev), torch.randn(G * H, **dev)
    with cuda_path("persistent"):
        if op == "gru":
            args = (x, h0, w_ih, w_hh, b_ih, b_hh, None, False, True)
        elif op == "lstm":
            args = (x, h0, torch.randn(B, H, **dev), w_ih, w_hh, b_ih, b_hh, None, False, True)
        else:
            args = (x, h0, w_ih, w_hh, b_ih, b_hh, None, False, False)
        torch.library.opcheck(getattr(torch.ops.fused_rnn, f"{op}_forward"), args,
                              test_utils=("test_schema", "test_faketensor"))


# Variants of the persistent kernels' tuning settings (FUSED_RNN_PERSISTENT_UNITS / _BARRIER,
# read at every launch): (units, T, B, I, H). units=None, B=64, H=1024: the staged rows of h /
# d_gates do not hold the whole batch (several staging passes per step; h_prev read from L2);
# units=5, H=37: 8 blocks, the last one partial; units=24, B=64: 1536 pointwise elements per
# block, more than the forward (1024) and backward (512) fetch ahead: the rest are read late.
# With the cluster barrier the units per block come from the cluster size (units is ignored) and
# H=1024 falls back to the grid barrier (no 16-block cluster holds its W_hh in float32).
TUNING_CASES = [(None, 3, 64, 8, 1024), ("5", 5, 7, 6, 37), ("24", 4, 64, 8, 200)]


@needs_cuda
@pytest.mark.parametrize("barrier", ["grid", "counter", "cluster"])
@pytest.mark.parametrize("units,T,B,I,H", TUNING_CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_tuning_variants_match_nn(monkeypatch, barrier, units, T, B, I, H, cell):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", barrier)
    if units is not None:
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_UNITS", units)
    persistent_matches_nn(cell, T, B, I, H)


@needs_cuda
@pytest.mark.parametrize("name,value,message", [
    ("FUSED_RNN_PERSISTENT_BARRIER", "fast",
     "must be 'grid', 'counter', 'cluster' or 'tagged', got 'fast'"),
    ("FUSED_RNN_PERSISTENT_UNITS", "0", r"integer in \[1, 4096\], got '0'"),
    ("FUSED_RNN_PERSISTENT_UNITS", "4x", r"integer in \[1, 4096\], got '4x'"),
    ("FUSED_RNN_PERSISTENT_CLUSTER", "17", r"integer in \[1, 16\], got '17'"),
    ("FUSED_RNN_PERSISTENT_EXCHANGE", "nvlink", "must be 'l2' or 'dsmem', got 'nvlink'"),
])
def test_persistent_tuning_rejects_bad_values(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    gru = fused_rnn.GRU(4, 8, device="cuda")
    with cuda_path("persistent"):
        with pytest.raises(RuntimeError, match=message):
            gru(torch.randn(3, 2, 4, device="cuda"))


@needs_cuda
def test_persistent_profile_reports_the_last_launch(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PROFILE", "1")
    gru = fused_rnn.GRU(4, 16, device="cuda")
    x = torch.randn(5, 3, 4, device="cuda", requires_grad=True)
    with cuda_path("persistent"):
        y, _ = gru(x)
        y.sum().backward()
    for backward in (False, True):
        p = fused_rnn._C._persistent_profile(backward)
        assert p[6:9] == [5, 3, 16]  # T, B, H
        assert min(p[:6]) >= 0 and sum(p[:4]) <= p[4] and p[5] > 0
