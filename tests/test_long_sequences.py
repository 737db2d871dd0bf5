"""Long sequences: T=100000 forward and forward+backward at a small size. The results equal the
same sequence run in chunks with the state carried over (and nn.LSTM, which is fast enough at
this length to compare with; nn.GRU / nn.RNN take a minute here), the memory autograd keeps is
exactly the saved activations (linear in T), the process's peak memory stays within a bound
computed from them, and the loops run in a thread with a small stack (no recursion)."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

import fused_rnn
from helpers import flat, grads

T, B, I, H = 100_000, 2, 4, 8
CELLS = ["GRU", "LSTM", "RNN"]
# floats per (step, batch row) that the backward keeps: the input, the output, and
# GRU: r, z, n, W_hn h + b_hn; LSTM: 4 gate activations + the cell state; RNN: nothing else
SAVED_PER_ROW = {"GRU": I + H + 4 * H, "LSTM": I + H + 5 * H, "RNN": I + H}


def saved_bytes(fn):
    """Bytes of the unique storages autograd saves while fn runs (parameters excluded)."""
    seen = {}

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("cell", CELLS)
def test_saved_memory_is_the_saved_activations_linear_in_T(cell):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(I, H)
    for steps in (1000, T):
        x = torch.randn(steps, B, I, requires_grad=True)
        got, _ = saved_bytes(lambda: m(x))
        expected = steps * B * SAVED_PER_ROW[cell] * 4
        # plus the [B, H] initial states (zeros made by the module)
        assert expected <= got <= expected + 4 * B * H * 4, (steps, got, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_long_sequence_equals_chunked_run(cell):
    torch.manual_seed(1)
    m = getattr(fused_rnn, cell)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    out, state = m(x)
    chunks, st = [], None
    for piece in x.split(T // 10):
        o, st = m(piece, st)
        chunks.append(o)
    out_c = torch.cat(chunks)
    got, want = flat(out, state), flat(out_c, st)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    seeds = [torch.randn_like(w) for w in want]
    leaves = [x, *m.parameters()]
    for a, b in zip(grads(got, leaves, seeds), grads(want, leaves, seeds)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)


def test_long_sequence_lstm_matches_nn():
    torch.manual_seed(2)
    ref = nn.LSTM(I, H)
    m = fused_rnn.LSTM(I, H)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, requires_grad=True)
    got, want = m(x), ref(x)
    got, want = [got[0], *got[1]], [want[0], *want[1]]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    seeds = [torch.randn_like(w) for w in want]
    for a, b in zip(grads(got, [x, *m.parameters()], seeds),
                    grads(want, [x, *ref.parameters()], seeds)):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=1e-3)


def test_long_sequence_runs_on_a_small_thread_stack():
    """512 KB of stack: any per-step recursion over 100000 steps would overflow it."""
    results = {}

    def work():
        torch.manual_seed(3)
        for cell in CELLS:
            m = getattr(fused_rnn, cell)(I, H)
            x = torch.randn(T, B, I, requires_grad=True)
            out, _ = m(x)
            out.sum().backward()
            results[cell] = bool(torch.isfinite(x.grad).all())

    old = threading.stack_size(512 * 1024)
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert results == {c: True for c in CELLS}


PEAK_SCRIPT = r"""
import json, resource, sys, torch, fused_rnn
cell, T, B, I, H = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(1)
m = getattr(fused_rnn, cell)(I, H)
x = torch.randn(T, B, I, requires_grad=True)
m(x[:10])[0].sum().backward()  # load everything once
x.grad = None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out, _ = m(x)
out.sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_growth": after - before}))
"""


@pytest.mark.parametrize("cell", CELLS)
def test_peak_memory_bounded_by_saved_activations(cell):
    """The process's peak resident memory grows by at most a few times what the backward keeps
    (saved activations + the transient gate gradients of one layer), not by anything per step."""
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, cell, str(T), str(B), str(I), str(H)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-2000:]
    growth = json.loads(res.stdout.strip().splitlines()[-1])["peak_growth"]
    saved = T * B * SAVED_PER_ROW[cell] * 4
    # backward transients: gate gradients (GRU two [T, B, 3H]), previous states, grad_output
    # and grad_input, each at most [T, B, 4H]-sized: four more times the saved bytes at most
    assert growth <= 5 * saved + 64 * 2 ** 20, (growth, saved)
