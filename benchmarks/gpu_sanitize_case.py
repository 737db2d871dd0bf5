"""A small forward+backward of every fused CUDA kernel, for compute-sanitizer (memcheck,
racecheck): GRU (both formulations), LSTM (with and without projection) and RNN (tanh, relu),
both directions, seq-major and batch-first, float32 and bfloat16, hidden sizes that leave partial
blocks, and per-sequence lengths. Run once per CUDA path (FUSED_RNN_CUDA_PATH) and persistent
variant (FUSED_RNN_PERSISTENT_*); with FUSED_RNN_PERSISTENT_PRODUCT=mma, float32 runs as tf32 on
the tensor cores (TF32 allowed here for that)."""
import os

import torch

import fused_rnn

torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = os.environ.get("FUSED_RNN_PERSISTENT_PRODUCT") == "mma"
configs = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 5}),
           ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]
for cell, kw in configs:
    for dtype in (torch.float32, torch.bfloat16):
        for batch_first in (False, True):
            m = getattr(fused_rnn, cell)(7, 37, num_layers=2, bidirectional=True,
                                         batch_first=batch_first, device="cuda", dtype=dtype, **kw)
            x = torch.randn(3, 5, 7, device="cuda", dtype=dtype, requires_grad=True)
            lengths = torch.tensor([3, 1, 2, 3, 2]) if batch_first else None
            xin = x.transpose(0, 1).contiguous().detach().requires_grad_(True) if batch_first else x
            out, _ = m(xin, lengths=lengths) if lengths is not None else m(xin)
            out.float().square().sum().backward()
            torch.cuda.synchronize()
            assert torch.isfinite(xin.grad.float()).all()
# Several hidden units per block of the persistent kernels (H > #multiprocessors), a batch of
# full and partial 8-row tiles.
for cell in ("GRU", "LSTM", "RNN"):
    m = getattr(fused_rnn, cell)(9, 300, device="cuda")
    x = torch.randn(3, 37, 9, device="cuda", requires_grad=True)
    out, _ = m(x)
    out.square().sum().backward()
    torch.cuda.synchronize()
    assert torch.isfinite(x.grad).all()
# Staged rows of h / d_gates that do not hold the whole batch (B=64, H=1024: several staging
# passes per step), then more pointwise elements per block than the kernels fetch ahead (24 units
# per block at B=64; FUSED_RNN_PERSISTENT_UNITS is read at every launch).
for units, H in ((None, 1024), ("24", 200)):
    if units:
        os.environ["FUSED_RNN_PERSISTENT_UNITS"] = units
    for cell in ("GRU", "LSTM", "RNN"):
        m = getattr(fused_rnn, cell)(8, H, device="cuda")
        x = torch.randn(2, 64, 8, device="cuda", requires_grad=True)
        out, _ = m(x)
        out.square().sum().backward()
        torch.cuda.synchronize()
        assert torch.isfinite(x.grad).all()
    os.environ.pop("FUSED_RNN_PERSISTENT_UNITS", None)
print("sanitize case done")
