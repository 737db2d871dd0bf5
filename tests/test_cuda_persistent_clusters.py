"""Cluster mode of the persistent CUDA kernels (FUSED_RNN_PERSISTENT_BARRIER=cluster, sm_90+):
independent thread-block clusters, each holding the whole W_hh over its blocks and taking a share
of the batch rows, one cluster barrier per step and no grid-wide barrier; the rows of h / d_gates
exchanged through global memory (L2) or distributed shared memory
(FUSED_RNN_PERSISTENT_EXCHANGE=dsmem). Forced with each cluster size and exchange and compared
with nn.* on copied weights (outputs, final states, all gradients; packed sequences), the two
exchanges with each other bit for bit, with a float64 oracle together with the tensor-core
products and cp.async staging, run twice for bitwise determinism; the launch's record (profile)
says the mode that ran, and shapes whose weights no cluster holds fall back to the grid barrier.
Need a GPU."""
import pytest
import torch

import fused_rnn
from helpers import (assert_cluster_mode_layout, compare_with_nn, cuda_path, flat, grads,
                     nn_and_fused, persistent_matches_float64_oracle, persistent_matches_nn,
                     set_persistent)

needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="thread-block clusters need a CUDA device of compute capability 9.0+")
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]
# (cluster size, T, B, I, H); None: the plan's own (8 blocks). One batch row (one cluster); 37
# rows over 16 clusters (3 per cluster, the last one partial); 64 rows; H=13 in 8-block clusters
# (units of 2: the last block owns none); 2, 4 and 16 blocks per cluster; H=13 cannot be split
# over 16 blocks: the grid barrier. The host emulation checks the plans of these cases too
# (test_persistent_emulation.py).
CASES = [(None, 5, 1, 6, 40), (None, 4, 37, 7, 300), (None, 3, 64, 8, 256), (None, 4, 5, 6, 13),
         ("2", 5, 3, 6, 40), ("4", 4, 9, 5, 64), ("16", 3, 64, 8, 256), ("16", 4, 5, 6, 13)]


def launch_record(backward):
    """(blocks per cluster, batch rows per cluster) of the last profiled launch; (0, 0): grid."""
    p = fused_rnn._C._persistent_profile(backward)
    return p[15], p[16]


def exchanged_in_shared_memory(backward):
    return fused_rnn._C._persistent_profile(backward)[17] == 1


@needs_sm90
@pytest.mark.parametrize("exchange", ["l2", "dsmem"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("cluster,T,B,I,H", CASES)
def test_cluster_mode_matches_nn(monkeypatch, exchange, cluster, cell, T, B, I, H):
    set_persistent(monkeypatch, barrier="cluster", exchange=exchange, cluster=cluster,
                   profile="1")

    def check_launch():
        for backward in (False, True):
            blocks, rows = launch_record(backward)
            assert_cluster_mode_layout(cluster, exchange, B, H, blocks, rows,
                                       exchanged_in_shared_memory(backward),
                                       (backward, blocks, rows))

    persistent_matches_nn(cell, T, B, I, H, check_launch)


@needs_sm90
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("product", ["fma", "mma"])
def test_shared_memory_exchange_gives_the_same_bits_as_l2(monkeypatch, product, dtype, cell):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "cluster")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", product)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", product == "mma")
    torch.manual_seed(12)
    _, fused = nn_and_fused(cell, 8, 96, dtype, "cuda", num_layers=2, bidirectional=True)
    x = torch.randn(7, 21, 8, device="cuda", dtype=dtype, requires_grad=True)
    runs = []
    with cuda_path("persistent"):
        for exchange in ("l2", "dsmem"):
            monkeypatch.setenv("FUSED_RNN_PERSISTENT_EXCHANGE", exchange)
            out = flat(*fused(x))
            g = grads(out, [x, *fused.parameters()], [torch.ones_like(o) for o in out])
            runs.append([o.detach() for o in out] + g)
    for a, b in zip(*runs):  # the same products of the same values in the same order
        assert torch.equal(a, b)


@needs_sm90
@pytest.mark.parametrize("exchange", ["l2", "dsmem"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cell", CELLS)
def test_cluster_mode_with_tensor_cores_and_async_staging(monkeypatch, exchange, dtype, cell):
    for name, value in (("BARRIER", "cluster"), ("PRODUCT", "mma"), ("STAGING", "async"),
                        ("EXCHANGE", exchange), ("PROFILE", "1")):
        monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name}", value)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)

    def check_launch():
        for backward in (False, True):
            assert launch_record(backward)[0] == 8
            assert fused_rnn._C._persistent_profile(backward)[13] == 1  # tensor cores
            assert exchanged_in_shared_memory(backward) == (exchange == "dsmem")

    persistent_matches_float64_oracle(cell, 6, 19, 8, 256, dtype, check_launch)


@needs_sm90
def test_cluster_mode_falls_back_to_the_grid_where_no_cluster_holds_the_weights(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "cluster")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PROFILE", "1")
    torch.manual_seed(3)
    ref, fused = nn_and_fused("LSTM", 8, 1024, torch.float32, "cuda")  # W_hh 16 MB
    x = torch.randn(2, 3, 8, device="cuda", requires_grad=True)
    with cuda_path("persistent"):
        compare_with_nn(ref, fused, x, None, torch.float32,
                        grad_tol=dict(atol=1.6e-3, rtol=1.6e-3))
        assert launch_record(False) == (0, 0) and launch_record(True) == (0, 0)
