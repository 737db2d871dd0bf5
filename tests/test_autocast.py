"""CPU autocast behaves like nn.*: nn.LSTM and nn.RNN run in the autocast dtype (bfloat16),
nn.GRU stays in float32; results close to nn.*'s, gradients flow to the float32 parameters."""
import pytest
import torch
from torch import nn

import fused_rnn


@pytest.mark.parametrize("cell,kw", [("GRU", {}), ("LSTM", {}), ("RNN", {}),
                                     ("LSTM", dict(proj_size=5))])
def test_cpu_autocast_output_dtypes_and_values_match_nn(cell, kw):
    torch.manual_seed(0)
    ref = getattr(nn, cell)(6, 8, num_layers=2, batch_first=True, **kw)
    fused = getattr(fused_rnn, cell)(6, 8, num_layers=2, batch_first=True, **kw)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_state = fused(x)
        try:
            want, want_state = ref(x)
            want_dtype = want.dtype
        except RuntimeError as error:
            # nn.LSTM's bfloat16 path under CPU autocast is oneDNN's, which needs AVX-512
            # (an AVX2-only CPU, e.g. AMD Zen 3, raises "could not create a primitive
            # descriptor"). The dtype is then the one nn.LSTM gives where it runs (bfloat16, as
            # nn.RNN here), the values are compared with nn.LSTM's in float32.
            if cell != "LSTM" or "primitive descriptor" not in str(error):
                raise
            want_dtype = torch.bfloat16
            with torch.autocast("cpu", enabled=False):
                want, want_state = ref(x)
    assert got.dtype == want_dtype
    got_h = got_state[0] if cell == "LSTM" else got_state
    assert got_h.dtype == want_dtype
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    got.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    for name, p in fused.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
