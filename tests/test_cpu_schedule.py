"""The CPU schedules of a recurrence (fused_rnn.set_cpu_schedule): "per-step" (each step spread
over all threads) and "row-blocks" (each thread runs all steps for its own batch rows) give the
same outputs, final states and gradients bit for bit, and both match nn.*; "auto" picks row
blocks only where measured faster (float32 with MKL, >= 16 rows per thread, gates * H^2 <= 2^16)."""
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import compare_packed_with_nn, compare_with_nn, flat, grads, nn_and_fused

CELLS = ["GRU", "LSTM", "RNN", "RNN_RELU"]


@pytest.fixture
def schedule_and_threads():
    threads, schedule = torch.get_num_threads(), fused_rnn.cpu_schedule()
    yield
    fused_rnn.set_cpu_schedule(schedule)
    torch.set_num_threads(threads)


def results(fused, x, hx, lengths=None):
    """Outputs, final states and the gradients of x and of every parameter."""
    torch.manual_seed(1)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    got = flat(*fused(inp, hx))
    seeds = [torch.randn_like(g) for g in got]
    return [g.detach() for g in got] + grads(got, [x, *fused.parameters()], seeds)


def assert_schedules_identical(fused, x, lengths):
    by_schedule = {}
    for schedule in ("per-step", "row-blocks"):
        fused_rnn.set_cpu_schedule(schedule)
        by_schedule[schedule] = results(fused, x, None, lengths)
    for a, b in zip(by_schedule["per-step"], by_schedule["row-blocks"]):
        assert torch.equal(a, b), "row blocks differ from per-step"


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch", [1, 5, 33])
@pytest.mark.parametrize("variant", ["plain", "bidirectional_2_layers", "batch_first", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_schedules_give_identical_bits(cell, variant, batch, threads, schedule_and_threads):
    torch.set_num_threads(threads)
    kw = dict(num_layers=2, bidirectional=True) if variant == "bidirectional_2_layers" else {}
    if variant == "batch_first":
        kw["batch_first"] = True
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, 6, 20, torch.float32, **kw)
    T = 7
    x = torch.randn(batch, T, 6) if variant == "batch_first" else torch.randn(T, batch, 6)
    x.requires_grad_(True)
    lengths = torch.randint(1, T + 1, (batch,)) if variant == "lengths" else None
    assert_schedules_identical(fused, x, lengths)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_schedules_give_identical_bits_in_other_dtypes(cell, dtype, schedule_and_threads):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, 6, 20, dtype)
    x = torch.randn(7, 9, 6, dtype=dtype, requires_grad=True)
    assert_schedules_identical(fused, x, torch.tensor([7, 1, 3, 7, 2, 5, 4, 6, 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_row_blocks_match_nn(cell, dtype, schedule_and_threads):
    """Row blocks against nn.* (initial states given, so their gradients are compared too),
    padded and packed input."""
    torch.set_num_threads(2)
    fused_rnn.set_cpu_schedule("row-blocks")
    torch.manual_seed(0)
    T, B, I, H = 6, 9, 5, 13
    ref, fused = nn_and_fused(cell, I, H, dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
    hx = (h0, torch.randn(1, B, H, dtype=dtype, requires_grad=True)) if cell == "LSTM" else h0
    compare_with_nn(ref, fused, x, hx, dtype)
    lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 6, 1])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    compare_packed_with_nn(ref, fused, x, packed, hx, dtype)


def test_auto_picks_row_blocks_where_measured_faster(schedule_and_threads):
    fused_rnn.set_cpu_schedule("auto")
    torch.set_num_threads(2)
    row_blocks = fused_rnn._C._cpu_row_blocks
    if fused_rnn._C.cpu_gemm_backend() == "mkl-packed":
        assert row_blocks(32, 128, 4, True) == [0, 16, 32]   # LSTM H=128
        assert row_blocks(33, 256, 1, True) == [0, 16, 33]   # RNN H=256
        assert row_blocks(64, 147, 3, True) == [0, 32, 64]   # GRU H=147
    assert row_blocks(32, 256, 3, True) == []   # GRU H=256: 3 * 256^2 > 2^16, per-step
    assert row_blocks(32, 148, 3, True) == []
    assert row_blocks(32, 512, 1, True) == []   # RNN H=512
    assert row_blocks(31, 128, 1, True) == []   # fewer than 16 rows per thread
    assert row_blocks(64, 128, 1, False) == []  # not float32
    torch.set_num_threads(1)
    assert row_blocks(64, 128, 1, True) == []   # one thread: nothing to spread
    fused_rnn.set_cpu_schedule("per-step")
    torch.set_num_threads(2)
    assert row_blocks(64, 128, 1, True) == []


def test_forced_row_blocks_have_at_least_two_rows(schedule_and_threads):
    fused_rnn.set_cpu_schedule("row-blocks")
    torch.set_num_threads(4)
    row_blocks = fused_rnn._C._cpu_row_blocks
    assert row_blocks(1, 8, 3, False) == [0, 1]
    assert row_blocks(3, 8, 3, False) == [0, 3]
    assert row_blocks(5, 8, 3, False) == [0, 2, 5]
    assert row_blocks(40, 8, 3, False) == [0, 10, 20, 30, 40]
    assert row_blocks(0, 8, 3, False) == []


def test_unknown_schedule_is_refused(schedule_and_threads):
    before = fused_rnn.cpu_schedule()
    with pytest.raises(RuntimeError, match="'auto', 'per-step' or 'row-blocks', got 'fast'"):
        fused_rnn.set_cpu_schedule("fast")
    assert fused_rnn.cpu_schedule() == before


def test_schedule_from_the_environment():
    env = dict(os.environ, FUSED_RNN_CPU_SCHEDULE="row-blocks")
    code = "import fused_rnn; print(fused_rnn.cpu_schedule())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "row-blocks"
