"""CPU determinism: forward and backward give bit-identical outputs and gradients on repeated
runs and whatever the number of threads (1, 2, 4), for every cell, the three GEMM back ends
(own-packed, mkl-packed, aten),
float32 / float64, batches of 40 and of 1, and the automatic CPU schedule (lanes at batch 1),
row blocks forced (whose blocks change with the thread count: 40, 24 + 16 or 8 + 8 + 8 + 16
rows) and lanes forced (1, 2 or 3 lanes of the 48 hidden units). (CUDA:
tests/test_cuda_paths.py, on a GPU.)"""
import pytest
import torch

import fused_rnn

CELLS = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 16}),
         ("RNN", {})]
IDS = ["gru", "gru_textbook", "lstm", "lstm_proj", "rnn"]


def run(cell, kw, dtype, batch=40):
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(24, 48, num_layers=2, bidirectional=True, dtype=dtype, **kw)
    x = torch.randn(30, batch, 24, dtype=dtype, requires_grad=True)
    out, state = m(x)
    h = state[0] if isinstance(state, tuple) else state
    (out.square().sum() + h.sum()).backward()
    return [out.detach(), h.detach(), x.grad] + [p.grad for p in m.parameters()]


def mkl_packed_available():
    saved = fused_rnn._C.cpu_gemm_backend()
    try:
        fused_rnn._C.set_cpu_gemm_backend("mkl-packed")
        return True
    except RuntimeError:
        return False
    finally:
        fused_rnn._C.set_cpu_gemm_backend(saved)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("schedule", ["auto", "row-blocks", "lanes"])
@pytest.mark.parametrize("batch", [40, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["own-packed", "mkl-packed", "aten"])
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_bitwise_identical_across_runs_and_thread_counts(cell, kw, backend, dtype, batch,
                                                         schedule, restore_threads):
    if backend == "mkl-packed" and not mkl_packed_available():
        pytest.skip("torch without MKL")
    saved, saved_schedule = fused_rnn._C.cpu_gemm_backend(), fused_rnn.cpu_schedule()
    fused_rnn._C.set_cpu_gemm_backend(backend)
    fused_rnn.set_cpu_schedule(schedule)
    try:
        results = {}
        for threads in (1, 2, 4, 2):
            torch.set_num_threads(threads)
            results.setdefault(threads, []).append(run(cell, kw, dtype, batch))
    finally:
        fused_rnn._C.set_cpu_gemm_backend(saved)
        fused_rnn.set_cpu_schedule(saved_schedule)
    first = results[1][0]
    for threads, runs in results.items():
        for r in runs:
            for a, b in zip(first, r):
                assert torch.equal(a, b), f"{threads} threads differ from 1 thread"
