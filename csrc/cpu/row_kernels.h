// The CPU pointwise step kernels, compiled once per instruction set (csrc/cpu/row_kernels.cpp
// is built as DEFAULT, and where setup.py could, as AVX2 and AVX512) and chosen at run time.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "../step_params.h"
#include "bf16_dot.h"

namespace fused_rnn::cpu {

// Each function handles the batch rows [b_begin, b_end) of one step; the GRU / LSTM / RNN
// kernels only the hidden units [j_begin, j_end) of those rows (their columns in every gate).
template <typename Step>
using UnitRowKernel = void (*)(const Step&, int64_t b_begin, int64_t b_end, int64_t j_begin,
                               int64_t j_end);

// The packed lane weights (RowKernels::lane_pack): float for float, bfloat16 and float16 weights
// (the type the products accumulate in), double for double; each gate's units padded to a
// multiple of kLanePanelUnits (so that no SIMD vector spans two gates, whatever the instruction
// set).
template <typename scalar_t>
using lane_panel_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
constexpr int64_t kLanePanelUnits = 16;
// A gate's columns in a panel: `units` rounded up to whole strips.
constexpr int64_t lane_padded_units(int64_t units) {
  return (units + kLanePanelUnits - 1) / kLanePanelUnits * kLanePanelUnits;
}
// Elements of a lane's panel of `gates` gates of `units` units over K inputs.
constexpr int64_t lane_panel_size(int64_t gates, int64_t units, int64_t K) {
  return K * gates * lane_padded_units(units);
}
// Where the strip holding panel column `column` (a multiple of kLanePanelUnits for a strip's
// start) begins in a panel over K inputs: strips of K x kLanePanelUnits, one after the other.
constexpr int64_t lane_strip_offset(int64_t column, int64_t K) {
  return column / kLanePanelUnits * K * kLanePanelUnits;
}

template <typename scalar_t>
struct RowKernels {
  UnitRowKernel<GruForwardStep<scalar_t>> gru_forward;
  UnitRowKernel<GruBackwardStep<scalar_t>> gru_backward;
  UnitRowKernel<LstmForwardStep<scalar_t>> lstm_forward;
  UnitRowKernel<LstmBackwardStep<scalar_t>> lstm_backward;
  UnitRowKernel<RnnForwardStep<scalar_t>> rnn_forward;
  UnitRowKernel<RnnBackwardStep<scalar_t>> rnn_backward;
  void (*gru_textbook_gates)(const GruTextbookGatesStep<scalar_t>&, int64_t, int64_t);
  void (*gru_textbook_state)(const GruTextbookStateStep<scalar_t>&, int64_t, int64_t);
  void (*gru_textbook_state_back)(const GruTextbookStateBackStep<scalar_t>&, int64_t, int64_t);
  void (*gru_textbook_gates_back)(const GruTextbookGatesBackStep<scalar_t>&, int64_t, int64_t);
  // out[j] = sum over the rows of m: [rows, *] (row stride row_stride) of column j, for the
  // columns [c_begin, c_end): the bias gradients (cpu::bias_grad).
  void (*column_sums)(const scalar_t* m, int64_t rows, int64_t row_stride, int64_t c_begin,
                      int64_t c_end, scalar_t* out);
  // The hidden GEMM of one lane (a slice of the hidden units, csrc/cpu/cpu_recurrence.cpp):
  //   out[b, g * out_gate + j] (+)= sum_k h[b, k] * w[g * w_gate + j * K + k]
  // for rows b < rows, gates g < gates, units j < units: w points at the lane's first row of
  // W_hh: [G*H, K] (w_gate = H * K), read in place. h: [rows, K] (row stride h_row); out: row
  // stride out_row. Each output element is summed the same way (vector partial sums over k in
  // order, then a fixed reduction tree) whatever the lane, rows or thread count.
  void (*lane_gemm)(const scalar_t* h, int64_t h_row, int64_t rows, int64_t K,
                    const scalar_t* w, int64_t w_gate, int64_t gates, int64_t units,
                    scalar_t* out, int64_t out_row, int64_t out_gate, bool accumulate);
  // The backward's hidden GEMM of one lane (units [u0, u0 + units)):
  //   out[b, j] (+)= sum_n d[b, n] * w[n * w_row + j]
  // for rows b < rows, n < N (= G*H), j < units: w points at column u0 of W_hh: [G*H, H]
  // (w_row = H), read in place; d: [rows, N] (row stride d_row); out: row stride out_row.
  // Each output element is summed over n in order, one fused multiply-add per n, from zero
  // (then added to out when accumulate): the same bits whatever the lanes or thread count.
  void (*lane_gemm_t)(const scalar_t* d, int64_t d_row, int64_t rows, int64_t N,
                      const scalar_t* w, int64_t w_row, int64_t units, scalar_t* out,
                      int64_t out_row, bool accumulate);
  // A lane's rows of W_hh (as lane_gemm reads them: w at its first row of gate 0, gates w_gate
  // apart, units rows of K each) transposed into k-major strips of kLanePanelUnits (U) columns
  // for lane_gemm_packed: column c = g * up + j of the lane (up = units rounded up to U; the
  // padding zero) is
  //   panel[(c / U * K + k) * U + c % U] = w[g * w_gate + j * K + k]
  // (a strip is read from start to end by every step: one page after the other; columns a row
  // of gates * up apart put each k on its own page at H=1024). lane_panel_size(gates, units, K)
  // elements.
  void (*lane_pack)(const scalar_t* w, int64_t w_gate, int64_t gates, int64_t units, int64_t K,
                    lane_panel_t<scalar_t>* panel);
  // The columns [0, units) of w's N rows (row stride w_row; w at the lane's first column of
  // W_hh: lane_gemm_t's weights) in strips of kLanePanelUnits (U) columns, for lane_gemm_packed
  // with gates = 1 and K = N: panel[(j / U * N + n) * U + j % U] = w[n * w_row + j] (the padding
  // zero); lane_panel_size(1, units, N) elements.
  void (*lane_pack_columns)(const scalar_t* w, int64_t w_row, int64_t N, int64_t units,
                            lane_panel_t<scalar_t>* panel);
  // lane_gemm's product from the packed panel, as outer products (a broadcast of h[b, k] times
  // vectors of the panel's row k; no horizontal sums, 1.3x lane_gemm's rate at 4-16 rows):
  //   out[b, g * out_gate + j] (+)= sum_k h[b, k] * (column g * up + j of the panel at k)
  // Each output element is summed over k in order, one fused multiply-add per k, from zero
  // (then added to out when accumulate): the same bits whatever the lanes or thread count.
  void (*lane_gemm_packed)(const scalar_t* h, int64_t h_row, int64_t rows, int64_t K,
                           const lane_panel_t<scalar_t>* panel, int64_t gates, int64_t units,
                           scalar_t* out, int64_t out_row, int64_t out_gate, bool accumulate);
  // A product on a panel of one gate (lane_pack or lane_pack_columns with cols columns):
  //   out[r * out_row + j] (+)= sum_k a[r * a_row + k * a_k] * (column j of the panel at k)
  // for r < rows, j < cols; each element summed over k in order from zero, as lane_gemm_packed
  // (the same bits), in chunks of rows and, where a is strided along k, of k (row_kernels.cpp
  // gemm_packed_blocked). The CPU's one-shot float32 products (cpu::packed_mm) and the
  // own-packed hidden GEMM (cpu::gemm_on_panel).
  void (*gemm_packed)(const scalar_t* a, int64_t a_row, int64_t a_k, int64_t rows, int64_t K,
                      const lane_panel_t<scalar_t>* panel, int64_t cols, scalar_t* out,
                      int64_t out_row, bool accumulate);
};

struct IsaKernels {
  const char* name;  // "DEFAULT", "AVX2", "AVX512", "AVX512_BF16"
  RowKernels<float> f32;
  RowKernels<double> f64;
  RowKernels<c10::BFloat16> bf16;
  RowKernels<c10::Half> f16;
  // The bfloat16 products on AVX512_BF16's dot products (bf16_dot.h); null: bfloat16 products
  // in float32. Set only in the AVX512_BF16 build (cpu_kernels.cpp: AVX512's row kernels).
  const Bf16DotKernels* bf16_dot;
};

extern const IsaKernels kIsaKernelsDEFAULT;
#if defined(FUSED_RNN_CPU_AVX2)
extern const IsaKernels kIsaKernelsAVX2;
#endif
#if defined(FUSED_RNN_CPU_AVX512)
extern const IsaKernels kIsaKernelsAVX512;
#endif

}  // namespace fused_rnn::cpu
