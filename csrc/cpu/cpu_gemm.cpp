// CPU per-step hidden GEMMs. With MKL (x86 builds of torch) the weight is packed once per call
// with cblas_sgemm_pack and every step runs cblas_sgemm_compute on it: no per-step repacking of
// W and no transposed copy. MKL's symbols are declared weak: where torch has no MKL (or for
// float64, which has no packed API) the weight is transposed once into a contiguous buffer and
// ATen's mm runs each step (MKL/OpenBLAS run a plain B much faster than a transposed view
// when B has few rows). Both preparations cost a pass over W per call (packing a 3 MB W_hh:
// ~1 ms here); a call with fewer than min_prepared_rows() rows over all its steps, or with a
// single step, runs ATen's mm on W as it is.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>

#include "cpu_kernels.h"

extern "C" {
// MKL CBLAS packed-GEMM API (LP64: MKL_INT = int; enums are ints).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace fused_rnn::cpu {

// For 16-63 float rows MKL's multi-threaded GEMM against the transposed view of a weight ran up
// to 2x slower than the same product as (W x^T)^T plus a transposed copy (2 threads, rows
// 16-48, W: [256-1024, 256]: 41-335 vs 68-523 us; from 64 rows the plain call was as fast or
// faster); it seems to split the few rows over the threads, each packing all of W. Used by
// the input projection (rnn_driver.h project_rows) and SwappedGemm below.
bool swapped_product(int64_t rows) { return rows >= 16 && rows < 64; }

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

bool mkl_packed_available() {
  return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
}

struct MklPackedGemm final : HiddenGemm<float> {
  at::Tensor packed;  // MKL's opaque packed form of op(W), bytes
  int n, k;

  // w_: [N, K] if transpose_w else [K, N]; rows: the M (= B) of the steps to come
  MklPackedGemm(const at::Tensor& w_, bool transpose_w, int64_t rows) {
    const at::Tensor w = w_.contiguous();
    n = static_cast<int>(transpose_w ? w.size(0) : w.size(1));
    k = static_cast<int>(transpose_w ? w.size(1) : w.size(0));
    const int m = static_cast<int>(std::max<int64_t>(1, rows));
    const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, m, n, k);
    packed = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
    cblas_sgemm_pack(kRowMajor, kBMatrix, transpose_w ? kTrans : kNoTrans, m, n, k, 1.0f,
                     w.data_ptr<float>(), static_cast<int>(w.size(1)),
                     reinterpret_cast<float*>(packed.data_ptr()));
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
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(rows), n, k, h,
                        static_cast<int>(std::max<int64_t>(k, h_row)),
                        reinterpret_cast<const float*>(packed.data_ptr()), n,
                        accumulate ? 1.0f : 0.0f, out,
                        static_cast<int>(std::max<int64_t>(n, out_row)));
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
  if (!transpose_w) return std::make_unique<AtenHiddenGemm<S>>(w_);
  const at::Tensor w = w_.contiguous();
  at::Tensor w_t = at::empty({w.size(1), w.size(0)}, w.options());
  transpose(w.data_ptr<S>(), w.size(0), w.size(1), w_t.data_ptr<S>());
  return std::make_unique<AtenHiddenGemm<S>>(w_t);
}

bool& mkl_enabled() {
  static bool enabled = true;
  return enabled;
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

// out (+)= h w^T computed as (w h^T)^T, for the row counts of swapped_product.
struct SwappedGemm final : HiddenGemm<float> {
  at::Tensor w;  // w: [N, K]
  explicit SwappedGemm(at::Tensor w_) : w(std::move(w_)) {}
  void run(const float* h, int64_t h_row, float* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0) return;
    const int64_t N = w.size(0), K = w.size(1);
    const at::Tensor h_t = at::for_blob(const_cast<float*>(h), {rows, K})  // h_t: [rows, K]
                               .strides({h_row, 1}).options(w.options()).make_tensor();
    at::Tensor out_t = at::for_blob(out, {rows, N})                        // out_t: [rows, N]
                           .strides({out_row, 1}).options(w.options()).make_tensor();
    const at::Tensor product = at::mm(w, h_t.t());  // product: [N, rows]
    if (accumulate) {
      out_t.add_(product.t());
    } else {
      out_t.copy_(product.t());
    }
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
  return std::make_unique<AtenHiddenGemm<S>>(transpose_w ? w.t() : w);
}

// W prepared once for the call: MKL's packed form for float where torch has MKL, else a
// contiguous op(W).
template <typename S>
std::unique_ptr<HiddenGemm<S>> prepared_gemm(const at::Tensor& w, bool transpose_w,
                                             int64_t rows) {
  if constexpr (std::is_same_v<S, float>) {
    if (mkl_enabled() && mkl_packed_available() && w.numel() > 0 && w.size(0) < INT_MAX &&
        w.size(1) < INT_MAX && rows < INT_MAX) {
      return std::make_unique<MklPackedGemm>(w, transpose_w, rows);
    }
  }
  return aten_gemm<S>(w, transpose_w);
}

}  // namespace

template <typename S>
std::unique_ptr<HiddenGemm<S>> hidden_gemm(const at::Tensor& w, bool transpose_w, int64_t rows,
                                           int64_t steps) {
  // A weight that only one step uses is never prepared: packing reads and writes all of W
  // before the one GEMM reads it again (T=1, H=256, training, 2 threads, one run, time without
  // / with packing at B=32 and 128: RNN 0.83 / 0.82, GRU 0.85 / 0.81, LSTM 0.97 / 0.89).
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

std::string gemm_backend() {
  return mkl_enabled() && mkl_packed_available() ? "mkl-packed" : "aten";
}

void set_gemm_backend(const std::string& name) {
  if (name == "aten") {
    mkl_enabled() = false;
  } else if (name == "mkl-packed") {
    TORCH_CHECK(mkl_packed_available(),
                "fused_rnn: gemm backend 'mkl-packed' is not available (torch has no MKL here)");
    mkl_enabled() = true;
  } else {
    TORCH_CHECK(false, "fused_rnn: unknown gemm backend '", name, "'; expected 'mkl-packed' or 'aten'");
  }
}

int64_t min_prepared_rows() { return min_rows().load(); }

void set_min_prepared_rows(int64_t rows) {
  TORCH_CHECK(rows >= 0, "fused_rnn: min_prepared_rows must be >= 0, got ", rows);
  min_rows().store(rows);
}

// dW += d_g2d^T rows with the reduction over N = T*B rows summed the same way whatever the
// number of threads. BLAS libraries split a long reduction over their threads (MKL does so from
// ~1000 rows here), which changes the order of the sums with the thread count; so the reduction
// runs as fixed pieces of rows added into dW one after the other. MKL spreads a 256-row piece
// over dW's rows and columns only when dW has at least 2 rows and 2 columns, a 64-row piece
// always (checked with 1-8 threads, float32 and float64, dW up to [4096, 1024]).
static int64_t weight_grad_piece(const at::Tensor& d_g2d, const at::Tensor& rows) {
  return d_g2d.size(1) >= 2 && rows.size(1) >= 2 ? 256 : 64;
}

void add_weight_grad(at::Tensor& dw, const at::Tensor& d_g2d, const at::Tensor& rows) {
  const int64_t N = d_g2d.size(0);
  const int64_t piece = weight_grad_piece(d_g2d, rows);
  for (int64_t n0 = 0; n0 < N; n0 += piece) {
    const int64_t n = std::min(piece, N - n0);
    dw.addmm_(d_g2d.narrow(0, n0, n).t(), rows.narrow(0, n0, n));
  }
}

at::Tensor weight_grad(const at::Tensor& d_g2d, const at::Tensor& rows) {
  const int64_t N = d_g2d.size(0);
  const int64_t piece = weight_grad_piece(d_g2d, rows);
  at::Tensor dw = at::mm(d_g2d.narrow(0, 0, std::min(piece, N)).t(),
                         rows.narrow(0, 0, std::min(piece, N)));  // dw: [G, K]
  if (N > piece) {
    add_weight_grad(dw, d_g2d.narrow(0, piece, N - piece), rows.narrow(0, piece, N - piece));
  }
  return dw;
}

}  // namespace fused_rnn::cpu
