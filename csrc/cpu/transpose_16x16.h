// A 16 x 16 transpose of 32-bit elements in AVX-512 registers, for the panel packing of
// row_kernels.cpp (float weights into strips, its AVX512 build) and bf16_dot_kernels.cpp
// (bfloat16 pairs, one uint32 each, into pair panels). Defined only where the translation unit
// is compiled for AVX-512, with internal linkage: each build has its own copy, and no copy
// compiled for AVX-512 can stand in for another build's.
#pragma once

#if defined(__AVX512F__)
// GCC 12's AVX-512 intrinsics read _mm512_undefined_*() values (-Wuninitialized false positives)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>

namespace fused_rnn::cpu {
namespace {

// dst[c * ld_dst + r] = src[r * ld_src + c] for r, c < 16 (elements of 32 bits; src and dst as
// float for the shuffles, any 32-bit data bit for bit): unpacks of 32 and 64 bits, then two
// rounds of 128-bit lane shuffles.
inline void transpose_16x16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane l: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  const auto lo = [](__m512 x, __m512 y) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
  };
  const auto hi = [](__m512 x, __m512 y) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
  };
  for (int i = 0; i < 16; i += 4) {  // r[i + c], lane l: column 4l + c of rows i .. i + 3
    r[i] = lo(t[i], t[i + 2]);
    r[i + 1] = hi(t[i], t[i + 2]);
    r[i + 2] = lo(t[i + 1], t[i + 3]);
    r[i + 3] = hi(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // lanes (0, 2) and (1, 3) of row groups (0, 1) and (2, 3)
    t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {  // column 4l + c: lane l of the four row groups
    _mm512_storeu_ps(dst + c * ld_dst, _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88));
    _mm512_storeu_ps(dst + (8 + c) * ld_dst, _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd));
    _mm512_storeu_ps(dst + (4 + c) * ld_dst, _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88));
    _mm512_storeu_ps(dst + (12 + c) * ld_dst, _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xdd));
  }
}

}  // namespace
}  // namespace fused_rnn::cpu
#endif  // __AVX512F__
