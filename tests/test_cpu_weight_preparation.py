"""CPU per-step GEMMs on the recurrent weight as it is or prepared once per call (MKL packing or
a transposed copy): a call with fewer than fused_rnn._C._min_prepared_rows() rows over all its
steps (T * B) skips the preparation. Both ways give nn.*'s outputs, states and gradients, for
every cell and dtype, and the same bits whatever the thread count."""
import pytest
import torch

import fused_rnn
from helpers import compare_with_nn, flat, grads, nn_and_fused

CELLS = [("GRU", {}), ("LSTM", {}), ("LSTM", {"proj_size": 3}), ("RNN", {}), ("RNN_RELU", {})]
IDS = ["gru", "lstm", "lstm_proj", "rnn", "rnn_relu"]


def fused_module(cell, kw, I, H, dtype=torch.float32, **more):
    """The fused module (cell "RNN_RELU": RNN with nonlinearity="relu"), seeded weights."""
    torch.manual_seed(0)
    if cell == "RNN_RELU":
        cell, kw = "RNN", dict(kw, nonlinearity="relu")
    return getattr(fused_rnn, cell)(I, H, dtype=dtype, **kw, **more)


def outputs_and_grads(module, x, hx=None):
    """module(x, hx)'s outputs and states, then the gradients (all-ones seeds) of x, of the
    states in hx and of every parameter."""
    got = flat(*module(x, hx))
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    return [g.detach() for g in got] + grads(got, [x, *states, *module.parameters()],
                                             [torch.ones_like(g) for g in got])


def assert_same_bits_for_1_to_3_threads(fused, x, hx=None):
    """Outputs, states and the gradients of x, of the states in hx and of every parameter:
    bit-identical with 1, 2 and 3 threads."""
    by_threads = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        by_threads.append(outputs_and_grads(fused, x, hx))
    for other in by_threads[1:]:
        for a, b in zip(by_threads[0], other):
            assert torch.equal(a, b)


@pytest.fixture
def settings():
    rows, schedule, threads = (fused_rnn._C._min_prepared_rows(), fused_rnn.cpu_schedule(),
                               torch.get_num_threads())
    yield
    fused_rnn._C._set_min_prepared_rows(rows)
    fused_rnn.set_cpu_schedule(schedule)
    torch.set_num_threads(threads)


def test_default_and_bad_value(settings):
    assert fused_rnn._C._min_prepared_rows() == 32
    with pytest.raises(RuntimeError, match="min_prepared_rows must be >= 0, got -1"):
        fused_rnn._C._set_min_prepared_rows(-1)


@pytest.mark.parametrize("prepared", [False, True], ids=["as_is", "prepared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_both_ways_match_nn(cell, kw, dtype, prepared, settings):
    """Per-step schedule (lanes would take the batch-1 forward), T * B = 12 rows."""
    fused_rnn.set_cpu_schedule("per-step")
    fused_rnn._C._set_min_prepared_rows(0 if prepared else 10**9)
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 5, 11, dtype, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(3, 4, 5, dtype=dtype, requires_grad=True)
    compare_with_nn(ref, fused, x, None, dtype)


def test_textbook_gru_both_ways_agree(settings):
    """The textbook GRU (no nn.* twin; its cells are checked elsewhere): W as it is and
    prepared give the same outputs and gradients within float64 rounding."""
    fused_rnn.set_cpu_schedule("per-step")
    m = fused_module("GRU", {"reset_after": False}, 5, 11, torch.float64, num_layers=2)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    results = []
    for rows in (0, 10**9):
        fused_rnn._C._set_min_prepared_rows(rows)
        results.append(outputs_and_grads(m, x))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("cell,kw", CELLS + [("GRU", {"reset_after": False})],
                         ids=IDS + ["gru_textbook"])
def test_w_as_it_is_gives_the_same_bits_for_any_thread_count(cell, kw, settings):
    fused_rnn._C._set_min_prepared_rows(10**9)
    fused_rnn.set_cpu_schedule("per-step")
    fused = fused_module(cell, kw, 6, 40)
    x = torch.randn(4, 6, 6, requires_grad=True)
    assert_same_bits_for_1_to_3_threads(fused, x)


def test_bfloat16_both_ways_agree(settings):
    fused_rnn.set_cpu_schedule("per-step")
    m = fused_module("GRU", {}, 5, 16, torch.bfloat16)
    x = torch.randn(3, 4, 5, dtype=torch.bfloat16)
    results = []
    for rows in (0, 10**9):
        fused_rnn._C._set_min_prepared_rows(rows)
        with torch.no_grad():
            results.append(flat(*m(x)))
    for a, b in zip(*results):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("T,B", [(1, 16), (1, 24), (2, 20), (3, 21)])
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_16_to_63_rows_match_nn_and_keep_their_bits(cell, kw, T, B, settings):
    """Float32 products of 16-63 rows against a transposed weight run as (W x^T)^T (the input
    projection, T * B rows; the per-step hidden GEMM on W as it is, B rows, accumulating for
    LSTM / RNN): nn.*'s results, and the same bits for 1, 2 and 3 threads."""
    fused_rnn.set_cpu_schedule("per-step")
    torch.manual_seed(0)
    ref, fused = nn_and_fused(cell, 6, 40, torch.float32, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(T, B, 6, requires_grad=True)
    compare_with_nn(ref, fused, x, None, torch.float32)
    assert_same_bits_for_1_to_3_threads(fused, x)


@pytest.mark.parametrize("schedule", ["per-step", "row-blocks"])
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_single_step_of_many_rows_on_the_packed_kernel(cell, kw, schedule, settings):
    """T=1 with B >= _min_prepared_rows(): on the own kernel ("own-packed") the step's hidden
    GEMMs run as one-shot packed products (h W_hh^T forward, d_g W_hh backward: W_hh packed in
    the call, chunk by chunk; the other back ends use W_hh as it is). Given initial states
    (which the step's hidden GEMM reads): nn.*'s outputs, states and gradients, the same bits
    for 1, 2 and 3 threads, and the same values as W as it is."""
    if fused_rnn._C.cpu_gemm_backend() != "own-packed":
        pytest.skip("the own kernel's back end is not the one in use")
    fused_rnn.set_cpu_schedule(schedule)
    torch.manual_seed(0)
    B = fused_rnn._C._min_prepared_rows() + 8
    ref, fused = nn_and_fused(cell, 6, 40, torch.float32, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(1, B, 6, requires_grad=True)
    n_state = ref.proj_size if kw.get("proj_size") else 40
    h0 = torch.randn(4, B, n_state, requires_grad=True)
    hx = (h0, torch.randn(4, B, 40, requires_grad=True)) if cell == "LSTM" else h0
    compare_with_nn(ref, fused, x, hx, torch.float32)
    assert_same_bits_for_1_to_3_threads(fused, x, hx)
    results = []
    for rows in (fused_rnn._C._min_prepared_rows(), 10**9):
        fused_rnn._C._set_min_prepared_rows(rows)
        results.append(outputs_and_grads(fused, x, hx))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
