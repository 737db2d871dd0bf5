// CPU side of the step kernels: picks the instruction-set build of csrc/cpu/row_kernels.cpp at
// run time and spreads the batch rows of a step over the intra-op threads.
#pragma once

#include <string>
#include <vector>

#include "../hidden_gemm.h"
#include "../step_params.h"
#include "row_kernels.h"

namespace fused_rnn::cpu {

template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

// Rows per tile of the per-step hidden GEMMs on a BLAS ("mkl-packed", "aten"): such a product
// runs as fixed tiles of its output (kTileRows rows from row 0, columns in equal parts of at
// most 256), one single-threaded BLAS call per tile, the tiles spread over the threads
// (csrc/cpu/cpu_gemm.cpp): the same bits whatever the thread count, and the row blocks (which
// start at multiples of kTileRows) run the same tiles as the per-step schedule. The own kernel
// ("own-packed") needs no fixed tiles: each of its elements is one sum over k in order.
constexpr int64_t kTileRows = 8;

// The per-step hidden GEMM (see hidden_gemm.h) of a call with `steps` steps of `rows` rows:
// from min_prepared_rows() rows in all on, for float the library's own kernel on W packed into
// strips ("own-packed", the default) or MKL's packed GEMM ("mkl-packed", where torch has MKL),
// else ATen's mm on a contiguous copy of op(W) ("aten"); below, and for a single step except
// on the own kernel (a one-shot packed product from min_prepared_rows() rows), ATen's mm on W
// as it is (preparing W costs more than it saves there). The BLAS ones in fixed tiles (kTileRows); the own kernel's bits do not depend
// on how a step is split (gemm_on_panel).
template <typename scalar_t>
std::unique_ptr<HiddenGemm<scalar_t>> hidden_gemm(const at::Tensor& w, bool transpose_w,
                                                  int64_t rows, int64_t steps);
std::string gemm_backend();                     // "own-packed", "mkl-packed" or "aten"
// Whether the back end is "own-packed": then the one-shot float32 products (packed_products)
// and auto's limits (cpu_recurrence.cpp) follow the library's kernel too, so that one setting
// switches between the two complete rule sets for an A/B on the same machine.
bool own_packed_backend();
void set_gemm_backend(const std::string& name);  // for tests and benchmarks
int64_t min_prepared_rows();
void set_min_prepared_rows(int64_t rows);  // for tests and benchmarks

// The pointwise row kernels of the instruction-set build in use.
template <typename scalar_t>
const RowKernels<scalar_t>& row_kernels();

// How a GRU / LSTM / RNN recurrence runs on the CPU (process-wide setting; also
// FUSED_RNN_CPU_SCHEDULE at import), csrc/cpu/cpu_recurrence.cpp:
//   "per-step"    every step spread over all threads: the GEMM's columns, then the pointwise
//                 kernel's rows (two fork-joins per step)
//   "row-blocks"  each thread runs all steps for its own block of batch rows (blocks of whole
//                 kTileRows-row tiles; one block when B <= kTileRows or one thread)
//   "lanes"       each thread owns a slice of the hidden units ("lane") and reads its part of
//                 W_hh in place every step (it stays in its core's cache), one barrier per
//                 step. Forward: its units' gates for all rows, then their new state;
//                 backward: its units' gate gradients, the barrier, then its columns of
//                 d_h W_hh. No weight packing per call.
//   "auto"        on the own packed GEMM (the default): lanes for float32 batches of up to 8
//                 rows from H=128 (1 below; any thread count: a lane's results do not depend
//                 on the lanes; cpu_recurrence.cpp, max_lane_rows), and where the rows of all
//                 steps (B * T) are fewer than min_prepared_rows(); lanes for bfloat16 on
//                 the dot products (AVX512_BF16) up to 16 rows at H=128-511, 4 from 512
//                 (max_dot_lane_rows); else row blocks for
//                 float32 where every thread gets a kTileRows-row tile, the sequence has at
//                 least 8 steps and W_hh fits a core's L2 cache; else per-step. On "mkl-packed":
//                 lanes up to 1 / 2 / 8 / 16 rows (H < 128 / 256 / 512 / from 512), row blocks
//                 where every thread gets >= 16 rows and a row's step GEMM has
//                 gates * H * H <= 2^16 multiply-adds, else per-step
// The GRU textbook form and the projected LSTM always run per step.
enum class CpuSchedule : int { kAuto = 0, kPerStep = 1, kRowBlocks = 2, kLanes = 3 };
std::string cpu_schedule();
void set_cpu_schedule(const std::string& name);  // raises on an unknown name

// First batch rows of the row blocks a recurrence of B rows, hidden size H, `gates` gates
// (GRU 3, LSTM 4, RNN 1) and `steps` steps would run in now (and B at the end); empty: the
// per-step schedule. In auto: float32 on the own packed GEMM, and bfloat16 on the dot
// products (AVX512_BF16).
// Blocks are whole tiles of kTileRows rows (the last one may be partial), so that they run the
// hidden GEMM's tiles of the per-step schedule.
std::vector<int64_t> row_blocks(int64_t B, int64_t H, int64_t gates, at::ScalarType dtype,
                                int64_t steps);

// First hidden units of the lanes a recurrence of B rows, hidden size H and `steps` steps
// would run in now (and H at the end): multiples of kLaneUnits, one lane per thread at most;
// empty: not lanes. In auto: float32, and bfloat16 on the dot products (AVX512_BF16).
std::vector<int64_t> lanes(int64_t B, int64_t H, at::ScalarType dtype, int64_t steps);
// The L2 cache of a core (sysconf; 1 MB where it does not say).
int64_t l2_cache_bytes();
// Whether this is an Intel CPU (cpuid's vendor): there the weight gradients stay on MKL
// (packed_weight_grads; measured on a Sapphire Rapids Xeon, 2026-12-06).
bool intel_cpu();

// The one-shot float32 products on the library's own kernel (csrc/cpu/packed_products.cpp):
// out: [M, N] (+)= a: [M, K] b: [K, N], bit-identical whatever the thread count; for products of
// at least packed_products(M) rows.
bool packed_products(int64_t rows);
// The weight gradients (long reductions over T*B rows) on that kernel too: off Intel CPUs.
bool packed_weight_grads(int64_t rows);
// Products of fewer rows than this pack their right operand chunk by chunk (the same bits).
int64_t packed_chunk_rows();
void set_packed_chunk_rows(int64_t rows);  // for tests and benchmarks
void packed_mm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate);
at::Tensor packed_mm(const at::Tensor& a, const at::Tensor& b);
// out: [rows, N] (+)= a: [rows, K] (row stride a_row) times op(W): [K, N] packed in strips
// (lane_pack / lane_pack_columns): column parts over the threads, then row parts.
void gemm_on_panel(const float* a, int64_t a_row, int64_t rows, int64_t K, const float* panel,
                   int64_t N, float* out, int64_t out_row, bool accumulate);

// Whether a lanes recurrence of B rows and T steps packs its lane's weights for the outer-product
// kernel (forward), and where its lanes have `units` units of G gates (backward).
bool lane_forward_packs(int64_t B, int64_t T);
bool lane_backward_packs(int64_t B, int64_t T, int64_t H, int64_t G, int64_t units);

// The row-blocks and lanes schedules (StepKernels::recurrence_*): false where the per-step one
// runs.
template <typename scalar_t>
bool recurrence_forward(const RecurrenceForward<scalar_t>& p);
template <typename scalar_t>
bool recurrence_backward(const RecurrenceBackward<scalar_t>& p);

// Bias gradient: d_g2d: [N, G] (unit column stride) summed over its rows -> [G]; columns split
// over threads, each column summed in row order (bit-identical whatever the thread count).
at::Tensor bias_grad(const at::Tensor& d_g2d);

// The bfloat16 dot-product kernels of the build in use (AVX512_BF16), or null: bfloat16 products
// then run in float32 (rnn_driver.h cpu_via_float).
const Bf16DotKernels* bf16_dot_kernels();
// out: [M, N] = a: [M, K] b: [K, N], bfloat16, on those kernels (packed_products.cpp): b packed
// into pair panels per call, column parts over the threads, then row parts; bit-identical
// whatever the thread count.
at::Tensor bf16_dot_mm(const Bf16DotKernels& dot, const at::Tensor& a, const at::Tensor& b);
// op(W): [K, N] into its pair panel (dot_panel_size(K, N)), strips spread over the threads:
// op(W) = w^T for w: [N, K] (transposed) or w: [K, N], rows w_row apart (packed_products.cpp).
void pack_dot_panel(const Bf16DotKernels& dot, const c10::BFloat16* w, int64_t w_row,
                    bool transposed, int64_t K, int64_t N, uint32_t* panel);
// out: [rows, N] (+)= a: [rows, K] (row stride a_row) times op(W): [K, N] in a pair panel,
// split as gemm_on_panel.
void dot_gemm_on_panel(const Bf16DotKernels& dot, const c10::BFloat16* a, int64_t a_row,
                       int64_t rows, int64_t K, const uint32_t* panel, int64_t N,
                       c10::BFloat16* out, int64_t out_row, bool accumulate);

// Name of the instruction-set build in use ("DEFAULT", "AVX2", "AVX512", "AVX512_BF16").
std::string active_isa();
// The builds compiled into this binary that this CPU can run, best last.
std::vector<std::string> available_isas();
// Choose a build by name (case-insensitive); errors if it is not available here.
void set_isa(const std::string& name);

}  // namespace fused_rnn::cpu
