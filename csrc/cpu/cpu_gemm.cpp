// CPU per-step hidden GEMMs. With MKL (x86 builds of torch) the weight is packed once per call
// with cblas_sgemm_pack and every step runs cblas_sgemm_compute on it: no per-step repacking of
// W and no transposed copy. MKL's symbols are declared weak: where torch has no MKL (or for
// float64, which has no packed API) the weight is transposed once into a contiguous buffer and
// ATen's mm runs each step (MKL/OpenBLAS run a plain B much faster than a transposed view
// when B has few rows). Both preparations cost a pass over W per call (packing a 3 MB W_hh:
// ~1 ms here); a call with fewer than min_prepared_rows() rows over all its steps, or with a
// single step (except on the own kernel from min_prepared_rows() rows, see hidden_gemm), runs
// ATen's mm on W as it is.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"

extern "C" {
// MKL CBLAS packed-GEMM API (LP64: MKL_INT = int; enums are ints).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
// MKL's thread count for the calling thread only (0: back to the global setting); returns the
// previous one. (The C function: mkl_service.h's mkl_set_num_threads_local is a macro for it;
// the exported lower-case symbol is the Fortran interface, which takes a pointer.)
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
}

namespace fused_rnn::cpu {

// For 16-63 float rows MKL's multi-threaded GEMM against the transposed view of a weight ran up
// to 2x slower than the same product as (W x^T)^T plus a transposed copy (2 threads, rows
// 16-48, W: [256-1024, 256]: 41-335 vs 68-523 us; from 64 rows the plain call was as fast or
// faster); it seems to split the few rows over the threads, each packing all of W. Used by
// the input projection (rnn_driver.h project_rows) and SwappedGemm below.
bool swapped_product(int64_t rows) { return rows >= 16 && rows < 64; }

// ---- Fixed tiles -----------------------------------------------------------------------------
// Every CPU product here runs as fixed tiles of its output, each computed by one single-threaded
// BLAS call, the tiles spread over the intra-op threads. The tiles depend on the shapes only, so
// every output element comes from the same call on the same operands whatever the thread count
// and schedule: the results are bit-identical by construction, not by a BLAS's habits. (Seen on
// an AMD EPYC with torch 2.14.1's MKL, 2026-11-29: a GEMM's rows of a 1-3-row call differ in the
// last bits from the same rows in a larger call; a 30 x 144 by 144 x 24 product on 4 threads
// differs from 1 thread; columns of calls of up to 8 columns differ from the same columns in a
// wider call. On the Intel machines of earlier sessions MKL had done neither, and the schedules
// relied on it.)
namespace {

// The BLAS runs single-threaded on this thread while it lives (MKL: MKL_Set_Num_Threads_Local;
// inside an OpenMP parallel region MKL runs single-threaded anyway, but a tile loop that
// at::parallel_for runs inline, on one thread or one tile, is not in one). A torch without MKL
// (no such symbol) gets nothing forced here: a BLAS that threads one call by itself outside a
// parallel region could still change a tile's bits with its thread count there (not seen: every
// machine of this project so far has had MKL).
struct SequentialBlas {
  int saved = 0;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) saved = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(saved);
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;
};

// Columns per tile of an N-column output: N in equal parts of at most kTileCols (multiples of
// 16).
constexpr int64_t kTileCols = 256;
int64_t tile_cols(int64_t N) {
  const int64_t parts = std::max<int64_t>(1, (N + kTileCols - 1) / kTileCols);
  return ((N + parts - 1) / parts + 15) / 16 * 16;
}

// tile(r0, r1, c0, c1) for the tiles of an [M, N] output (rows from 0 in steps of tile_rows,
// columns in steps of tile_cols(N)), spread over the threads, each under SequentialBlas.
template <typename F>
void for_tiles(int64_t M, int64_t N, int64_t tile_rows, const F& tile) {
  if (M <= 0 || N <= 0) return;
  const int64_t tc = tile_cols(N), mt = (M + tile_rows - 1) / tile_rows, nt = (N + tc - 1) / tc;
  at::parallel_for(0, mt * nt, 1, [&](int64_t i0, int64_t i1) {
    // the operands may require grad (the operators run below autograd); ATen's out= products
    // refuse them unless autograd is skipped on this thread
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SequentialBlas sequential;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r0 = i / nt * tile_rows, c0 = i % nt * tc;
      tile(r0, std::min(M, r0 + tile_rows), c0, std::min(N, c0 + tc));
    }
  });
}

// Rows per tile of the one-shot products (input projection, input and weight gradients).
constexpr int64_t kProductTileRows = 64;

}  // namespace

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  // a: [M, K], b: [K, N] -> out: [M, N]
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  for_tiles(a.size(0), b.size(1), kProductTileRows, [&](int64_t r0, int64_t r1, int64_t c0,
                                                        int64_t c1) {
    at::Tensor o = out.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
    at::mm_out(o, a.narrow(0, r0, r1 - r0), b.narrow(1, c0, c1 - c0));
  });
  return out;
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

bool mkl_packed_available() {
  return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
}

struct MklPackedGemm final : HiddenGemm<float> {
  std::vector<at::Tensor> packed;  // per column tile: MKL's opaque packed form of its op(W) columns
  int n, k;
  int64_t tc;  // columns per tile

  // w_: [N, K] if transpose_w else [K, N]; rows: the M (= B) of the steps to come
  MklPackedGemm(const at::Tensor& w_, bool transpose_w, int64_t rows) {
    const at::Tensor w = w_.contiguous();
    n = static_cast<int>(transpose_w ? w.size(0) : w.size(1));
    k = static_cast<int>(transpose_w ? w.size(1) : w.size(0));
    tc = tile_cols(n);
    const int m = static_cast<int>(std::min<int64_t>(kTileRows, std::max<int64_t>(1, rows)));
    const float* src = w.data_ptr<float>();
    for (int64_t c0 = 0; c0 < n; c0 += tc) {
      const int nc = static_cast<int>(std::min<int64_t>(tc, n - c0));
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, nc, k);
      packed.push_back(at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte)));
      // op(W)[:, c0 .. c0 + nc): rows c0.. of w (transposed) or its columns c0..
      cblas_sgemm_pack(kRowMajor, kBMatrix, transpose_w ? kTrans : kNoTrans, m, nc, k, 1.0f,
                       transpose_w ? src + c0 * w.size(1) : src + c0,
                       static_cast<int>(w.size(1)),
                       reinterpret_cast<float*>(packed.back().data_ptr()));
    }
  }

  void run(const float* h, int64_t h_row, float* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0 || n == 0) return;
    if (k == 0) {
      if (!accumulate) {
        for (int64_t r = 0; r < rows; ++r) std::fill(out + r * out_row, out + r * out_row + n, 0.f);
      }
      return;
    }
    for_tiles(rows, n, kTileRows, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(r1 - r0),
                          static_cast<int>(c1 - c0), k, h + r0 * h_row,
                          static_cast<int>(std::max<int64_t>(k, h_row)),
                          reinterpret_cast<const float*>(packed[c0 / tc].data_ptr()),
                          static_cast<int>(c1 - c0), accumulate ? 1.0f : 0.0f,
                          out + r0 * out_row + c0,
                          static_cast<int>(std::max<int64_t>(c1 - c0, out_row)));
    });
  }
};

// W packed once into the library's 16-column strips (RowKernels::lane_pack / lane_pack_columns)
// and every step runs its outer-product kernel (gemm_packed) on them: each output element one sum
// over k in order, so per-step and row blocks give the same bits however the step is split.
// The default back end: MKL's packed GEMMs ran at ~85% of its rate on the AMD EPYC of 2026-12-06.
// A step is split as the one-shot products are (gemm_on_panel: each thread a part of the
// columns with all the rows, so that it reads only its part of W per step, once; inside the row
// blocks one call with the block's rows). Until 2026-12-06 it ran the fixed 8-row tiles of the
// MKL back end, row tile by row tile: each thread read all of W once per 8 rows, from L3 where W
// outgrew L2 (LSTM H=512: 4 MB). Sapphire Rapids-class Xeon VM, 2 threads, T=35, interleaved,
// new / old time: LSTM B=128 H=512 inference 0.845, training 0.919; LSTM B=32 H=512 inference
// 0.868; GRU B=32 H=256 1.01-1.015 (W in L2 either way), LSTM B=64 H=256 inference 0.976.
struct OwnPackedGemm final : HiddenGemm<float> {
  std::unique_ptr<float[]> panel;  // lane_panel_size(1, n, k) floats: op(W) in strips
  int64_t n, k, tc;                // op(W): [k, n]; columns per tile (multiples of 16)

  // w_: [N, K] if transpose_w else [K, N], not empty (prepared_gemm): n, k > 0
  OwnPackedGemm(const at::Tensor& w_, bool transpose_w) {
    TORCH_INTERNAL_ASSERT(w_.numel() > 0, "OwnPackedGemm of an empty weight");
    const at::Tensor w = w_.contiguous();
    n = transpose_w ? w.size(0) : w.size(1);
    k = transpose_w ? w.size(1) : w.size(0);
    tc = tile_cols(n);
    panel.reset(new float[lane_panel_size(1, n, k)]);
    const RowKernels<float>& kernels = row_kernels<float>();
    const float* src = w.data_ptr<float>();
    float* dst = panel.get();
    // the strips of each column tile packed by the thread of that tile
    at::parallel_for(0, (n + tc - 1) / tc, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * tc, nc = std::min(tc, n - c0);
        float* strips = dst + lane_strip_offset(c0, k);
        if (transpose_w) {  // rows c0 .. c0 + nc of w: [N, K]
          kernels.lane_pack(src + c0 * k, 0, 1, nc, k, strips);
        } else {            // columns c0 .. c0 + nc of w: [K, N]
          kernels.lane_pack_columns(src + c0, n, k, nc, strips);
        }
      }
    });
  }

  void run(const float* h, int64_t h_row, float* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0) return;
    gemm_on_panel(h, h_row, rows, k, panel.get(), n, out, out_row, accumulate);
  }
};

// A [rows, cols] tensor over a step's rows at p (row stride `row_stride`, unit column stride):
// no copy, no ownership.
at::Tensor row_view(const float* p, int64_t rows, int64_t cols, int64_t row_stride,
                    const at::TensorOptions& options) {
  return at::for_blob(const_cast<float*>(p), {rows, cols}).strides({row_stride, 1})
      .options(options).make_tensor();
}

// A single step's product on the own kernel: out (+)= h op(W) as a one-shot product
// (packed_mm_into: op(W) packed per call, in chunks for few rows), W as it is between calls.
struct OneShotPackedGemm final : HiddenGemm<float> {
  at::Tensor w_op;  // op(W): [K, N], a transposed view of w: [N, K] or w itself
  explicit OneShotPackedGemm(at::Tensor w_op_) : w_op(std::move(w_op_)) {}
  void run(const float* h, int64_t h_row, float* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0) return;
    const int64_t K = w_op.size(0), N = w_op.size(1);
    const at::Tensor h_t = row_view(h, rows, K, h_row, w_op.options());  // h_t: [rows, K]
    at::Tensor out_t = row_view(out, rows, N, out_row, w_op.options());  // out_t: [rows, N]
    packed_mm_into(out_t, h_t, w_op, accumulate);
  }
};

// ATen's mm per tile on op(W) given as `w_op`: [K, N] (a contiguous copy or a transposed view):
// hidden_gemm.h's one-call AtenHiddenGemm on each column tile of w_op.
template <typename S>
struct TiledAtenGemm final : HiddenGemm<S> {
  std::vector<AtenHiddenGemm<S>> tiles;  // per column tile: op(W)[:, c0 .. c0 + tc)
  int64_t n, tc;                         // columns in all, per tile
  explicit TiledAtenGemm(const at::Tensor& w_op) : n(w_op.size(1)), tc(tile_cols(n)) {
    for (int64_t c0 = 0; c0 < n; c0 += tc) {
      tiles.emplace_back(w_op.narrow(1, c0, std::min(tc, n - c0)));
    }
  }
  void run(const S* h, int64_t h_row, S* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    for_tiles(rows, n, kTileRows, [&](int64_t r0, int64_t r1, int64_t c0, int64_t) {
      tiles[c0 / tc].run(h + r0 * h_row, h_row, out + r0 * out_row + c0, out_row, r1 - r0,
                         accumulate);
    });
  }
};

// Cache-blocked transpose. Tiles of 8 rows: the 8 source rows of a tile can share one L1 set
// (power-of-two strides) without evicting each other; the writes of a tile column are contiguous.
template <typename S>
void transpose(const S* src, int64_t rows, int64_t cols, S* dst) {
  constexpr int64_t kTile = 8;
  const int64_t col_tiles = (cols + kTile - 1) / kTile;
  at::parallel_for(0, col_tiles, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile);
      for (int64_t j = c0 * kTile; j < std::min(cols, c1 * kTile); ++j) {
        S* out = dst + j * rows;
        for (int64_t i = i0; i < i1; ++i) out[i] = src[i * cols + j];
      }
    }
  });
}

template <typename S>
std::unique_ptr<HiddenGemm<S>> aten_gemm(const at::Tensor& w_, bool transpose_w) {
  // w_: [N, K] if transpose_w else [K, N]
  if (!transpose_w) return std::make_unique<TiledAtenGemm<S>>(w_);
  const at::Tensor w = w_.contiguous();
  at::Tensor w_t = at::empty({w.size(1), w.size(0)}, w.options());
  transpose(w.data_ptr<S>(), w.size(0), w.size(1), w_t.data_ptr<S>());
  return std::make_unique<TiledAtenGemm<S>>(w_t);
}

// The prepared per-step GEMM (gemm_backend): the library's own packed kernel by default (with
// auto's rule set for it, cpu_recurrence.cpp, and the one-shot products on it, packed_products);
// "mkl-packed" (MKL's packed API, where torch has MKL) and "aten" for tests and A/Bs. Measured
// as complete rule sets, own / mkl time (benchmarks/cpu_gemm_backends.py --auto; T=35, H=256 and
// 512, B=1-128, 2 threads): AMD EPYC (Zen 4) 0.69-0.97 (results/cpu_gemm_backends_2026-12-06.md);
// Intel Xeon (Sapphire Rapids) inference 0.68-0.92, training 0.81-1.08 with the weight
// gradients on MKL there (packed_weight_grads; one outlier, GRU B=1 H=256 training 1.40, 0.94
// in the run before; results/cpu_rule_sets_intel_2026-12-06b.md).
enum class Backend : int { kOwnPacked, kMklPacked, kAten };
std::atomic<int>& backend() {
  static std::atomic<int> value{static_cast<int>(Backend::kOwnPacked)};
  return value;
}

// A call whose steps have fewer rows than this in all (T * B) runs on W as it is. Measured on
// the 2-core development machine (per-step schedule, 2 threads, float32; time on W as it is /
// packed, forward and training): GRU H=512: B=2 0.55 / 0.74 (T=1) ... 0.98 / 0.94 (T=16); B=8
// 0.81 / 0.87 (T=1), 1.00 / 0.95 (T=4), 1.29 / 1.02 (T=8); B=32 0.96 / 0.98 (T=1), 1.54 /
// 1.08 (T=2). LSTM H=256: B=2 0.81 / 0.89 (T=1) ... 0.98 / 1.06 (T=16); B=8 0.92 / 0.88 (T=1),
// 1.04 / 0.99 (T=4); B=32 1.17 / 0.95 (T=1), 1.47 / 1.35 (T=2). About even at 32 rows in all.
constexpr int64_t kDefaultMinPreparedRows = 32;

std::atomic<int64_t>& min_rows() {
  static std::atomic<int64_t> rows{kDefaultMinPreparedRows};
  return rows;
}

// out (+)= h w^T computed as (w h^T)^T per tile, for the row counts of swapped_product.
struct SwappedGemm final : HiddenGemm<float> {
  at::Tensor w;  // w: [N, K]
  explicit SwappedGemm(at::Tensor w_) : w(std::move(w_)) {}
  void run(const float* h, int64_t h_row, float* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0) return;
    const int64_t N = w.size(0), K = w.size(1);
    const at::Tensor h_t = row_view(h, rows, K, h_row, w.options());  // h_t: [rows, K]
    at::Tensor out_t = row_view(out, rows, N, out_row, w.options());  // out_t: [rows, N]
    for_tiles(rows, N, kTileRows, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      // product: [c1 - c0, r1 - r0]
      const at::Tensor product =
          at::mm(w.narrow(0, c0, c1 - c0), h_t.narrow(0, r0, r1 - r0).t());
      at::Tensor o = out_t.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
      if (accumulate) {
        o.add_(product.t());
      } else {
        o.copy_(product.t());
      }
    });
  }
};

// W as it is: op(W) = w^T as a transposed view (no copy), or SwappedGemm (float, see
// swapped_product).
template <typename S>
std::unique_ptr<HiddenGemm<S>> unprepared_gemm(const at::Tensor& w, bool transpose_w,
                                               int64_t rows) {
  if constexpr (std::is_same_v<S, float>) {
    if (transpose_w && swapped_product(rows)) return std::make_unique<SwappedGemm>(w);
  }
  return std::make_unique<TiledAtenGemm<S>>(transpose_w ? w.t() : w);
}

// W prepared once for the call: MKL's packed form for float where torch has MKL, else a
// contiguous op(W).
template <typename S>
std::unique_ptr<HiddenGemm<S>> prepared_gemm(const at::Tensor& w, bool transpose_w,
                                             int64_t rows) {
  if constexpr (std::is_same_v<S, float>) {
    const auto chosen = static_cast<Backend>(backend().load());
    if (chosen == Backend::kOwnPacked && w.numel() > 0) {
      return std::make_unique<OwnPackedGemm>(w, transpose_w);
    }
    if (chosen == Backend::kMklPacked && w.numel() > 0 && w.size(0) < INT_MAX &&
        w.size(1) < INT_MAX && rows < INT_MAX) {
      return std::make_unique<MklPackedGemm>(w, transpose_w, rows);
    }
  }
  return aten_gemm<S>(w, transpose_w);
}

// float16 and bfloat16: the float32 product of the float32 copy of W (hidden_gemm<float>'s choice
// for the same shapes), the step's rows converted to float32 on the way in and the result
// rounded to the half type once on the way out (after the sum with out's values where it
// accumulates), as the one-shot products (rnn_driver.h cpu_via_float, with the measurements).
template <typename S>
struct ViaFloatGemm final : HiddenGemm<S> {
  at::Tensor w_float;                         // w as float32 (what `inner` runs on)
  std::unique_ptr<HiddenGemm<float>> inner;   // op(W) products in float32
  int64_t k, n;                               // op(W): [k, n]
  ViaFloatGemm(const at::Tensor& w, bool transpose_w, int64_t rows, int64_t steps)
      : w_float(w.to(at::kFloat)),
        inner(hidden_gemm<float>(w_float, transpose_w, rows, steps)),
        k(transpose_w ? w.size(1) : w.size(0)),
        n(transpose_w ? w.size(0) : w.size(1)) {}
  void run(const S* h, int64_t h_row, S* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0 || n == 0) return;
    thread_local std::vector<float> h_f, out_f;  // [rows, k], [rows, n]
    h_f.resize(static_cast<size_t>(rows * k));
    out_f.resize(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(h + r * h_row, h + r * h_row + k, h_f.data() + r * k);
      if (accumulate) std::copy(out + r * out_row, out + r * out_row + n, out_f.data() + r * n);
    }
    inner->run(h_f.data(), k, out_f.data(), n, rows, accumulate);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(out_f.data() + r * n, out_f.data() + (r + 1) * n, out + r * out_row);
    }
  }
};

// bfloat16 on AVX512_BF16's dot products (bf16_dot.h): op(W) packed once per call into a pair
// panel, every step run from the bfloat16 rows, sums in float32, rounded once (after the sum
// with out's values where it accumulates), split as gemm_on_panel: the same bits however a step
// is split, so the row blocks match per-step.
struct DotGemm final : HiddenGemm<c10::BFloat16> {
  const Bf16DotKernels& dot;
  std::unique_ptr<uint32_t[]> panel;  // dot_panel_size(k, n): op(W) in pairs
  int64_t k, n;                       // op(W): [k, n]
  // w_: [N, K] if transpose_w else [K, N]
  DotGemm(const Bf16DotKernels& dot_, const at::Tensor& w_, bool transpose_w) : dot(dot_) {
    const at::Tensor w = w_.contiguous();
    k = transpose_w ? w.size(1) : w.size(0);
    n = transpose_w ? w.size(0) : w.size(1);
    panel.reset(new uint32_t[std::max<int64_t>(1, dot_panel_size(k, n))]);
    pack_dot_panel(dot, w.data_ptr<c10::BFloat16>(), transpose_w ? k : n, transpose_w, k, n,
                   panel.get());
  }
  void run(const c10::BFloat16* h, int64_t h_row, c10::BFloat16* out, int64_t out_row,
           int64_t rows, bool accumulate) const override {
    dot_gemm_on_panel(dot, h, h_row, rows, k, panel.get(), n, out, out_row, accumulate);
  }
};

}  // namespace

template <typename S>
std::unique_ptr<HiddenGemm<S>> hidden_gemm(const at::Tensor& w, bool transpose_w, int64_t rows,
                                           int64_t steps) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    if (const Bf16DotKernels* dot = bf16_dot_kernels()) {
      return std::make_unique<DotGemm>(*dot, w, transpose_w);
    }
  }
  if constexpr (std::is_same_v<S, c10::Half> || std::is_same_v<S, c10::BFloat16>) {
    return std::make_unique<ViaFloatGemm<S>>(w, transpose_w, rows, steps);
  }
  // MKL's packing (or the transposed copy) of a weight that only one step uses costs more than
  // it saves: it reads and writes all of W before the one GEMM reads it again (T=1, H=256,
  // training, 2 threads, one run, time without / with MKL's packing at B=32 and 128: RNN 0.83 /
  // 0.82, GRU 0.85 / 0.81, LSTM 0.97 / 0.89). The own kernel's packing into strips is a pass
  // over W as long as ~2 rows of its product, and the packed product beat ATen's mm on W as it
  // is at a single step too (AMD EPYC Zen 4, 2 threads, 2026-12-07, [B, 256] x W^T [256, 4H],
  // packing included / mm / (W h^T)^T, us: B=32 H=256 103 / 155 / 145, B=16 62 / 94 / 87, B=4
  // 28 / 58 / 47, B=32 H=512 372 / 643 / 549), so for float on the own kernel a single step of
  // min_prepared_rows() rows or more runs as a one-shot product (OneShotPackedGemm: op(W)
  // packed in the call, chunk by chunk where the rows are few, packed_products.cpp), forward
  // (h W^T) and backward (d_g W). Until 2026-12-07 the forward's step packed all of W first
  // (OwnPackedGemm: a fresh buffer of W's size per call) and the backward's ran ATen's mm on W
  // as it is: packing all of W's columns had made the backward's phase 2.5-3x as long (phase
  // clock, B=32 H=256, GRU 441-556 vs 161-174 us). With the chunks, T=1 training on the Zen 4
  // VM (per-step schedule, 12 interleaved rounds, new / old time): GRU H=512 B=32 0.96, B=128
  // 0.86; RNN H=512 B=32 0.94, B=128 0.91; inference 0.92-1.0.
  if constexpr (std::is_same_v<S, float>) {
    if (steps < 2 && own_packed_backend() && rows >= min_prepared_rows()) {
      return std::make_unique<OneShotPackedGemm>(transpose_w ? w.t() : w);
    }
  }
  if (steps < 2 || rows * steps < min_prepared_rows()) {
    return unprepared_gemm<S>(w, transpose_w, rows);
  }
  return prepared_gemm<S>(w, transpose_w, rows);
}
template std::unique_ptr<HiddenGemm<float>> hidden_gemm<float>(const at::Tensor&, bool, int64_t,
                                                               int64_t);
template std::unique_ptr<HiddenGemm<double>> hidden_gemm<double>(const at::Tensor&, bool,
                                                                 int64_t, int64_t);
template std::unique_ptr<HiddenGemm<c10::BFloat16>> hidden_gemm<c10::BFloat16>(
    const at::Tensor&, bool, int64_t, int64_t);
template std::unique_ptr<HiddenGemm<c10::Half>> hidden_gemm<c10::Half>(const at::Tensor&, bool,
                                                                       int64_t, int64_t);

std::string gemm_backend() {
  switch (static_cast<Backend>(backend().load())) {
    case Backend::kOwnPacked: return "own-packed";
    case Backend::kMklPacked: return "mkl-packed";
    default: return "aten";
  }
}

bool own_packed_backend() {
  return static_cast<Backend>(backend().load(std::memory_order_relaxed)) == Backend::kOwnPacked;
}

void set_gemm_backend(const std::string& name) {
  if (name == "aten") {
    backend() = static_cast<int>(Backend::kAten);
  } else if (name == "own-packed") {
    backend() = static_cast<int>(Backend::kOwnPacked);
  } else if (name == "mkl-packed") {
    TORCH_CHECK(mkl_packed_available(),
                "fused_rnn: gemm backend 'mkl-packed' is not available (torch has no MKL here)");
    backend() = static_cast<int>(Backend::kMklPacked);
  } else {
    TORCH_CHECK(false, "fused_rnn: unknown gemm backend '", name,
                "'; expected 'own-packed', 'mkl-packed' or 'aten'");
  }
}

int64_t min_prepared_rows() { return min_rows().load(); }

void set_min_prepared_rows(int64_t rows) {
  TORCH_CHECK(rows >= 0, "fused_rnn: min_prepared_rows must be >= 0, got ", rows);
  min_rows().store(rows);
}

// dW += d_g2d^T rows with the reduction over N = T*B rows summed the same way whatever the
// number of threads: dW in fixed tiles (for_tiles), each tile adding the products of fixed
// pieces of kWeightGradPiece rows one after the other (one single-threaded BLAS call per piece
// sums the piece's rows for the tile's elements).
constexpr int64_t kWeightGradPiece = 256;

void add_weight_grad(at::Tensor& dw, const at::Tensor& d_g2d, const at::Tensor& rows) {
  // dw: [G, K], d_g2d: [N, G], rows: [N, K]
  if (dw.scalar_type() == at::kFloat && packed_weight_grads(dw.size(0))) {
    packed_mm_into(dw, d_g2d.t(), rows, /*accumulate=*/true);
    return;
  }
  const int64_t N = d_g2d.size(0);
  for_tiles(dw.size(0), dw.size(1), kProductTileRows,
            [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
              at::Tensor o = dw.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
              for (int64_t n0 = 0; n0 < N; n0 += kWeightGradPiece) {
                const int64_t n = std::min(kWeightGradPiece, N - n0);
                o.addmm_(d_g2d.narrow(0, n0, n).narrow(1, r0, r1 - r0).t(),  // [r, n]
                         rows.narrow(0, n0, n).narrow(1, c0, c1 - c0));     // [n, c]
              }
            });
}

at::Tensor weight_grad(const at::Tensor& d_g2d, const at::Tensor& rows) {
  if (rows.scalar_type() == at::kFloat && packed_weight_grads(d_g2d.size(1))) {
    return packed_mm(d_g2d.t(), rows);  // dw: [G, K]
  }
  at::Tensor dw = at::zeros({d_g2d.size(1), rows.size(1)}, rows.options());  // dw: [G, K]
  add_weight_grad(dw, d_g2d, rows);
  return dw;
}

}  // namespace fused_rnn::cpu
