"""The CPU's float32 one-shot products on the library's own kernel (csrc/cpu/packed_products.cpp:
the input projection, the input gradient and the weight gradients from 16 rows): against a
float64 product, for the operand layouts the layers pass (a row-major or transposed, b row-major
or the transposed view of a weight, narrowed views), edge sizes (rows not a multiple of the
8-row tile, columns not a multiple of the 16-column strip, K of 0 and 1), accumulation into out,
and the same bits for 1 to 4 threads."""
import pytest
import torch

import fused_rnn

packed_mm = fused_rnn._C._cpu_packed_mm


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def operands(M, K, N, a_layout, b_layout):
    """a: [M, K], b: [K, N] in the given layouts, and their float64 product."""
    g = torch.Generator().manual_seed(M * 1000 + K * 10 + N)
    if a_layout == "row-major":
        a = torch.randn(M, K, generator=g)
    elif a_layout == "transposed":          # d_g2d.t() in the weight gradients
        a = torch.randn(K, M, generator=g).t()
    else:                                   # a narrowed view: row stride above K
        a = torch.randn(M, K + 5, generator=g).narrow(1, 2, K)
    if b_layout == "row-major":             # W_ih in the input gradient, rows in dW
        b = torch.randn(K, N, generator=g)
    elif b_layout == "weight-transposed":   # w.t() in the input projection
        b = torch.randn(N, K, generator=g).t()
    else:                                   # a strided view: copied first
        b = torch.randn(K, 2 * N, generator=g)[:, ::2]
    return a, b, a.double() @ b.double()


@pytest.mark.parametrize("b_layout", ["row-major", "weight-transposed", "strided"])
@pytest.mark.parametrize("a_layout", ["row-major", "transposed", "narrowed"])
@pytest.mark.parametrize("M,K,N", [(16, 7, 5), (37, 64, 48), (129, 33, 70), (16, 1, 17),
                                   (2, 40, 90), (3, 17, 50), (6, 9, 130)])  # partial row tiles
def test_packed_mm_matches_float64(M, K, N, a_layout, b_layout, threads):
    a, b, want = operands(M, K, N, a_layout, b_layout)
    by_threads = []
    for t in (1, 2, 3, 4):
        torch.set_num_threads(t)
        got = packed_mm(a, b)
        assert got.shape == (M, N) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)
        by_threads.append(got)
    for got in by_threads[1:]:
        assert torch.equal(got, by_threads[0]), "the product depends on the thread count"


def test_packed_mm_accumulates_into_out(threads):
    torch.set_num_threads(2)
    a, b, want = operands(40, 24, 36, "transposed", "row-major")
    base = torch.randn(40, 36)
    out = packed_mm(a, b, base.clone())
    torch.testing.assert_close(out.double(), base.double() + want, rtol=1e-5, atol=1e-5)
    # the sum of the products first, then added to out: out + (a @ b) in one rounding step more
    assert torch.equal(out, base + packed_mm(a, b))


def test_packed_mm_with_empty_reduction(threads):
    a, b = torch.randn(20, 0), torch.randn(0, 9)
    assert torch.equal(packed_mm(a, b), torch.zeros(20, 9))
    base = torch.randn(20, 9)
    assert torch.equal(packed_mm(a, b, base.clone()), base)


def test_packed_mm_refuses_other_dtypes():
    with pytest.raises(RuntimeError, match="float32 only"):
        packed_mm(torch.randn(16, 4, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))


@pytest.mark.parametrize("M,K,N", [(150, 300, 70), (7, 260, 33), (200, 1030, 40), (64, 129, 16)])
def test_packed_mm_in_chunks_keeps_one_pass_bits(M, K, N, threads):
    """Sizes past the kernel's chunks (row_kernels.cpp gemm_packed_blocked: 128 rows of a
    contiguous a; 64 rows x 128 k of a strided a, packed, its sums spilled between k chunks):
    every element is still one sum over k in order from zero, so a transposed a (packed, k in
    chunks) gives the bits of the same a contiguous (read in place, k in one pass), for 1 to 3
    threads, and both match float64."""
    g = torch.Generator().manual_seed(M + K + N)
    a_t = torch.randn(K, M, generator=g).t()      # strided along k, as d_g^T
    a_c = a_t.contiguous()
    b = torch.randn(N, K, generator=g).t()
    want = a_c.double() @ b.double()
    results = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        for a in (a_t, a_c):
            got = packed_mm(a, b)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)
            results.append(got)
    for got in results[1:]:
        assert torch.equal(got, results[0]), "chunking or threads changed the bits"
    base = torch.randn(M, N, generator=g)
    assert torch.equal(packed_mm(a_t, b, base.clone()), base + results[0])


@pytest.fixture
def chunk_rows():
    saved = fused_rnn._C._packed_chunk_rows()
    yield
    fused_rnn._C._set_packed_chunk_rows(saved)


@pytest.mark.parametrize("b_layout", ["row-major", "weight-transposed"])
@pytest.mark.parametrize("M,K,N", [(32, 1030, 200), (16, 2100, 90), (40, 520, 300)])
def test_packed_mm_chunks_of_the_right_operand_keep_the_bits(M, K, N, b_layout, threads,
                                                           chunk_rows):
    """Products of fewer than _packed_chunk_rows() rows pack b chunk by chunk (~256 KB of
    columns at a time, at least 64: 64 columns at K=1030 and 2100, 112 at K=520, so several
    chunks per thread's tile here, and a partial last one): every element is still one sum over
    k in order, so the bits of whole panels, for 1 to 3 threads, and float64's values."""
    assert fused_rnn._C._packed_chunk_rows() > M   # the default chunks these products
    a, b, want = operands(M, K, N, "row-major", b_layout)
    results = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        for rows in (M + 1, 0):                    # in chunks, then whole panels
            fused_rnn._C._set_packed_chunk_rows(rows)
            got = packed_mm(a, b)
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * K ** 0.5)
            results.append(got)
            base = torch.randn(M, N)
            assert torch.equal(packed_mm(a, b, base.clone()), base + got)
    for got in results[1:]:
        assert torch.equal(got, results[0]), "chunks or threads changed the bits"


def test_packed_chunk_rows_refuses_a_negative_count(chunk_rows):
    with pytest.raises(RuntimeError, match="packed_chunk_rows must be >= 0, got -1"):
        fused_rnn._C._set_packed_chunk_rows(-1)
