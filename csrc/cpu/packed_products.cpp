// The CPU's one-shot float32 products (input projection, input gradient, weight gradients) on
// the library's own outer-product kernel (RowKernels::gemm_packed): the right operand copied per
// call into k-major strips of 16 columns, each output tile computed by one thread. Every output
// element is one sum over k in order from zero, so the bits do not depend on the thread count or
// on how the output is split, without the fixed BLAS tiles of cpu_gemm.cpp.
//
// Measured on the 2-core development VM (AMD EPYC, Zen 4; 2026-12-06; 2 threads, torch 2.14.1's
// MKL alongside in the same process): [560, 256] x [256, 1024] 216 GF/s vs at::mm 201;
// [1120, 256] x [256, 1024] 208 vs 192; [560, 512] x [512, 2048] 206 vs 164 (packing included).
// MKL ran the same products in the fixed tiles of cpu_gemm.cpp at ~155-175 GF/s in the layers.
// On an Intel Xeon (Sapphire Rapids, 2 vCPUs, 2026-12-06; 2 threads, packing included): at
// 265-343 GF/s vs at::mm's 328-384 alone, but in the layers the input projection ran at 78% of
// the large-GEMM rate vs MKL's 72%, the input gradient 81% vs 90% (LSTM T=35 B=64 H=256); the
// weight gradients there: packed_weight_grads below.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "cpu_kernels.h"
#include "row_kernels.h"

namespace fused_rnn::cpu {

namespace {

constexpr int64_t U = kLanePanelUnits;
// Products of fewer rows stay on cpu_gemm.cpp's BLAS tiles: packing the right operand is a pass
// over it per call, as long as ~2 rows of the product.
constexpr int64_t kMinPackedProductRows = 16;
// Products of fewer than chunk_rows() rows pack the right operand chunk by chunk (packed_mm_into):
// a chunk of ~kChunkBytes (chunk_cols) in a buffer of the thread, kept between calls, used by
// all the rows while it is in the core's cache; larger products pack each tile's columns whole
// first, as before. Packing all of a 3 MB weight per call wrote a fresh 3 MB buffer (glibc gives
// such sizes fresh pages now and then: up to ~2000 page faults per T=1 GRU training step at
// B=32 H=512 on the Zen 4 VM, 2026-12-07) and read it back from memory. Alone, with hot caches,
// chunks of 64-256 KB took 0.91-1.0x the time of whole panels at 16-512 rows ([M, 512] x W^T
// [512, 1536] and [M, 1536] x W [1536, 512], 2 threads; 10 interleaved rounds); at least 64
// columns of 256 KB 0.98-1.02x at 16-128 rows in a second run.
constexpr int64_t kDefaultChunkRows = 512;
constexpr int64_t kChunkBytes = int64_t{1} << 18;
constexpr int64_t kMinChunkCols = 4 * U;
std::atomic<int64_t>& chunk_rows() {
  static std::atomic<int64_t> rows{kDefaultChunkRows};
  return rows;
}

// [begin, end) of part i of n parts of `count` elements, boundaries at multiples of `align`.
std::pair<int64_t, int64_t> part(int64_t count, int64_t n, int64_t i, int64_t align) {
  const auto edge = [&](int64_t j) {
    return j >= n ? count : std::min(count, count * j / n / align * align);
  };
  return {edge(i), edge(i + 1)};
}

// The tiles of an [M, N] product on the packed kernel for this thread's team: column parts
// (multiples of U) over the threads, then row parts (multiples of 8) for threads left over; one
// tile where the caller already runs inside a parallel region (the row blocks' hidden GEMM).
struct ProductTiles {
  int64_t M, N, col_parts, row_parts;
  ProductTiles(int64_t M_, int64_t N_) : M(M_), N(N_) {
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    col_parts = std::max<int64_t>(1, std::min(threads, (N + U - 1) / U));
    row_parts = std::max<int64_t>(1, std::min(threads / col_parts, M / 8));
  }
  int64_t count() const { return col_parts * row_parts; }
  std::pair<int64_t, int64_t> cols(int64_t t) const { return part(N, col_parts, t % col_parts, U); }
  std::pair<int64_t, int64_t> rows(int64_t t) const { return part(M, row_parts, t / col_parts, 8); }
  // tile(t, c0, c1, r0, r1) for every tile t with columns and rows, the tiles over the threads
  template <typename F>
  void for_each(const F& tile) const {
    at::parallel_for(0, count(), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const auto [c0, c1] = cols(t);
        const auto [r0, r1] = rows(t);
        if (c1 > c0 && r1 > r0) tile(t, c0, c1, r0, r1);
      }
    });
  }
};

// Each tile's columns chunk by chunk (`chunk` columns, the last one shorter):
// body(cc, nc, r0, r1, buffer) for the nc columns from cc with the tile's rows [r0, r1), buffer
// a buffer of the thread (kept between calls) of at least size_of(nc) elements of P, for the
// chunk's packed right operand.
template <typename P, typename Size, typename F>
void for_tile_chunks(const ProductTiles& tiles, int64_t chunk, const Size& size_of,
                     const F& body) {
  tiles.for_each([&](int64_t, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    thread_local std::vector<P> buffer;
    for (int64_t cc = c0; cc < c1; cc += chunk) {
      const int64_t nc = std::min(chunk, c1 - cc);
      const size_t size = static_cast<size_t>(size_of(nc));
      if (buffer.size() < size) buffer.resize(size);
      body(cc, nc, r0, r1, buffer.data());
    }
  });
}

// Columns of a chunk of the right operand packed at a time (see packed_mm_into): ~kChunkBytes,
// at least kMinChunkCols (4 strips: whole register tiles of the kernel where K is long).
int64_t chunk_cols(int64_t K) {
  const int64_t cols = kChunkBytes / (K * static_cast<int64_t>(sizeof(float))) / U * U;
  return std::max<int64_t>(kMinChunkCols, cols);
}

// Columns [c0, c0 + nc) of op(W) packed into dst (where the pair panel's strip of column c0
// goes): op(W) = w^T for w: [N, K] (transposed; pack_rows) or w: [K, N] (pack_columns), rows
// w_row apart.
void pack_dot_columns(const Bf16DotKernels& dot, const c10::BFloat16* w, int64_t w_row,
                      bool transposed, int64_t K, int64_t c0, int64_t nc, uint32_t* dst) {
  if (transposed) {
    dot.pack_rows(w + c0 * w_row, w_row, nc, K, dst);
  } else {
    dot.pack_columns(w + c0, w_row, K, nc, dst);
  }
}

}  // namespace

void pack_dot_panel(const Bf16DotKernels& dot, const c10::BFloat16* w, int64_t w_row,
                    bool transposed, int64_t K, int64_t N, uint32_t* panel) {
  constexpr int64_t S = kDotStripColumns;
  at::parallel_for(0, (N + S - 1) / S, 1, [&](int64_t s0, int64_t s1) {
    const int64_t c0 = s0 * S, c1 = std::min(N, s1 * S);
    pack_dot_columns(dot, w, w_row, transposed, K, c0, c1 - c0,
                     panel + dot_strip_offset(c0, K));
  });
}

int64_t packed_chunk_rows() { return chunk_rows().load(); }
void set_packed_chunk_rows(int64_t rows) {
  TORCH_CHECK(rows >= 0, "fused_rnn: packed_chunk_rows must be >= 0, got ", rows);
  chunk_rows().store(rows);
}

bool packed_products(int64_t rows) {
  return own_packed_backend() && rows >= kMinPackedProductRows;
}

// The weight gradients' left operand is d_g^T, strided along k (the T*B rows of the call).
// Until 2026-12-06 the kernel read it in place, a page per k at G = 1024: on the AMD EPYC above
// the weight gradients still ran faster on it than on MKL's fixed tiles (LSTM T=35 B=16 H=256:
// 3.63 -> 3.11 ms); on the Intel Xeon (Sapphire Rapids, 2 vCPUs) at a third of MKL's rate
// (LSTM T=35 B=64 H=256 training, phase clock, weight-gradient phase 25.3 ms vs 10.9 on MKL;
// alone, 2 threads, [2240, 1024]^T x [2240, 256]: 115 GF/s vs at::mm 281). Since it packs that
// operand chunk by chunk (row_kernels.cpp gemm_packed_blocked: 250-264 GF/s on that product vs
// at::mm 290-350) the layers' training steps on the Xeon with the weight gradients on it / on
// MKL, interleaved (T=35): LSTM B=32 H=256 1.04, B=64 H=256 1.02, B=128 H=512 0.93; GRU B=32
// H=256 1.02, B=8 1.00; RNN B=32 H=256 1.01: level, so they stay on MKL's tiles there.
bool packed_weight_grads(int64_t rows) { return packed_products(rows) && !intel_cpu(); }

void packed_mm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  // out: [M, N] (unit column stride), a: [M, K] (any strides), b: [K, N] (rows or columns of
  // unit stride: a row-major matrix or the transposed view of a row-major weight)
  TORCH_CHECK(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat,
              "fused_rnn: packed products are float32 only");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK(b.size(0) == K && out.size(0) == M && out.size(1) == N && out.stride(1) == 1,
              "fused_rnn: packed product shapes");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) out.zero_();
    return;
  }
  const at::Tensor a_ = a.stride(0) == 1 || a.stride(1) == 1 ? a : a.contiguous();
  // b as the transposed view of w: [N, K] with rows of K contiguous elements, or row-major
  const bool b_transposed = b.stride(0) == 1 && b.stride(1) == K;
  const at::Tensor b_ = b_transposed || b.stride(1) == 1 ? b : b.contiguous();
  const bool a_unit_k = a_.stride(1) == 1;
  const int64_t a_row = a_unit_k ? a_.stride(0) : 1, a_k = a_unit_k ? 1 : a_.stride(1);
  const float* ap = a_.data_ptr<float>();
  const float* bp = b_.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const RowKernels<float>& k = row_kernels<float>();

  // out's columns [c0, c0 + nc) for a's rows [r0, r1): b's columns packed into `panel`, then
  // multiplied
  const auto pack_and_multiply = [&](int64_t c0, int64_t nc, int64_t r0, int64_t r1,
                                     float* panel) {
    if (b_transposed) {  // w: [N, K], its rows c0 .. c0 + nc
      k.lane_pack(bp + c0 * K, 0, 1, nc, K, panel);
    } else {
      k.lane_pack_columns(bp + c0, b_.stride(0), K, nc, panel);
    }
    k.gemm_packed(ap + r0 * a_row, a_row, a_k, r1 - r0, K, panel, nc,
                  op + r0 * out.stride(0) + c0, out.stride(0), accumulate);
  };
  const ProductTiles tiles(M, N);
  const int64_t chunk = M < packed_chunk_rows() ? chunk_cols(K) : 0;
  if (chunk > 0) {
    // each tile packs its columns chunk by chunk into a buffer of its thread, kept between calls
    for_tile_chunks<float>(tiles, chunk, [&](int64_t nc) { return lane_panel_size(1, nc, K); },
                           pack_and_multiply);
    return;
  }
  // each tile packs all its columns first
  std::vector<int64_t> offsets(tiles.count() + 1, 0);
  for (int64_t t = 0; t < tiles.count(); ++t) {
    const auto [c0, c1] = tiles.cols(t);
    offsets[t + 1] = offsets[t] + lane_panel_size(1, c1 - c0, K);
  }
  std::unique_ptr<float[]> panels(new float[offsets.back()]);  // not zeroed: packing writes all
  tiles.for_each([&](int64_t t, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    pack_and_multiply(c0, c1 - c0, r0, r1, panels.get() + offsets[t]);
  });
}

void gemm_on_panel(const float* a, int64_t a_row, int64_t rows, int64_t K, const float* panel,
                   int64_t N, float* out, int64_t out_row, bool accumulate) {
  // a: [rows, K] (row stride a_row), panel: op(W) [K, N] in strips, out: [rows, N]
  if (rows <= 0 || N <= 0) return;
  const RowKernels<float>& k = row_kernels<float>();
  ProductTiles(rows, N).for_each([&](int64_t, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    k.gemm_packed(a + r0 * a_row, a_row, 1, r1 - r0, K, panel + lane_strip_offset(c0, K),
                  c1 - c0, out + r0 * out_row + c0, out_row, accumulate);
  });
}

void dot_gemm_on_panel(const Bf16DotKernels& dot, const c10::BFloat16* a, int64_t a_row,
                       int64_t rows, int64_t K, const uint32_t* panel, int64_t N,
                       c10::BFloat16* out, int64_t out_row, bool accumulate) {
  // a: [rows, K] (row stride a_row), panel: op(W) [K, N] in pairs, out: [rows, N]
  if (rows <= 0 || N <= 0) return;
  ProductTiles(rows, N).for_each([&](int64_t, int64_t c0, int64_t c1, int64_t r0, int64_t r1) {
    dot.gemm(a + r0 * a_row, a_row, r1 - r0, K, panel + dot_strip_offset(c0, K), c1 - c0,
             out + r0 * out_row + c0, out_row, accumulate);
  });
}

at::Tensor bf16_dot_mm(const Bf16DotKernels& dot, const at::Tensor& a_, const at::Tensor& b_) {
  // a: [M, K] (any strides), b: [K, N] (any strides) -> out: [M, N], all bfloat16
  TORCH_CHECK(a_.scalar_type() == at::kBFloat16 && b_.scalar_type() == at::kBFloat16,
              "fused_rnn: bf16_dot_mm takes bfloat16 operands");
  const int64_t M = a_.size(0), K = a_.size(1), N = b_.size(1);
  TORCH_CHECK(b_.size(0) == K, "fused_rnn: bf16_dot_mm shapes");
  at::Tensor out = at::empty({M, N}, a_.options());
  if (M == 0 || N == 0) return out;
  // a strided along K with unit stride along M (the weight gradients' d_g^T): a^T packed into a
  // pair panel (in parallel, by strips of 16 rows of a) instead of copied row-major: on the Zen 5
  // VM a row-major copy of d_g^T [1024, 4480] (ATen's transposing copy) took ~3 ms on 2 threads,
  // two of them in each bfloat16 LSTM T=35 B=128 training step (~35 ms)
  const bool pack_a = a_.stride(1) != 1 && a_.stride(0) == 1 && K > 0;
  std::unique_ptr<uint32_t[]> a_panel;
  if (pack_a) {
    a_panel.reset(new uint32_t[dot_panel_size(K, M)]);  // not zeroed: packing writes all
    // a^T: [K, M], rows a_.stride(1) apart
    pack_dot_panel(dot, a_.data_ptr<c10::BFloat16>(), a_.stride(1), /*transposed=*/false, K, M,
                   a_panel.get());
  }
  // pairs along K adjacent (where not packed)
  const at::Tensor a = pack_a || a_.stride(1) == 1 ? a_ : a_.contiguous();
  // b row-major (unit column stride), or the transposed view of a weight [N, K] (unit row
  // stride: each column of b contiguous along K)
  const bool b_transposed = b_.stride(1) != 1 && b_.stride(0) == 1;
  const at::Tensor b = b_transposed || b_.stride(1) == 1 ? b_ : b_.contiguous();
  const int64_t b_row = b_transposed ? b.stride(1) : b.stride(0);
  const auto* ap = a.data_ptr<c10::BFloat16>();
  const auto* bp = b.data_ptr<c10::BFloat16>();
  auto* op = out.data_ptr<c10::BFloat16>();
  // each tile packs its columns chunk by chunk (~kChunkBytes of pairs, whole groups of
  // kDotTileStrips strips, at least one: no narrower tiles than the kernel's where the columns
  // allow; the weight gradients' K = T*B made chunks of 4 strips run as 3 + 1) into a buffer of
  // its thread, kept between calls, and runs all its rows on each chunk
  constexpr int64_t kGroup = kDotTileStrips * U;
  const int64_t chunk = std::max<int64_t>(
      1, kChunkBytes / (std::max<int64_t>(1, dot_pairs(K)) * int64_t{sizeof(uint32_t)}) /
             kGroup) * kGroup;
  for_tile_chunks<uint32_t>(
      ProductTiles(M, N), chunk, [&](int64_t nc) { return dot_panel_size(K, nc); },
      [&](int64_t cc, int64_t nc, int64_t r0, int64_t r1, uint32_t* panel) {
        pack_dot_columns(dot, bp, b_row, b_transposed, K, cc, nc, panel);
        if (pack_a) {
          dot.gemm_packed_a(a_panel.get(), r0, r1 - r0, K, panel, nc, op + r0 * N + cc, N,
                            /*accumulate=*/false);
        } else {
          dot.gemm(ap + r0 * a.stride(0), a.stride(0), r1 - r0, K, panel, nc, op + r0 * N + cc,
                   N, /*accumulate=*/false);
        }
      });
  return out;
}

at::Tensor packed_mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());  // out: [M, N]
  packed_mm_into(out, a, b, /*accumulate=*/false);
  return out;
}

}  // namespace fused_rnn::cpu
