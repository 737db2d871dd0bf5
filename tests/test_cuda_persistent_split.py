"""Version 6 of the persistent CUDA kernels (benchmarks/persistent_kernel_notes.md): the split
reduction (FUSED_RNN_PERSISTENT_SPLIT=n, sm_90+, grid and counter barriers). The launch gets
thread-block clusters of n blocks; a cluster owns n * U hidden units, and each of its blocks keeps
their weights for 1/n of the reduction (columns of h_prev in the forward, of d_gates in the
backward), stages only that share of the rows and multiplies it into partial sums, which the
owning block adds up from the cluster's shared memory after a cluster barrier. Forced and compared
with nn.* on copied weights (outputs, final states, all gradients; packed sequences), with a
float64 oracle on tensor cores, and run twice for the same bits; the launch's record (profile)
says what ran. The host-side check (random schedules, empty column shares, a block that exits
while others read its shared memory) is test_persistent_emulation.py. Need a GPU."""
import pytest
import torch

import fused_rnn
from helpers import (assert_split_layout, cuda_path, persistent_matches_float64_oracle,
                     persistent_matches_nn, set_persistent)

needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="thread-block clusters need a CUDA device of compute capability 9.0+")
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]
# (T, B, I, H): H=40 in clusters of 2 (columns 24 + 16); B=37 H=300 (clusters of 4, 3 units per
# block: 100 blocks, 25 clusters); B=64 H=1024 (clusters of 8, several passes per step where the
# rows do not fit at once); H=13 (rows of 13 elements: 4-byte loads, the last shares empty)
SIZES = [(6, 9, 8, 40), (3, 37, 9, 300), (2, 64, 8, 1024), (4, 5, 6, 13)]
# (FUSED_RNN_PERSISTENT_SPLIT, FUSED_RNN_PERSISTENT_BARRIER) per size; the host emulation checks
# these plans for 132 SMs too (test_persistent_emulation.py)
SPLITS = [("2", "grid"), ("4", "counter"), ("8", "grid"), ("4", "grid")]


def split_record(backward):
    """(blocks splitting the reduction, blocks, units per block) of the last profiled launch."""
    p = fused_rnn._C._persistent_profile(backward)
    return p[20], p[9], p[10]


@needs_sm90
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("size,setting", list(zip(SIZES, SPLITS)), ids=[str(s[3]) for s in SIZES])
def test_split_reduction_matches_nn(monkeypatch, cell, size, setting):
    T, B, I, H = size
    split, barrier = setting
    set_persistent(monkeypatch, split=split, barrier=barrier, profile="1")

    def check_launch():
        for backward in (False, True):
            by, blocks, units = split_record(backward)
            assert_split_layout(int(split), H, by, blocks, units, (backward, by, blocks, units))

    persistent_matches_nn(cell, T, B, I, H, check_launch)


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
@pytest.mark.parametrize("size", SIZES[1:3], ids=["300", "1024"])
def test_split_reduction_on_tensor_cores_matches_float64_oracle(monkeypatch, dtype, cell, size):
    T, B, I, H = size
    set_persistent(monkeypatch, split="8", product="mma", profile="1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)

    def check_launch():
        for backward in (False, True):
            assert split_record(backward)[0] == 8
            assert fused_rnn._C._persistent_profile(backward)[13] == 1  # tensor cores

    persistent_matches_float64_oracle(cell, T, B, I, H, dtype, check_launch)


@needs_sm90
def test_split_setting_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_SPLIT", "17")
    gru = fused_rnn.GRU(4, 8, device="cuda")
    with cuda_path("persistent"):
        with pytest.raises(RuntimeError, match=r"FUSED_RNN_PERSISTENT_SPLIT must be an integer "
                                               r"in \[1, 16\], got '17'"):
            gru(torch.randn(3, 2, 4, device="cuda"))
