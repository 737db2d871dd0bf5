// bfloat16 products on the dot-product instruction of AVX512_BF16 (vdpbf16ps: 16 float32 sums
// each += two bfloat16 products per instruction, twice the multiply-adds of a float32 FMA).
// csrc/cpu/bf16_dot_kernels.cpp is compiled only by setup.py's AVX512_BF16 build (its own -m
// flags) and used only where the CPU has the instruction (cpu_kernels.cpp: the build
// "AVX512_BF16", the AVX512 row kernels plus these). Elsewhere, and under
// set_cpu_isa("AVX512"), bfloat16 products run in float32 on float32 copies (rnn_driver.h
// cpu_via_float).
//
// Measured on one Zen 4 core (the 2-core development VM, 2026-12-07; a standalone loop of 8 x 3
// tiles over packed panels, hot caches): [512, 256] x [256, 1056] 200 GF/s with vdpbf16ps vs
// 105 with float32 FMAs on the same panels in float32; [128, 512] x [512, 2064] 210 vs 109.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace fused_rnn::cpu {

// A pair panel of op(W): [K, N] (bfloat16): strips of kDotStripColumns columns, one after the
// other; in a strip, for each pair p < (K + 1) / 2 of rows of op(W), 16 uint32, column j's
// holding op(W)[2p, j] in its low half and op(W)[2p + 1, j] in its high half (zero past K and
// past N).
constexpr int64_t kDotStripColumns = 16;
// Strips of the kernel's register tile (Bf16DotKernels::gemm: 8 rows x 3 strips).
constexpr int64_t kDotTileStrips = 3;
constexpr int64_t dot_pairs(int64_t K) { return (K + 1) / 2; }
// uint32 elements of the pair panel of an op(W) of K rows and N columns.
constexpr int64_t dot_panel_size(int64_t K, int64_t N) {
  return dot_pairs(K) * ((N + kDotStripColumns - 1) / kDotStripColumns * kDotStripColumns);
}
// Where the strip holding column `column` (a multiple of kDotStripColumns) starts.
constexpr int64_t dot_strip_offset(int64_t column, int64_t K) {
  return column / kDotStripColumns * dot_pairs(K) * kDotStripColumns;
}

struct Bf16DotKernels {
  // Columns [0, cols) of op(W) = w^T, w: [cols, K] with rows w_row apart (unit stride along K):
  // the transposed view of a weight [N, K].
  void (*pack_rows)(const c10::BFloat16* w, int64_t w_row, int64_t cols, int64_t K,
                    uint32_t* panel);
  // Columns [0, cols) of op(W) = w, w: [K, cols] with rows w_row apart (unit column stride).
  void (*pack_columns)(const c10::BFloat16* w, int64_t w_row, int64_t K, int64_t cols,
                       uint32_t* panel);
  // out[r, j] = round(sum over the pairs p of op(W) in order, from zero, of the dot products
  // a[r, 2p] op(W)[2p, j] + a[r, 2p + 1] op(W)[2p + 1, j] (one vdpbf16ps per pair) (+ out[r, j]
  // in float32 when accumulate)) for r < rows, j < cols: a: [rows, K] (rows a_row apart, unit
  // stride along K), panel: a pair panel of cols columns (or a strip-aligned part of one), out:
  // [rows, cols] (rows out_row apart), rounded to bfloat16 once, as at::Tensor::to rounds
  // (nearest, ties to even). Each element's bits depend only on its row of a and its column of
  // op(W): not on rows, cols, tiles or threads. The instruction treats denormal inputs and
  // results as zero (no float32 path does).
  void (*gemm)(const c10::BFloat16* a, int64_t a_row, int64_t rows, int64_t K,
               const uint32_t* panel, int64_t cols, c10::BFloat16* out, int64_t out_row,
               bool accumulate);
  // gemm on a panel of `gates` gates of `units` columns each, every gate's columns padded to
  // whole strips (gate g from column g * up, up = units rounded up to kDotStripColumns), gate
  // g's column j written to out[r, g * out_gate + j]: all gates in one pass over a (the lanes'
  // products). The same bits as gemm per gate.
  void (*gemm_gates)(const c10::BFloat16* a, int64_t a_row, int64_t rows, int64_t K,
                     const uint32_t* panel, int64_t gates, int64_t units, c10::BFloat16* out,
                     int64_t out_row, int64_t out_gate, bool accumulate);
  // gemm with a given as the pair panel of a^T ([K, *], as pack_rows / pack_columns pack an
  // op(W)), its rows row0 .. row0 + rows (row0 a multiple of 8): for an a strided along K (the
  // weight gradients' d_g^T), packed once instead of copied row-major. The same bits as gemm.
  void (*gemm_packed_a)(const uint32_t* a_panel, int64_t row0, int64_t rows, int64_t K,
                        const uint32_t* panel, int64_t cols, c10::BFloat16* out, int64_t out_row,
                        bool accumulate);
};

#if defined(FUSED_RNN_CPU_AVX512_BF16)
extern const Bf16DotKernels kBf16DotKernels;
#endif

}  // namespace fused_rnn::cpu
