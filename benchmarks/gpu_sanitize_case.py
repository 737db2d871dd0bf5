"""A small forward+backward of every fused CUDA kernel, for compute-sanitizer (memcheck,
racecheck): GRU and LSTM, both directions, seq-major and batch-first, float32 and bfloat16,
hidden sizes that leave partial blocks."""
import torch

import fused_rnn

torch.manual_seed(0)
for cell in ("GRU", "LSTM"):
    for dtype in (torch.float32, torch.bfloat16):
        for batch_first in (False, True):
            m = getattr(fused_rnn, cell)(7, 37, num_layers=2, bidirectional=True,
                                         batch_first=batch_first, device="cuda", dtype=dtype)
            x = torch.randn(3, 5, 7, device="cuda", dtype=dtype, requires_grad=True)
            out, _ = m(x)
            out.float().square().sum().backward()
            torch.cuda.synchronize()
            assert torch.isfinite(x.grad.float()).all()
print("sanitize case done")
