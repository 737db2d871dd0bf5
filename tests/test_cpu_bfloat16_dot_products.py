"""bfloat16 products on AVX512_BF16's dot-product instruction (csrc/cpu/bf16_dot.h): the build
"AVX512_BF16" is offered exactly where the CPU has the instruction; its products match float64
within bfloat16's rounding, whatever the shapes, strides, row chunks and column chunks, with bits
that depend neither on the thread count nor on how the rows are split; the layers on it match
nn.* (float64 copies) and the float32-products build (AVX512)."""
import pytest
import torch

import fused_rnn
from helpers import GRAD_TOL, TOL, flat, grads, nn_and_fused

HAS_DOT = "AVX512_BF16" in fused_rnn.available_cpu_isas()
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="this CPU (or build) has no AVX512_BF16")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.fixture
def restore():
    isa, threads = fused_rnn.cpu_isa(), torch.get_num_threads()
    yield
    fused_rnn.set_cpu_isa(isa)
    torch.set_num_threads(threads)


def test_build_offered_exactly_where_the_cpu_has_the_instruction():
    flags = cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    isas = fused_rnn.available_cpu_isas()
    if "AVX512" not in isas:  # ATen (or ATEN_CPU_CAPABILITY) below AVX512: no dot build either
        assert "AVX512_BF16" not in isas
        return
    assert ("AVX512_BF16" in isas) == ("avx512_bf16" in flags)
    if "AVX512_BF16" in isas:
        assert isas[-1] == "AVX512_BF16" and fused_rnn.cpu_isa() == "AVX512_BF16"


def test_hook_refuses_builds_without_dot_products(restore):
    fused_rnn.set_cpu_isa("DEFAULT")
    a = torch.ones(2, 3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="no bfloat16 dot products"):
        fused_rnn._C._bf16_dot_mm(a, a.t())


def bf16(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(torch.bfloat16)


def assert_product_close(got, a, b):
    """got: a bfloat16 product of a and b; within bfloat16's rounding of the exact product plus
    float32 sums of |a| |b| (the dot products sum in float32)."""
    exact = a.double() @ b.double()
    bound = (a.double().abs() @ b.double().abs()) * (a.size(1) * 2.0 ** -23) + exact.abs() * 2.0 ** -8
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    assert torch.all((got.double() - exact).abs() <= bound + 1e-30), (got.double() - exact).abs().max()


# rows: tails of the 8-row tiles and the 128-row chunks; K: odd (the last pair half empty), 1, 2;
# N: partial strips, tails of the 3-strip tiles; K=2049: pair panels of 1025 pairs, so that a
# column chunk of the one-shot products is 48 columns and N=200 takes several chunks per tile.
SHAPES = [(1, 1, 1), (3, 2, 5), (8, 7, 16), (9, 17, 17), (13, 256, 49), (129, 37, 33),
          (300, 64, 100), (5, 2049, 200)]


@needs_dot
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_products_match_float64(M, K, N, restore):
    fused_rnn.set_cpu_isa("AVX512_BF16")
    torch.manual_seed(M * 1000 + K + N)
    a, w = bf16(M, K), bf16(N, K, scale=0.1)
    for b in (w.t(), w.t().contiguous()):  # the transposed view of a weight, a row-major matrix
        assert_product_close(fused_rnn._C._bf16_dot_mm(a, b), a, b)
    # a strided along K (the weight gradients' d_g^T: packed as a pair panel), b a strided view
    at = bf16(K, M).t()
    bs = bf16(K, 2 * N)[:, ::2]
    got = fused_rnn._C._bf16_dot_mm(at, bs)
    assert_product_close(got, at, bs)
    assert torch.equal(got, fused_rnn._C._bf16_dot_mm(at.contiguous(), bs))


@needs_dot
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_strided_along_k_gives_the_bits_of_its_row_major_copy(threads, restore):
    """a = X^T (unit stride along its rows' index, as the weight gradients' d_g^T): packed into a
    pair panel and read there; row parts of the product over the threads start at multiples of
    8, i.e. also half-way into a strip of 16 rows (M=24 on 3 threads: rows 8-15)."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    torch.set_num_threads(threads)
    torch.manual_seed(threads)
    for M, K, N in [(24, 37, 16), (40, 64, 16), (33, 1, 20), (129, 300, 50), (8, 2, 3)]:
        at = bf16(K + 3, M)[:K].t()  # a: [M, K], rows of X = a^T M + 0 apart, X cut from taller
        x_wide = bf16(K, M + 5)[:, :M]  # X rows M + 5 apart
        b = bf16(K, N, scale=0.1)
        for a in (at, x_wide.t()):
            got = fused_rnn._C._bf16_dot_mm(a, b)
            assert torch.equal(got, fused_rnn._C._bf16_dot_mm(a.contiguous(), b)), (M, K, N)
            assert_product_close(got, a, b)


@needs_dot
@pytest.mark.parametrize("K,pad", [(32, 0), (40, 2), (40, 1), (64, 3), (256, 6), (33, 0)])
def test_transposed_weights_pack_as_row_major_ones(K, pad, restore):
    """A weight's transposed view (its rows K + pad elements apart: whole 16 x 16 blocks of
    pairs transposed in registers where the row stride is even, element by element elsewhere and
    at the edges) gives the same bits as the same op(W) copied row-major (packed column by
    column)."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    torch.manual_seed(K * 10 + pad)
    a = bf16(19, K)
    for N in (16, 37, 96):
        w = bf16(N, K + pad, scale=0.1)[:, :K]  # w: [N, K], rows K + pad apart
        got = fused_rnn._C._bf16_dot_mm(a, w.t())
        assert torch.equal(got, fused_rnn._C._bf16_dot_mm(a, w.t().contiguous()))
        assert_product_close(got, a, w.t())


@needs_dot
def test_empty_and_zero_k_products(restore):
    fused_rnn.set_cpu_isa("AVX512_BF16")
    z = fused_rnn._C._bf16_dot_mm(bf16(4, 0), bf16(0, 5))
    assert torch.equal(z, torch.zeros(4, 5, dtype=torch.bfloat16))
    assert fused_rnn._C._bf16_dot_mm(bf16(0, 3), bf16(3, 5)).shape == (0, 5)
    assert fused_rnn._C._bf16_dot_mm(bf16(2, 3), bf16(3, 0)).shape == (2, 0)


@needs_dot
def test_products_round_as_tensor_to(restore):
    """Sums that are exact in float32 (small integers) round to bfloat16 as .to() does: 257 and
    259 lie halfway between bfloat16 neighbours (ties to even: 256, 260), 258 is exact."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    for total in (257.0, 258.0, 259.0, -257.0, 1e38 * 3.4):
        a = torch.tensor([[total / 2 if abs(total) < 1e30 else 1.7e38, 0.5]], dtype=torch.float32)
        b = torch.tensor([[2.0], [2.0]] if abs(total) < 1e30 else [[2.0], [0.0]])
        a_b, b_b = a.to(torch.bfloat16), b.to(torch.bfloat16)
        want = (a_b.float() @ b_b.float()).to(torch.bfloat16)
        assert torch.equal(fused_rnn._C._bf16_dot_mm(a_b, b_b), want)
    nan = fused_rnn._C._bf16_dot_mm(torch.tensor([[float("nan"), 1.0]], dtype=torch.bfloat16),
                                    torch.ones(2, 3, dtype=torch.bfloat16))
    assert torch.isnan(nan).all()
    inf = fused_rnn._C._bf16_dot_mm(torch.tensor([[float("inf"), 1.0]], dtype=torch.bfloat16),
                                    torch.ones(2, 3, dtype=torch.bfloat16))
    assert torch.isinf(inf).all() and (inf > 0).all()


@needs_dot
def test_product_bits_depend_only_on_row_and_column(restore):
    """The same bits on 1 and 3 threads, and for each row alone or a slice of the columns."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    torch.manual_seed(3)
    a, w = bf16(70, 301), bf16(90, 301)
    torch.set_num_threads(1)
    one = fused_rnn._C._bf16_dot_mm(a, w.t())
    torch.set_num_threads(3)
    three = fused_rnn._C._bf16_dot_mm(a, w.t())
    assert torch.equal(one, three)
    for r in (0, 9, 69):
        assert torch.equal(fused_rnn._C._bf16_dot_mm(a[r:r + 1], w.t()), one[r:r + 1])
    assert torch.equal(fused_rnn._C._bf16_dot_mm(a, w[17:50].t()), one[:, 17:50])


def results(module, x, hx=None):
    """Outputs, final states, then the gradients of x, hx and every parameter (output seeds
    drawn in float64, the same values in any dtype)."""
    torch.manual_seed(1)
    got = flat(*module(x, hx))
    seeds = [torch.randn(g.shape, dtype=torch.float64).to(g.dtype) for g in got]
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx])
    return [g.detach() for g in got] + grads(got, leaves + list(module.parameters()), seeds)


CASES = [  # cell, I, H, module keyword arguments
    ("GRU", 7, 37, {}),
    ("GRU", 6, 20, dict(reset_after=False)),
    ("LSTM", 7, 37, dict(num_layers=2, bidirectional=True)),
    ("LSTM", 5, 24, dict(proj_size=9)),
    ("RNN", 33, 70, {}),
    ("RNN_RELU", 6, 21, dict(batch_first=True)),
]


@needs_dot
@pytest.mark.parametrize("cell,I,H,kw", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_layers_match_nn_in_float64_and_the_float32_products(cell, I, H, kw, restore):
    torch.manual_seed(0)
    reset_after = kw.pop("reset_after", True)
    _, fused = nn_and_fused(cell, I, H, torch.bfloat16, **kw)
    if not reset_after:
        fused = fused_rnn.GRU(I, H, reset_after=False, dtype=torch.bfloat16)
        ref = None
    else:
        ref, _ = nn_and_fused(cell, I, H, torch.float64, **kw)
        ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    B, T = 19, 6  # 19 rows: two whole 8-row tiles and a tail
    shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = bf16(*shape).requires_grad_(True)
    fused_rnn.set_cpu_isa("AVX512_BF16")
    dot = results(fused, x)
    fused_rnn.set_cpu_isa("AVX512")
    via_float = results(fused, x)
    n_values = 2 + (cell == "LSTM")
    for i, (d, f) in enumerate(zip(dot, via_float)):
        tol = TOL[torch.bfloat16] if i < n_values else GRAD_TOL[torch.bfloat16]
        torch.testing.assert_close(d.float(), f.float(), **tol)
    if ref is not None:
        x64 = x.detach().double().requires_grad_(True)
        want = results(ref, x64)
        for i, (d, w) in enumerate(zip(dot, want)):
            tol = TOL[torch.bfloat16] if i < n_values else GRAD_TOL[torch.bfloat16]
            torch.testing.assert_close(d.double(), w, **tol)


@needs_dot
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_layer_bits_do_not_depend_on_threads_or_schedule(cell, restore):
    """Per-step (1 and 3 threads), row blocks and lanes (2 and 3 lanes; their products are the
    dot kernel's too): the same bits on the dot products."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    torch.manual_seed(0)
    _, fused = nn_and_fused(cell, 9, 50, torch.bfloat16)  # 3 lanes: 16, 16 and 18 units
    x = bf16(8, 33, 9).requires_grad_(True)
    schedule = fused_rnn.cpu_schedule()
    got = {}
    try:
        for name, sched, threads in [("per-step 1", "per-step", 1), ("per-step 3", "per-step", 3),
                                     ("row-blocks 2", "row-blocks", 2), ("lanes 2", "lanes", 2),
                                     ("lanes 3", "lanes", 3)]:
            fused_rnn.set_cpu_schedule(sched)
            torch.set_num_threads(threads)
            got[name] = results(fused, x)
    finally:
        fused_rnn.set_cpu_schedule(schedule)
    for name in ("per-step 3", "row-blocks 2", "lanes 2", "lanes 3"):
        for a, b in zip(got["per-step 1"], got[name]):
            assert torch.equal(a, b), name


@needs_dot
def test_auto_picks_lanes_for_small_bfloat16_batches(restore):
    """On the dot products auto runs bfloat16 as lanes up to 8 rows at H=128-511, 4 from 512,
    1 below 128 (cpu_recurrence.cpp max_dot_lane_rows); not on the float32-products build."""
    lanes = fused_rnn._C._cpu_lanes
    schedule = fused_rnn.cpu_schedule()
    try:
        fused_rnn.set_cpu_schedule("auto")
        torch.set_num_threads(2)
        fused_rnn.set_cpu_isa("AVX512_BF16")
        assert lanes(8, 256, False, bfloat16=True) == [0, 128, 256]
        assert lanes(9, 256, False, bfloat16=True) == []
        assert lanes(4, 512, False, bfloat16=True) == [0, 256, 512]
        assert lanes(5, 512, False, bfloat16=True) == []
        assert lanes(1, 64, False, bfloat16=True) == [0, 32, 64]  # 1 row below H=128
        assert lanes(2, 64, False, bfloat16=True) == []
        fused_rnn.set_cpu_isa("AVX512")
        assert lanes(1, 256, False, bfloat16=True) == []
    finally:
        fused_rnn.set_cpu_schedule(schedule)


@needs_dot
def test_auto_picks_row_blocks_for_bfloat16_where_the_panel_fits_l2(restore):
    """On the dot products auto runs bfloat16 recurrences as row blocks as it does float32 ones
    (whole 8-row tiles for every thread, at least 8 steps), where W_hh's pair panel (2 bytes per
    weight) fits a core's L2 cache (cpu_recurrence.cpp row_blocks); not on the float32-products
    build, where bfloat16 products run on float32 copies."""
    row_blocks = fused_rnn._C._cpu_row_blocks
    l2 = fused_rnn._C._cpu_l2_cache_bytes()
    schedule = fused_rnn.cpu_schedule()
    try:
        fused_rnn.set_cpu_schedule("auto")
        torch.set_num_threads(2)
        fused_rnn.set_cpu_isa("AVX512_BF16")
        assert row_blocks(16, 256, 4, False, bfloat16=True) == (
            [0, 8, 16] if 4 * 256 * 256 * 2 <= l2 else [])
        assert row_blocks(128, 128, 3, False, bfloat16=True) == [0, 64, 128]
        assert row_blocks(128, 128, 3, False, steps=7, bfloat16=True) == []  # short: per-step
        assert row_blocks(8, 128, 3, False, bfloat16=True) == []             # one tile: lanes
        fits = int((l2 // 2) ** 0.5) // 16 * 16                              # 1 gate
        assert row_blocks(32, fits, 1, False, bfloat16=True) == [0, 16, 32]
        assert row_blocks(32, fits + 16, 1, False, bfloat16=True) == []      # past L2
        torch.set_num_threads(1)
        assert row_blocks(32, 128, 3, False, bfloat16=True) == []            # nothing to spread
        torch.set_num_threads(2)
        fused_rnn.set_cpu_isa("AVX512")
        assert row_blocks(32, 128, 3, False, bfloat16=True) == []
    finally:
        fused_rnn.set_cpu_schedule(schedule)


@needs_dot
@pytest.mark.parametrize("schedule", ["per-step", "row-blocks", "lanes"])
def test_operators_with_no_hidden_units(schedule, restore):
    """H=0 at the operator level (the modules refuse it, as nn.* does): empty outputs, no crash
    (an empty weight once divided by zero while packing its pair panel)."""
    fused_rnn.set_cpu_isa("AVX512_BF16")
    saved = fused_rnn.cpu_schedule()
    try:
        fused_rnn.set_cpu_schedule(schedule)
        x, h = bf16(5, 3, 4), torch.zeros(3, 0, dtype=torch.bfloat16)
        w_ih, w_hh = torch.zeros(0, 4, dtype=torch.bfloat16), torch.zeros(0, 0, dtype=torch.bfloat16)
        out, h_n = torch.ops.fused_rnn.rnn_forward(x, h, w_ih, w_hh, None, None, None, False, False)
        assert out.shape == (5, 3, 0) and h_n.shape == (3, 0)
        out, h_n, _ = torch.ops.fused_rnn.gru_forward(x, h, w_ih, w_hh, None, None, None, False,
                                                       False)
        assert out.shape == (5, 3, 0) and h_n.shape == (3, 0)
    finally:
        fused_rnn.set_cpu_schedule(saved)
