// The bfloat16 dot-product kernels (bf16_dot.h): compiled only by setup.py's AVX512_BF16 build
// (-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16), never by the portable one, and
// called only where the CPU has AVX512_BF16 (cpu_kernels.cpp).
#if !defined(__AVX512BF16__) || !defined(__AVX512BW__)
#error "bf16_dot_kernels.cpp needs -mavx512bf16 -mavx512bw (setup.py's AVX512_BF16 build)"
#endif

// GCC 12's AVX-512 intrinsics read _mm512_undefined_*() values (-Wuninitialized false positives)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "bf16_dot.h"
#include "transpose_16x16.h"

namespace fused_rnn::cpu {
namespace {

constexpr int64_t U = kDotStripColumns;
// A tile: up to kTileRows rows of a times up to kTileStrips strips of the panel (24 float32
// accumulators, 3 weight vectors and a broadcast in AVX512's 32 registers), as the float32
// outer-product kernel (row_kernels.cpp, kOuterRows).
constexpr int kTileRows = 8;
constexpr int kTileStrips = static_cast<int>(kDotTileStrips);
// Rows of a run over all the column blocks before the next rows (they stay in L2 meanwhile).
constexpr int64_t kChunkRows = 128;

inline __m512bh as_pairs(__m512i v) { return (__m512bh)v; }  // the same 512 bits

__mmask16 first_columns(int64_t n) {
  return n >= U ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// float32 -> bfloat16 bits: nearest, ties to even; NaN -> 0x7FC0 (c10::BFloat16's rounding, so
// that these products round as at::Tensor::to does).
inline __m256i round_to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

inline __m512 widen(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Where a strip's columns go: row 0 of its out columns, and how many of its 16 columns are real.
struct StripOut {
  uint16_t* dst;
  int64_t count;
};

// Where a tile's rows of a are: rows a_row elements apart, each with its pairs adjacent (a
// row-major a), or (kPackedA) the pair panel of a^T, the tile's 8 rows (at most) within one
// strip of 16: row r's pair p the uint32 at a + p * U + r.
// Rows a[0, R) times NV strips of the panel (strip c at panel + c * strip) -> the strips' outputs
// (rows out_row apart).
template <int R, int NV, bool kPackedA>
void dot_tile(const uint16_t* a, int64_t a_row, int64_t K, const uint32_t* panel, int64_t strip,
              const StripOut* outs, int64_t out_row, bool accumulate) {
  const auto* a_pairs = reinterpret_cast<const uint32_t*>(a);  // kPackedA
  // The tile's output lines, requested now, arrive while it multiplies (each strip's 16 outputs
  // span at most two lines). Without it a product whose output was not in the core's cache (the
  // input projection's [T*B, G] rows, the gates a step adds to) waited for each line at the
  // stores: one thread, [4480, 256] x W^T [256, 1024], 250 -> 381 GF/s (at::mm 350), 21
  // interleaved rounds; bfloat16 LSTM B=128 inference 0.67 -> 0.81x nn.LSTM, GRU 1.69 -> 1.88x
  // (the Zen 5 VM, 2026-12-07; prefetchw instead: level).
  for (int c = 0; c < NV; ++c) {
    for (int r = 0; r < R; ++r) {
      const char* dst = reinterpret_cast<const char*>(outs[c].dst + r * out_row);
      __builtin_prefetch(dst, 1, 3);
      __builtin_prefetch(dst + (U * sizeof(uint16_t) - 1), 1, 3);
    }
  }
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  // pairs with both rows of op(W) present (a's panel holds the last, half-empty one as a pair)
  const int64_t whole = kPackedA ? dot_pairs(K) : K / 2;
  for (int64_t p = 0; p < whole; ++p) {
    __m512bh w[NV];
    for (int c = 0; c < NV; ++c) w[c] = as_pairs(_mm512_loadu_si512(panel + c * strip + p * U));
    for (int r = 0; r < R; ++r) {
      uint32_t pair;  // a[r, 2p] (low), a[r, 2p + 1] (high)
      if constexpr (kPackedA) {
        pair = a_pairs[p * U + r];
      } else {
        std::memcpy(&pair, a + r * a_row + 2 * p, sizeof(pair));
      }
      const __m512bh x = as_pairs(_mm512_set1_epi32(static_cast<int>(pair)));
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, w[c]);
    }
  }
  if (!kPackedA && K % 2 != 0) {  // the last pair: a[r, K - 1] and zero (not past the row)
    __m512bh w[NV];
    for (int c = 0; c < NV; ++c) {
      w[c] = as_pairs(_mm512_loadu_si512(panel + c * strip + whole * U));
    }
    for (int r = 0; r < R; ++r) {
      const __m512bh x = as_pairs(_mm512_set1_epi32(static_cast<int>(a[r * a_row + K - 1])));
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], x, w[c]);
    }
  }
  for (int c = 0; c < NV; ++c) {
    const __mmask16 mask = first_columns(outs[c].count);
    for (int r = 0; r < R; ++r) {
      uint16_t* dst = outs[c].dst + r * out_row;
      __m512 v = acc[r][c];
      if (accumulate) v = _mm512_add_ps(widen(_mm256_maskz_loadu_epi16(mask, dst)), v);
      _mm256_mask_storeu_epi16(dst, mask, round_to_bf16(v));
    }
  }
}

using TileFn = void (*)(const uint16_t*, int64_t, int64_t, const uint32_t*, int64_t,
                        const StripOut*, int64_t, bool);

template <bool kPackedA, int R, int... NV>
constexpr std::array<TileFn, sizeof...(NV)> tiles_of_height(std::integer_sequence<int, NV...>) {
  return {&dot_tile<R, NV + 1, kPackedA>...};
}
template <bool kPackedA, int... R>
constexpr std::array<std::array<TileFn, kTileStrips>, sizeof...(R)> all_tiles(
    std::integer_sequence<int, R...>) {
  return {tiles_of_height<kPackedA, R + 1>(std::make_integer_sequence<int, kTileStrips>{})...};
}
// kTiles<kPackedA>[R - 1][NV - 1]: the tile of R rows and NV strips.
template <bool kPackedA>
constexpr auto kTiles = all_tiles<kPackedA>(std::make_integer_sequence<int, kTileRows>{});

// a: [rows, K] times the panel's `strips` strips; strip_out(v) -> StripOut of strip v for row 0:
// chunks of kChunkRows rows, in each the column blocks of kTileStrips strips, in each the row
// tiles. kPackedA: a is the pair panel of a^T and these are its rows from a_row0 on (a multiple
// of kTileRows: every tile's rows in one strip of the panel); else rows a_row elements apart.
template <bool kPackedA = false, typename F>
void run_strips(const uint16_t* a, int64_t a_row, int64_t rows, int64_t K, const uint32_t* panel,
                int64_t strips, const F& strip_out, int64_t out_row, bool accumulate,
                int64_t a_row0 = 0) {
  const auto rows_from = [&](int64_t r) {  // where row r's pairs start
    if constexpr (kPackedA) {
      const int64_t row = a_row0 + r;
      return a + 2 * (dot_strip_offset(row / U * U, K) + row % U);  // uint16 units
    } else {
      return a + r * a_row;
    }
  };
  const int64_t strip = dot_pairs(K) * U;
  for (int64_t m0 = 0; m0 < rows; m0 += kChunkRows) {
    const int64_t m1 = std::min(rows, m0 + kChunkRows);
    for (int64_t v = 0; v < strips; v += kTileStrips) {
      const int64_t nv = std::min<int64_t>(kTileStrips, strips - v);
      StripOut outs[kTileStrips];
      for (int64_t c = 0; c < nv; ++c) outs[c] = strip_out(v + c);
      for (int64_t r = m0; r < m1; r += kTileRows) {
        const int64_t nr = std::min<int64_t>(kTileRows, m1 - r);
        StripOut at_r[kTileStrips];
        for (int64_t c = 0; c < nv; ++c) at_r[c] = {outs[c].dst + r * out_row, outs[c].count};
        kTiles<kPackedA>[nr - 1][nv - 1](rows_from(r), a_row, K, panel + v * strip, strip,
                                         at_r, out_row, accumulate);
      }
    }
  }
}

void gemm(const c10::BFloat16* a, int64_t a_row, int64_t rows, int64_t K, const uint32_t* panel,
          int64_t cols, c10::BFloat16* out_, int64_t out_row, bool accumulate) {
  // a: [rows, K], panel: op(W) [K, cols] as pairs, out: [rows, cols]
  auto* out = reinterpret_cast<uint16_t*>(out_);
  run_strips(reinterpret_cast<const uint16_t*>(a), a_row, rows, K, panel, (cols + U - 1) / U,
             [&](int64_t v) { return StripOut{out + v * U, std::min(U, cols - v * U)}; },
             out_row, accumulate);
}

void gemm_packed_a(const uint32_t* a_panel, int64_t row0, int64_t rows, int64_t K,
                   const uint32_t* panel, int64_t cols, c10::BFloat16* out_, int64_t out_row,
                   bool accumulate) {
  // a_panel: the pair panel of a^T ([K, *]); a's rows row0 .. row0 + rows; panel: op(W) [K, cols]
  // as pairs, out: [rows, cols]
  auto* out = reinterpret_cast<uint16_t*>(out_);
  run_strips<true>(reinterpret_cast<const uint16_t*>(a_panel), 0, rows, K, panel,
                   (cols + U - 1) / U,
                   [&](int64_t v) { return StripOut{out + v * U, std::min(U, cols - v * U)}; },
                   out_row, accumulate, row0);
}

void gemm_gates(const c10::BFloat16* a, int64_t a_row, int64_t rows, int64_t K,
                const uint32_t* panel, int64_t gates, int64_t units, c10::BFloat16* out_,
                int64_t out_row, int64_t out_gate, bool accumulate) {
  // a: [rows, K], panel: `gates` gates of `units` columns, each padded to whole strips; gate g's
  // column j -> out[r, g * out_gate + j]
  auto* out = reinterpret_cast<uint16_t*>(out_);
  const int64_t per_gate = (units + U - 1) / U;  // strips
  run_strips(reinterpret_cast<const uint16_t*>(a), a_row, rows, K, panel, gates * per_gate,
             [&](int64_t v) {
               const int64_t g = v / per_gate, j = v % per_gate * U;
               return StripOut{out + g * out_gate + j, std::min(U, units - j)};
             },
             out_row, accumulate);
}

void pack_columns(const c10::BFloat16* w_, int64_t w_row, int64_t K, int64_t cols,
                  uint32_t* panel) {
  // w: [K, cols] (rows w_row apart)
  const auto* w = reinterpret_cast<const uint16_t*>(w_);
  const int64_t pairs = dot_pairs(K);
  for (int64_t c0 = 0; c0 < cols; c0 += U) {
    const __mmask16 mask = first_columns(cols - c0);
    uint32_t* dst = panel + dot_strip_offset(c0, K);
    for (int64_t p = 0; p < pairs; ++p) {
      const uint16_t* even = w + 2 * p * w_row + c0;
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, even));
      const __m512i hi = 2 * p + 1 < K
          ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, even + w_row))
          : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + p * U, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

void pack_rows(const c10::BFloat16* w_, int64_t w_row, int64_t cols, int64_t K, uint32_t* panel) {
  // w: [cols, K] (rows w_row apart): column j of op(W) is row j of w, its pairs adjacent
  const auto* w = reinterpret_cast<const uint16_t*>(w_);
  const int64_t pairs = dot_pairs(K), whole = K / 2;
  // Blocks of 16 columns x 16 pairs whole in w (rows an even number of elements apart, so that
  // every pair is a 32-bit element of a row): transposed in registers. On one Zen 5 core a
  // 1-row product on a [1024, 256] weight's W^T view, packing included, took 19.5 us this way vs
  // 54-61 us element by element (the Zen 5 VM, 2026-12-07).
  const int64_t vector_pairs = w_row % 2 == 0 ? whole / U * U : 0;
  for (int64_t c0 = 0; c0 < cols; c0 += U) {
    uint32_t* dst = panel + dot_strip_offset(c0, K);
    const int64_t first_scalar = c0 + U <= cols ? vector_pairs : 0;
    for (int64_t p0 = 0; p0 < first_scalar; p0 += U) {
      transpose_16x16(reinterpret_cast<const float*>(w + c0 * w_row + 2 * p0), w_row / 2,
                      reinterpret_cast<float*>(dst + p0 * U), U);
    }
    for (int64_t j = 0; j < U; ++j) {
      if (c0 + j >= cols) {
        for (int64_t p = 0; p < pairs; ++p) dst[p * U + j] = 0;
        continue;
      }
      const uint16_t* row = w + (c0 + j) * w_row;
      for (int64_t p = first_scalar; p < whole; ++p) {
        std::memcpy(dst + p * U + j, row + 2 * p, sizeof(uint32_t));
      }
      if (whole < pairs) dst[whole * U + j] = row[K - 1];
    }
  }
}

}  // namespace

extern const Bf16DotKernels kBf16DotKernels = {&pack_rows, &pack_columns, &gemm, &gemm_gates,
                                               &gemm_packed_a};

}  // namespace fused_rnn::cpu
