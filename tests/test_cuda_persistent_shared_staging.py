"""Version 5 of the persistent CUDA kernels (benchmarks/persistent_kernel_notes.md): shared staging
(FUSED_RNN_PERSISTENT_STAGING=shared, sm_90+). The launch gets thread-block clusters (in the grid
modes too: clusters of FUSED_RNN_PERSISTENT_CLUSTER blocks, default 8, the grid padded to whole
clusters with blocks that own no hidden units), and each row of h_prev / d_gates that a step
multiplies is read from L2 by one block of a cluster and stored into every block of it, instead
of by every block. Forced with the grid, counter and cluster barriers and compared with nn.* on
copied weights (outputs, final states, all gradients; packed sequences), with the loads' staging
bit for bit (the same values reach the same products), with a float64 oracle on tensor cores; the
launch's record (profile) says what ran. The host-side check (random schedules, several passes per
step, padding blocks) is test_persistent_emulation.py. Need a GPU."""
import pytest
import torch

import fused_rnn
from helpers import (assert_shared_staging_layout, cuda_path, flat, grads, nn_and_fused,
                     persistent_matches_float64_oracle, persistent_matches_nn, set_persistent)

needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="thread-block clusters need a CUDA device of compute capability 9.0+")
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]
# (T, B, I, H): B=9 H=40 (one unit per block: 40 blocks, padded to 40); B=37 H=300 (3 units per
# block, 100 blocks padded to 104); B=64 H=1024 (staged rows fewer than the batch: several passes
# per step, each ending with a cluster barrier); H=13 (rows of 13 elements: 4-byte stores into
# the cluster, 13 blocks padded to 16)
SIZES = [(6, 9, 8, 40), (3, 37, 9, 300), (2, 64, 8, 1024), (4, 5, 6, 13)]


def staging_record(backward):
    """(staging: 0 loads, 1 cp.async, 2 shared; blocks sharing it; blocks; units per block;
    blocks per cluster in cluster mode, 0 in a grid mode) of the last profiled launch."""
    p = fused_rnn._C._persistent_profile(backward)
    return p[14], p[18], p[9], p[10], p[15]


# (FUSED_RNN_PERSISTENT_BARRIER, FUSED_RNN_PERSISTENT_CLUSTER); the host emulation checks the
# plans of these settings and SIZES too (test_persistent_emulation.py)
BARRIERS = [("grid", None), ("counter", "4"), ("cluster", None)]


@needs_sm90
@pytest.mark.parametrize("barrier,cluster", BARRIERS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_shared_staging_matches_nn(monkeypatch, barrier, cluster, cell, T, B, I, H):
    set_persistent(monkeypatch, staging="shared", barrier=barrier, cluster=cluster, profile="1")

    def check_launch():
        for backward in (False, True):
            staged_by, shared_by, blocks, units, cluster_mode = staging_record(backward)
            assert staged_by == 2, backward
            assert_shared_staging_layout(barrier, cluster, H, blocks, units, cluster_mode,
                                         shared_by, (backward, blocks, units, cluster_mode))

    persistent_matches_nn(cell, T, B, I, H, check_launch)


@needs_sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
@pytest.mark.parametrize("T,B,I,H", SIZES[1:3])
def test_shared_staging_on_tensor_cores_matches_float64_oracle(monkeypatch, dtype, cell, T, B,
                                                               I, H):
    set_persistent(monkeypatch, staging="shared", product="mma", profile="1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)

    def check_launch():
        for backward in (False, True):
            assert staging_record(backward)[:2] == (2, 8)
            assert fused_rnn._C._persistent_profile(backward)[13] == 1  # tensor cores

    persistent_matches_float64_oracle(cell, T, B, I, H, dtype, check_launch)


@needs_sm90
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_shared_staging_gives_the_bits_of_the_loads(monkeypatch, cell, T, B, I, H):
    """The rows shared within a cluster are the values each block would have loaded: with the
    same units per block (so the same products), the same bits."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PROFILE", "1")
    torch.manual_seed(H)
    _, fused = nn_and_fused(cell, I, H, torch.float32, "cuda")
    x = torch.randn(T, B, I, device="cuda")
    seeds = None
    runs = []
    for staging in ("shared", "loads"):
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", staging)
        with cuda_path("persistent"):
            out = flat(*fused(x.requires_grad_()))
            seeds = seeds or [torch.randn_like(o) for o in out]
            runs.append([o.detach() for o in out] + grads(out, [x, *fused.parameters()], seeds))
        records = [staging_record(backward) for backward in (False, True)]
        if staging == "shared":
            assert [r[0] for r in records] == [2, 2]
            units = records[0][3]
            assert records[1][3] == units
            monkeypatch.setenv("FUSED_RNN_PERSISTENT_UNITS", str(units))  # for the loads' run
        else:
            assert [(r[0], r[3]) for r in records] == [(0, units), (0, units)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_sm90
def test_shared_staging_setting_rejects_bad_values(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", "dsmem")
    gru = fused_rnn.GRU(4, 8, device="cuda")
    with cuda_path("persistent"):
        with pytest.raises(RuntimeError,
                           match="must be 'loads', 'async' or 'shared', got 'dsmem'"):
            gru(torch.randn(3, 2, 4, device="cuda"))
