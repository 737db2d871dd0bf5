"""The CPU schedules of a recurrence (fused_rnn.set_cpu_schedule): "per-step" (each step spread
over all threads) and "row-blocks" (each thread runs all steps for its own batch rows) give the
same outputs, final states and gradients bit for bit, and both match nn.*; "lanes" (each
thread owns a slice of the hidden units, one barrier per step, forward and backward) matches
per-step and nn.* within rounding and gives the same bits whatever the thread count (forward
here, forward and backward in tests/test_determinism.py); "auto" picks lanes for
small float32 batches and row blocks where measured faster (float32; on the own packed GEMM
from one 8-row tile per thread, on MKL's from 16 rows per thread with gates * H^2 <= 2^16)."""
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from helpers import (GRAD_TOL, TOL, compare_packed_with_nn, compare_with_nn, flat, grads,
                     nn_and_fused)

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


VARIANTS = ["plain", "bidirectional_2_layers", "batch_first", "lengths"]


def variant_case(cell, variant, batch, H, T=7, I=6):
    """A fused float32 module of one of VARIANTS, input x (requiring grad) and lengths or None."""
    kw = dict(num_layers=2, bidirectional=True) if variant == "bidirectional_2_layers" else {}
    if variant == "batch_first":
        kw["batch_first"] = True
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, I, H, torch.float32, **kw)
    x = torch.randn(batch, T, I) if variant == "batch_first" else torch.randn(T, batch, I)
    lengths = torch.randint(1, T + 1, (batch,)) if variant == "lengths" else None
    return fused, x.requires_grad_(True), lengths


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch", [1, 2, 5, 33])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cell", CELLS)
def test_schedules_against_per_step(cell, variant, batch, threads, schedule_and_threads):
    """Row blocks: the same bits as per-step. Lanes (forward; H=40: two lanes of 16 and 24 units
    with 3 threads, lane tails, a partial vector): per-step's results within rounding."""
    torch.set_num_threads(threads)
    fused, x, lengths = variant_case(cell, variant, batch, 40)
    assert_schedules_identical(fused, x, lengths)
    by_schedule = {}
    for schedule in ("per-step", "lanes"):
        fused_rnn.set_cpu_schedule(schedule)
        by_schedule[schedule] = results(fused, x, None, lengths)
    n_values = 2 + (cell == "LSTM")  # output, h_n (, c_n); then gradients
    for i, (a, b) in enumerate(zip(by_schedule["per-step"], by_schedule["lanes"])):
        tol = TOL[torch.float32] if i < n_values else GRAD_TOL[torch.float32]
        torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
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
    backend = fused_rnn._C.cpu_gemm_backend()
    try:
        # the own packed GEMM (default off Intel CPUs): every thread at least one 8-row tile,
        # at least 8 steps, W_hh (float32) within a core's L2 cache
        fused_rnn._C.set_cpu_gemm_backend("own-packed")
        l2 = fused_rnn._C._cpu_l2_cache_bytes()
        assert l2 > 0
        assert row_blocks(9, 256, 3, True) == ([0, 8, 9] if 3 * 256 * 256 * 4 <= l2 else [])
        assert row_blocks(32, 128, 4, True) == [0, 16, 32]
        assert row_blocks(32, 128, 4, True, steps=8) == [0, 16, 32]
        assert row_blocks(32, 128, 4, True, steps=7) == []   # short: per-step
        assert row_blocks(32, 128, 4, True, steps=1) == []
        big = int((l2 // 4) ** 0.5) + 16                       # 1 gate: W_hh past L2
        assert row_blocks(32, big, 1, True) == []
        assert row_blocks(8, 128, 3, True) == []     # one tile (lanes run it in auto)
        assert row_blocks(64, 128, 1, False) == []   # not float32
        torch.set_num_threads(4)
        assert row_blocks(24, 256, 1, True) == []    # 3 tiles for 4 threads: per-step
        assert row_blocks(25, 256, 1, True) == [0, 8, 16, 24, 25]
        torch.set_num_threads(2)
        # MKL's packed GEMM (default on Intel CPUs, where torch has MKL): >= 16 rows per thread
        # and gates * H^2 <= 2^16
        try:
            fused_rnn._C.set_cpu_gemm_backend("mkl-packed")
        except RuntimeError:
            pass
        else:
            assert row_blocks(32, 128, 4, True) == [0, 16, 32]   # LSTM H=128
            assert row_blocks(33, 256, 1, True) == [0, 16, 33]   # RNN H=256
            assert row_blocks(64, 147, 3, True) == [0, 32, 64]   # GRU H=147
            assert row_blocks(32, 256, 3, True) == []   # GRU H=256: 3 * 256^2 > 2^16, per-step
            assert row_blocks(32, 148, 3, True) == []
            assert row_blocks(32, 512, 1, True) == []   # RNN H=512
            assert row_blocks(31, 128, 1, True) == []   # fewer than 16 rows per thread
        fused_rnn._C.set_cpu_gemm_backend("aten")        # never in auto
        assert row_blocks(64, 128, 1, True) == []
    finally:
        fused_rnn._C.set_cpu_gemm_backend(backend)
    torch.set_num_threads(1)
    assert row_blocks(64, 128, 1, True) == []   # one thread: nothing to spread
    fused_rnn.set_cpu_schedule("per-step")
    torch.set_num_threads(2)
    assert row_blocks(64, 128, 1, True) == []


def test_forced_row_blocks_are_whole_tiles_of_the_hidden_gemm(schedule_and_threads):
    """Blocks start at multiples of the hidden GEMM's 8-row tiles (so that they run the tiles
    of the per-step schedule), as evenly as whole tiles go, one per thread at most."""
    fused_rnn.set_cpu_schedule("row-blocks")
    torch.set_num_threads(4)
    row_blocks = fused_rnn._C._cpu_row_blocks
    assert row_blocks(1, 8, 3, False) == [0, 1]
    assert row_blocks(5, 8, 3, False) == [0, 5]
    assert row_blocks(17, 8, 3, False) == [0, 8, 16, 17]
    assert row_blocks(40, 8, 3, False) == [0, 8, 16, 24, 40]
    assert row_blocks(64, 8, 3, False) == [0, 16, 32, 48, 64]
    assert row_blocks(0, 8, 3, False) == []


def test_unknown_schedule_is_refused(schedule_and_threads):
    before = fused_rnn.cpu_schedule()
    with pytest.raises(RuntimeError,
                       match="'auto', 'per-step', 'row-blocks' or 'lanes', got 'fast'"):
        fused_rnn.set_cpu_schedule("fast")
    assert fused_rnn.cpu_schedule() == before


def test_schedule_from_the_environment():
    env = dict(os.environ, FUSED_RNN_CPU_SCHEDULE="row-blocks")
    code = "import fused_rnn; print(fused_rnn.cpu_schedule())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "row-blocks"


# ---------------------------------------------------------------------------------------------
# lanes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_lanes_match_nn(cell, dtype, schedule_and_threads):
    """Lanes against nn.* (initial states given and compared), padded and packed input, batch
    of one and of several rows (auto runs lanes up to 16 rows). B=1 (6 rows over the steps):
    the forward's product on W_hh in place (row tiles of 1); B=7 and 13: on the packed weights
    (8-row tiles on AVX512: 7, then 8 + 5; 4-row tiles elsewhere)."""
    torch.set_num_threads(2)
    fused_rnn.set_cpu_schedule("lanes")
    for B in (1, 7, 13):
        torch.manual_seed(0)
        T, I, H = 6, 5, 37
        ref, fused = nn_and_fused(cell, I, H, dtype)
        x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
        h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
        hx = (h0, torch.randn(1, B, H, dtype=dtype, requires_grad=True)) if cell == "LSTM" else h0
        compare_with_nn(ref, fused, x, hx, dtype)
        lengths = torch.tensor([6, 1, 3, 6, 2, 5, 4, 6, 1, 2, 3, 5, 6][:B])
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        compare_packed_with_nn(ref, fused, x, packed, hx, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", CELLS)
def test_lanes_bits_do_not_depend_on_the_thread_count(cell, dtype, schedule_and_threads):
    """H=70: 1 to 4 lanes ([0, 70], [0, 32, 70], [0, 16, 32, 70], [0, 16, 32, 48, 70]); batches
    of 1, 3, 6 and 11 rows (B=1: the forward on W_hh in place; else on the packed weights, row
    tiles of 3, 6, 8 + 3 on AVX512)."""
    assert fused_rnn._C._cpu_lane_packing(1, 11, 70, 4, 70) == (False, False)
    assert fused_rnn._C._cpu_lane_packing(3, 11, 70, 4, 70) == (True, False)
    fused_rnn.set_cpu_schedule("lanes")
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, 6, 70, dtype)
    for B in (1, 3, 6, 11):
        x = torch.randn(11, B, 6, dtype=dtype)
        lengths = torch.tensor([11, 2, 7, 11, 1, 5, 11, 3, 9, 4, 11][:B])
        by_threads = []
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            assert len(fused_rnn._C._cpu_lanes(B, 70, dtype == torch.float32)) == threads + 1
            with torch.no_grad():
                by_threads.append(flat(*fused(x)) + flat(*fused(
                    pack_padded_sequence(x, lengths, enforce_sorted=False))))
        for got in by_threads[1:]:
            for a, b in zip(by_threads[0], got):
                assert torch.equal(a, b), "lanes depend on the thread count"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", CELLS)
def test_lanes_backward_on_packed_columns(cell, dtype, schedule_and_threads):
    """H=520: with one lane (one thread) every cell's backward copies its columns of W_hh into
    strips (more than 1 MB of them); with four lanes ([0, 128, 256, 384, 520]) the RNN's and the
    GRU's stay in place (266 / 799 KB for the first lane) and the LSTM's are packed again. Either way each element of dh is the same sum in the
    same order: the same bits for every thread count, and nn.*'s results within rounding."""
    fused_rnn.set_cpu_schedule("lanes")
    T, B, I, H = 2, 16, 3, 520
    G = {"GRU": 3, "LSTM": 4}.get(cell, 1)
    assert fused_rnn._C._cpu_lane_packing(B, T, H, G, H) == (True, True)
    assert fused_rnn._C._cpu_lane_packing(B, T, H, G, 128) == (True, cell == "LSTM")
    assert fused_rnn._C._cpu_lane_packing(1, 31, H, G, H) == (False, False)  # B*T < 32
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, I, H, dtype)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    by_threads = []
    for threads in (1, 4):
        torch.set_num_threads(threads)
        lanes = fused_rnn._C._cpu_lanes(B, H, dtype == torch.float32)
        assert lanes == ([0, H] if threads == 1 else [0, 128, 256, 384, H])
        by_threads.append(results(fused, x, None))
    for a, b in zip(*by_threads):
        assert torch.equal(a, b), "lanes depend on the thread count"
    torch.set_num_threads(2)
    compare_with_nn(ref, fused, x, None, dtype)


def test_lanes_long_sequence_with_more_threads_than_cores(schedule_and_threads):
    """500 steps, 8 threads on (in CI) 2 cores: the step barrier makes progress when lanes
    wait for descheduled ones, and the result is per-step's within rounding."""
    torch.set_num_threads(8)
    torch.manual_seed(0)
    ref, fused = nn_and_fused("GRU", 8, 160, torch.float32)
    x = torch.randn(500, 1, 8)
    fused_rnn.set_cpu_schedule("lanes")
    assert len(fused_rnn._C._cpu_lanes(1, 160, True)) == 9
    with torch.no_grad():
        got = flat(*fused(x))
        want = flat(*ref(x))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


def test_lanes_from_several_python_threads_at_once(schedule_and_threads):
    """Concurrent lane forwards (each call its own barrier) give the sequential results."""
    fused_rnn.set_cpu_schedule("lanes")
    torch.set_num_threads(2)
    models = []
    for i, cell in enumerate(["GRU", "LSTM", "RNN", "GRU"]):
        torch.manual_seed(i)
        models.append((getattr(fused_rnn, cell)(5, 48), torch.randn(40, 1 + i, 5)))

    def run(k):
        m, x = models[k]
        with torch.no_grad():
            return flat(*m(x))
    sequential = [run(k) for k in range(len(models))]
    results_by_job = [[] for _ in models]
    start = threading.Barrier(len(models))

    def worker(k):
        start.wait()
        for _ in range(5):
            results_by_job[k].append(run(k))
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(len(models))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert not w.is_alive(), "a lanes forward did not finish"
    for want, runs in zip(sequential, results_by_job):
        assert len(runs) == 5
        for got in runs:
            for a, b in zip(want, got):
                assert torch.equal(a, b)


def test_auto_picks_lanes_for_small_float32_batches(schedule_and_threads):
    lanes = fused_rnn._C._cpu_lanes
    fused_rnn.set_cpu_schedule("auto")
    torch.set_num_threads(2)
    assert lanes(1, 256, True) == [0, 128, 256]
    assert lanes(1, 40, True) == [0, 16, 40]
    assert lanes(1, 20, True) == [0, 20]        # one lane of 16 units or more per thread
    assert lanes(2, 127, True) == []
    saved_backend = fused_rnn._C.cpu_gemm_backend()
    try:
        try:
            fused_rnn._C.set_cpu_gemm_backend("mkl-packed")
            mkl = True
        except RuntimeError:  # torch without MKL
            mkl = False
        if mkl:
            # on MKL's per-step GEMM ("mkl-packed"): up to 2 rows from H=128, 8 from 256, 16
            # from 512 (MKL's per-step GEMM beat the lanes at 32 rows on an Intel Xeon)
            assert lanes(2, 128, True) == [0, 64, 128]
            assert lanes(3, 255, True) == []
            assert lanes(8, 256, True) == [0, 128, 256]
            assert lanes(9, 511, True) == []
            assert lanes(16, 1024, True) == [0, 512, 1024]
            assert lanes(17, 1024, True) == []
        # on the own packed GEMM (the default; measured on an AMD EPYC): up to 8 rows
        # from H=128, row blocks above (benchmarks/results/cpu_schedules_own_packed*_2026-12-06.md)
        fused_rnn._C.set_cpu_gemm_backend("own-packed")
        assert lanes(8, 128, True) == [0, 64, 128]
        assert lanes(8, 1024, True) == [0, 512, 1024]
        assert lanes(9, 1024, True) == []
        # and calls of fewer than _min_prepared_rows() rows over all steps (B * T), from H=128:
        # per-step would run them on W as it is
        rows = fused_rnn._C._min_prepared_rows()
        assert lanes(16, 256, True, steps=1) == [0, 128, 256]
        assert lanes(rows - 1, 256, True, steps=1) == [0, 128, 256]
        assert lanes(rows, 256, True, steps=1) == []
        assert lanes(16, 256, True, steps=2) == []
        assert lanes(16, 127, True, steps=1) == []
    finally:
        fused_rnn._C.set_cpu_gemm_backend(saved_backend)
    assert lanes(1, 256, False) == []           # not float32
    assert lanes(0, 256, True) == []
    torch.set_num_threads(1)
    assert lanes(1, 256, True) == [0, 256]      # one thread: one lane (the same bits)
    fused_rnn.set_cpu_schedule("per-step")
    assert lanes(1, 256, True) == []
    fused_rnn.set_cpu_schedule("row-blocks")
    assert lanes(1, 256, True) == []
    fused_rnn.set_cpu_schedule("lanes")
    torch.set_num_threads(3)
    assert lanes(5, 100, False) == [0, 32, 64, 100]
    assert lanes(5, 8, False) == [0, 8]
    assert fused_rnn._C._cpu_row_blocks(64, 128, 1, True) == []  # lanes forced: no row blocks
