import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from cuda_context_guard import ContextGuard  # noqa: E402

CONTEXT_GUARD = ContextGuard()


@pytest.fixture(autouse=True)
def full_precision_float32():
    """Parity tests compare float32 results: no TF32 in cuBLAS or cuDNN (nn.* on CUDA uses
    cuDNN, whose default allows TF32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def cuda_context_usable(request):
    """A test that leaves the CUDA context unusable (a sticky error) fails alone: the xdist
    worker is replaced, or (one process) the later CUDA tests are skipped naming it."""
    reason = CONTEXT_GUARD.before(request.node.nodeid)
    if reason:
        pytest.skip(reason)
    yield
    CONTEXT_GUARD.after(request.node.nodeid)
