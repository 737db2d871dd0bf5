"""The persistent CUDA kernels without a step barrier (FUSED_RNN_PERSISTENT_BARRIER=tagged,
benchmarks/persistent_kernel_notes.md, "Tagged exchange"): each value of h (forward) or of the gate
gradients (backward) that other blocks read next travels as a 64-bit word tagged with its step,
and the next staging polls the words it reads instead of every block waiting at a grid barrier.
Forced and compared with nn.* on copied weights (outputs, final states, all gradients; packed
sequences, whose inactive rows still write their words), with the grid barrier bit for bit (the
words carry the values the staging would read), with a float64 oracle on tensor cores; the
launch's record (profile) says it ran, and float64 (no room for a tag) keeps the grid barrier.
The host-side check (random schedules, one buffer instead of two, no tag check) is
test_persistent_emulation.py. Need a GPU."""
import pytest
import torch

import fused_rnn
from helpers import (cuda_path, flat, grads, nn_and_fused, persistent_matches_float64_oracle,
                     persistent_matches_nn, set_persistent)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]
# (T, B, I, H): one row; B=9 H=40; B=37 H=300 (several units per block, partial tiles); B=64
# H=1024 (several staging passes per step, each polling its rows)
SIZES = [(7, 1, 5, 64), (6, 9, 8, 40), (3, 37, 9, 300), (2, 64, 8, 1024)]


def tagged(backward):
    """The last profiled launch exchanged tagged words without a step barrier."""
    return fused_rnn._C._persistent_profile(backward)[19] == 1


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_tagged_exchange_matches_nn(monkeypatch, cell, T, B, I, H):
    set_persistent(monkeypatch, barrier="tagged", profile="1")

    def check_launch():
        assert tagged(False) and tagged(True)

    persistent_matches_nn(cell, T, B, I, H, check_launch)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
@pytest.mark.parametrize("T,B,I,H", SIZES[2:])
def test_tagged_exchange_on_tensor_cores_matches_float64_oracle(monkeypatch, dtype, cell, T, B,
                                                                I, H):
    set_persistent(monkeypatch, barrier="tagged", product="mma", profile="1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)

    def check_launch():
        assert tagged(False) and tagged(True)

    persistent_matches_float64_oracle(cell, T, B, I, H, dtype, check_launch)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_tagged_exchange_gives_the_bits_of_the_grid_barrier(monkeypatch, dtype, cell, T, B, I, H):
    set_persistent(monkeypatch, profile="1")
    torch.manual_seed(H + B)
    _, fused = nn_and_fused(cell, I, H, dtype, "cuda")
    x = torch.randn(T, B, I, device="cuda", dtype=dtype, requires_grad=True)
    seeds, runs = None, []
    for barrier in ("grid", "tagged"):
        set_persistent(monkeypatch, barrier=barrier)
        with cuda_path("persistent"):
            out = flat(*fused(x))
            seeds = seeds or [torch.randn_like(o) for o in out]
            runs.append([o.detach() for o in out] + grads(out, [x, *fused.parameters()], seeds))
        assert tagged(False) == tagged(True) == (barrier == "tagged")
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_cuda
def test_float64_keeps_the_grid_barrier(monkeypatch):
    set_persistent(monkeypatch, barrier="tagged", profile="1")
    torch.manual_seed(0)
    ref, fused = nn_and_fused("GRU", 5, 24, torch.float64, "cuda")
    x = torch.randn(4, 3, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    with cuda_path("persistent"):
        got = flat(*fused(x))
        got_g = grads(got, [x], [torch.ones_like(g) for g in got])
    assert not tagged(False) and not tagged(True)
    want = flat(*ref(x))
    for g, w in zip(got + got_g, want + grads(want, [x], [torch.ones_like(w) for w in want])):
        torch.testing.assert_close(g, w)
