"""Version 4 of the persistent CUDA kernels (benchmarks/persistent_kernel_notes.md): the per-step
products on tensor cores (FUSED_RNN_PERSISTENT_PRODUCT=mma: fp16 / bf16 as stored, float32 as
tf32 only while torch.backends.cuda.matmul.allow_tf32 is on) and the rows of h / d_gates staged by
cp.async (FUSED_RNN_PERSISTENT_STAGING=async). Each variant is forced and compared with nn.* or a
float64 oracle (outputs, final states, all gradients), run twice for bitwise determinism, and the
launch's own record (the profile) says which product ran. The host-side check of the tensor-core
tiles is test_block_mma_emulation.py; these need a GPU."""
import pytest
import torch

import fused_rnn
from helpers import cuda_path, persistent_matches_float64_oracle, persistent_matches_nn

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]
# (T, B, I, H): B=9 H=40 (one block per unit, partial 8-row tiles); B=37 H=300 (several units per
# block, 5 tiles of 8 rows); B=64 H=1024 (staged rows fewer than the batch: several passes per
# step); H=37 (rows of 37 elements: not 16-byte aligned, cp.async falls back to loads).
SIZES = [(6, 9, 8, 40), (3, 37, 9, 300), (2, 64, 8, 1024), (4, 5, 6, 37)]
def products_used(backward):
    """1: the last profiled launch ran its products on tensor cores, 0: on CUDA cores."""
    return fused_rnn._C._persistent_profile(backward)[13]


@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_async_staging_matches_nn(monkeypatch, cell, T, B, I, H):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", "async")
    persistent_matches_nn(cell, T, B, I, H)


@needs_cuda
@pytest.mark.parametrize("staging", ["loads", "async"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", SIZES)
def test_tensor_core_products_match_float64_oracle(monkeypatch, staging, dtype, cell, T, B, I, H):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", "mma")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", staging)
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PROFILE", "1")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)

    def check_launch():
        assert products_used(False) == 1 and products_used(True) == 1

    persistent_matches_float64_oracle(cell, T, B, I, H, dtype, check_launch)


@needs_cuda
def test_float32_uses_tensor_cores_only_with_tf32_allowed(monkeypatch):
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PROFILE", "1")
    torch.manual_seed(4)
    gru = fused_rnn.GRU(8, 64, device="cuda")
    x = torch.randn(5, 16, 8, device="cuda", requires_grad=True)

    def run(product, tf32):
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", product)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
        with cuda_path("persistent"):
            out, h = gru(x)
            g = torch.autograd.grad(out.sum(), [x, *gru.parameters()])
        return [out, h, *g], products_used(False), products_used(True)

    fma, *_ = run("fma", False)
    mma_no_tf32, fwd, bwd = run("mma", False)
    assert (fwd, bwd) == (0, 0)  # float32 without TF32 permission: CUDA cores, the same bits
    for a, b in zip(fma, mma_no_tf32):
        assert torch.equal(a, b)
    _, fwd, bwd = run("mma", True)
    assert (fwd, bwd) == (1, 1)
    fused64 = fused_rnn.GRU(8, 64, device="cuda", dtype=torch.float64)
    fused64.load_state_dict({k: v.double() for k, v in gru.state_dict().items()})
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", "mma")
    with cuda_path("persistent"):
        fused64(x.double())
    assert products_used(False) == 0  # float64: always CUDA cores


@needs_cuda
@pytest.mark.parametrize("name,value,message", [
    ("FUSED_RNN_PERSISTENT_PRODUCT", "tensor", "must be 'fma' or 'mma', got 'tensor'"),
    ("FUSED_RNN_PERSISTENT_STAGING", "dma", "must be 'loads', 'async' or 'shared', got 'dma'"),
])
def test_product_and_staging_settings_reject_bad_values(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    gru = fused_rnn.GRU(4, 8, device="cuda")
    with cuda_path("persistent"):
        with pytest.raises(RuntimeError, match=message):
            gru(torch.randn(3, 2, 4, device="cuda"))
