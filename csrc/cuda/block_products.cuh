// The per-step products of the persistent kernels (persistent_kernels.cuh): one block multiplies
// its resident weight slice W [R, K] with the staged rows X [nb, K] (h_prev in the forward,
// d_gates in the backward), out[b, r] = sum_k W[r, k] X[b, k]. Two ways:
//   block_matvec  CUDA cores, in the accumulation type (fp32 / fp64): the default.
//   block_mma     tensor cores (mma.sync, fp32 accumulators) on operands kept as stored: fp16 /
//                 bf16 (m16n8k16), or float32 as tf32 (m16n8k8) where torch allows TF32 in
//                 float32 matrix products. FUSED_RNN_PERSISTENT_PRODUCT=mma (see Tuning).
// Both sum in a fixed order: results are deterministic. ATen / c10 headers only.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace fused_rnn::cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// One butterfly stage of width kS over the first 2*kS partial sums, then the narrower stages.
template <int kS, typename A>
__device__ __forceinline__ void butterfly(A (&v)[32], int lane) {
  const bool upper = (lane & kS) != 0;
#pragma unroll
  for (int i = 0; i < kS; ++i) {
    const A send = upper ? v[i] : v[i + kS];
    const A keep = upper ? v[i + kS] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kS);
  }
  if constexpr (kS > 1) butterfly<kS / 2>(v, lane);
}

// v: 32 partial sums per lane. Returns, in lane l, the sum over all lanes of v[l].
template <typename A>
__device__ __forceinline__ A reduce_scatter32(A (&v)[32], int lane) {
  butterfly<16>(v, lane);
  return v[0];
}

// kVec consecutive elements of type A, 16-byte aligned when kVec * sizeof(A) == 16: one
// 128-bit shared-memory load.
template <typename A, int kVec>
struct alignas(kVec * sizeof(A)) Pack {
  A v[kVec];
};

// out[(b_base + b) * out_row + r] = sum_k W[r, k] X[b, k] for r < R, b < nb.
// W: [R, K], X: [nb, K] in shared memory; P: [kWarps * 32] shared scratch (K split over warps
// when there are fewer tiles than warps). kVec > 1: lanes read kVec consecutive k at once
// (needs K % kVec == 0 and W, X aligned to kVec elements). Ends with the block in step.
template <int kBW, int kVec, typename A>
__device__ void block_matvec(const A* W, int R, const A* X, int nb, int K, A* out, int out_row,
                             int b_base, A* P) {
  constexpr int kRW = 32 / kBW;
  using V = Pack<A, kVec>;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n_rg = (R + kRW - 1) / kRW, n_bg = (nb + kBW - 1) / kBW, n_tasks = n_rg * n_bg;
  const int split = n_tasks >= kWarps ? 1 : kWarps / n_tasks;
  constexpr int kSpan = 32 * kVec;  // elements of k one pass of the warp covers
  const int k_chunk = ((K + split - 1) / split + kSpan - 1) / kSpan * kSpan;
  for (int item = warp; item < n_tasks * split; item += kWarps) {
    const int task = item % n_tasks, part = item / n_tasks;
    const int r0 = (task % n_rg) * kRW, b0 = (task / n_rg) * kBW;
    const int k_end = min(K, (part + 1) * k_chunk);
    const A* w_rows[kRW];
    const A* x_rows[kBW];
#pragma unroll
    for (int i = 0; i < kRW; ++i) w_rows[i] = W + min(r0 + i, R - 1) * K;
#pragma unroll
    for (int jb = 0; jb < kBW; ++jb) x_rows[jb] = X + min(b0 + jb, nb - 1) * K;
    A acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = A(0);
    for (int k = part * k_chunk + lane * kVec; k < k_end; k += kSpan) {
      V w[kRW], x[kBW];
#pragma unroll
      for (int i = 0; i < kRW; ++i) w[i] = *reinterpret_cast<const V*>(w_rows[i] + k);
#pragma unroll
      for (int jb = 0; jb < kBW; ++jb) x[jb] = *reinterpret_cast<const V*>(x_rows[jb] + k);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
#pragma unroll
        for (int i = 0; i < kRW; ++i) {
#pragma unroll
          for (int jb = 0; jb < kBW; ++jb) acc[i * kBW + jb] += w[i].v[e] * x[jb].v[e];
        }
      }
    }
    const A v = reduce_scatter32(acc, lane);
    const int i = lane / kBW, jb = lane % kBW;
    if (split == 1) {
      if (r0 + i < R && b0 + jb < nb) out[(b_base + b0 + jb) * out_row + r0 + i] = v;
    } else {
      P[item * 32 + lane] = v;
    }
  }
  __syncthreads();
  if (split > 1) {
    for (int o = threadIdx.x; o < n_tasks * 32; o += kThreads) {
      const int task = o / 32, l = o % 32;
      A v(0);
      for (int part = 0; part < split; ++part) v += P[(part * n_tasks + task) * 32 + l];
      const int r0 = (task % n_rg) * kRW, b0 = (task / n_rg) * kBW, i = l / kBW, jb = l % kBW;
      if (r0 + i < R && b0 + jb < nb) out[(b_base + b0 + jb) * out_row + r0 + i] = v;
    }
    __syncthreads();
  }
}

// block_matvec with 128-bit loads where K allows it (W and X start at multiples of K elements
// from a 16-byte aligned base, so K % kVec == 0 aligns every row).
template <int kBW, typename A>
__device__ __forceinline__ void block_matvec_any(const A* W, int R, const A* X, int nb, int K,
                                                 A* out, int out_row, int b_base, A* P) {
  constexpr int kVec = 16 / sizeof(A);
  if (K % kVec == 0) {
    block_matvec<kBW, kVec>(W, R, X, nb, K, out, out_row, b_base, P);
  } else {
    block_matvec<kBW, 1>(W, R, X, nb, K, out, out_row, b_base, P);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor cores.
// ---------------------------------------------------------------------------------------------

// Elements per row of W and X in shared memory for a reduction length K (esize: bytes per
// element). CUDA cores: K. Tensor cores: K rounded up to 128 bytes plus 16 bytes, i.e. 32n + 4
// words: the 8 rows one fragment load touches (g = lane / 4 below) then start 4 banks apart and
// the 4 lanes of a row (t = lane % 4) fill them, so a warp's 32 loads hit 32 banks. The columns
// from K on are zero (the k loop runs to a multiple of 8 / 16); rows stay 16-byte aligned.
__host__ __device__ constexpr int row_stride(int K, int esize, bool mma) {
  return mma ? ((K * esize + 127) / 128 * 32 + 4) * 4 / esize : K;
}

// Rows of W in shared memory: the tensor cores take them 8 at a time (rows from R on are zero).
__host__ __device__ constexpr int padded_rows(int R, bool mma) {
  return mma ? (R + 7) / 8 * 8 : R;
}

// Partial sums per warp in the scratch P when the k range is split over warps.
__host__ __device__ constexpr int scratch_per_warp(bool mma) { return mma ? 512 : 32; }

// k per instruction: 16 for fp16 / bf16 (m16n8k16), 8 for tf32 (m16n8k8).
template <typename E>
__host__ __device__ constexpr int mma_k() {
  return sizeof(E) == 2 ? 16 : 8;
}

// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / mma.m16n8k8"), with
// g = lane / 4, t = lane % 4, for D [16, 8] += A [16, kK] B [kK, 8]. Here A is a tile of X (16
// batch rows, columns k) and B^T a tile of W (8 weight rows, columns k): both are read along k
// from row-major matrices.
//   fp16 / bf16  A regs (row, k): (g, 2t..2t+1) (g+8, 2t..) (g, 2t+8..) (g+8, 2t+8..)
//                B regs (k, col): (2t..2t+1, g) (2t+8.., g)
//   tf32         A regs: (g, t) (g+8, t) (g, t+4) (g+8, t+4);  B regs: (t, g) (t+4, g)
//   C / D        c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
__device__ __forceinline__ unsigned ld_pair(const void* p) {  // two 16-bit elements
  return *reinterpret_cast<const unsigned*>(p);
}

__device__ __forceinline__ unsigned to_tf32(float x) {
  unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
#elif defined(FUSED_RNN_WARP_EMULATION)  // tests/cuda_host_emulation.h (host)
  r = emulated_tf32(x);
#else
  __trap();
#endif
  return r;
}

// A: rows g and g+8 of the X tile (x0, x8); k: the tile's first column.
template <typename E>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const E* x0, const E* x8, int k, int t) {
  if constexpr (sizeof(E) == 2) {
    a[0] = ld_pair(x0 + k + 2 * t);
    a[1] = ld_pair(x8 + k + 2 * t);
    a[2] = ld_pair(x0 + k + 8 + 2 * t);
    a[3] = ld_pair(x8 + k + 8 + 2 * t);
  } else {  // X holds the staged float32 values: rounded to tf32 here
    a[0] = to_tf32(x0[k + t]);
    a[1] = to_tf32(x8[k + t]);
    a[2] = to_tf32(x0[k + t + 4]);
    a[3] = to_tf32(x8[k + t + 4]);
  }
}

// B: row g of the W tile (w); k: the tile's first column.
template <typename E>
__device__ __forceinline__ void load_b(unsigned (&b)[2], const E* w, int k, int t) {
  if constexpr (sizeof(E) == 2) {
    b[0] = ld_pair(w + k + 2 * t);
    b[1] = ld_pair(w + k + 8 + 2 * t);
  } else {  // W holds tf32 values already (rounded when the kernel loaded it)
    b[0] = __float_as_uint(w[k + t]);
    b[1] = __float_as_uint(w[k + t + 4]);
  }
}

// c += A B for one 16 x 8 tile.
template <typename E>
__device__ __forceinline__ void mma_16x8(float (&c)[4], const unsigned (&a)[4],
                                         const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<E, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<E, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<E, float>, "tensor-core products: fp16, bf16 or tf32");
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(FUSED_RNN_WARP_EMULATION)  // tests/cuda_host_emulation.h (host)
  emulated_mma<E>(c, a, b);
#else
  __trap();  // the host never picks tensor cores below sm_80
#endif
}

// out[(b_base + b) * out_row + r] = sum_k W[r, k] X[b, k] for r < R, b < nb, on tensor cores.
// W: [padded_rows(R), ld], X: [>= nb, ld] in shared memory (ld = row_stride(K, ...)), both zero
// from column K to ld and W also from row R on; P: [kWarps * 512] fp32 scratch. The batch rows are
// the instructions' M side (tiles of 16 rows of X, the rows past nb read as row nb - 1 and
// dropped) and the weight rows their N side (tiles of 8 rows of W): the weight slice, the larger
// array on chip, is padded to 8 rows only. A warp's task is one 16-row tile of X against up to
// kNT 8-row tiles of W (the A fragment, loaded once per k step, serves kNT instructions). With
// fewer tasks than warps the k steps are split over warps and the parts summed in a fixed order
// afterwards. Ends with the block in step.
template <typename E>
__device__ void block_mma(const E* W, int R, const E* X, int nb, int K, int ld, float* out,
                          int out_row, int b_base, float* P) {
  constexpr int kK = mma_k<E>(), kNT = 4, kTile = kNT * 128;  // kTile: C values of a task
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n_mt = (nb + 15) / 16, n_nt = (R + 7) / 8, n_ng = (n_nt + kNT - 1) / kNT;
  const int n_tasks = n_mt * n_ng, k_steps = (K + kK - 1) / kK;
  const int split = n_tasks >= kWarps ? 1 : max(1, min(kWarps / n_tasks, k_steps));
  const int chunk = (k_steps + split - 1) / split;  // k steps per part
  for (int item = warp; item < n_tasks * split; item += kWarps) {
    const int task = item % n_tasks, part = item / n_tasks;
    const int m0 = (task % n_mt) * 16, n0 = (task / n_mt) * kNT * 8;
    const int nts = min(kNT, (R - n0 + 7) / 8);  // W tiles of this task (warp-uniform)
    const E* x0 = X + min(m0 + g, nb - 1) * ld;
    const E* x8 = X + min(m0 + g + 8, nb - 1) * ld;
    const E* w[kNT];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) w[nt] = W + (n0 + min(nt, nts - 1) * 8 + g) * ld;
    float c[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.f;
    const int ks_end = min(k_steps, (part + 1) * chunk);
    for (int ks = part * chunk; ks < ks_end; ++ks) {
      const int k = ks * kK;
      unsigned a[4];
      load_a(a, x0, x8, k, t);
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        if (nt < nts) {
          unsigned b[2];
          load_b(b, w[nt], k, t);
          mma_16x8<E>(c[nt], a, b);
        }
      }
    }
    if (split == 1) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int n = m0 + g + (q >> 1) * 8, r = n0 + nt * 8 + 2 * t + (q & 1);
          if (nt < nts && r < R && n < nb) out[(b_base + n) * out_row + r] = c[nt][q];
        }
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int q = 0; q < 4; ++q) P[item * kTile + nt * 128 + lane * 4 + q] = c[nt][q];
      }
    }
  }
  __syncthreads();
  if (split > 1) {
    for (int o = threadIdx.x; o < n_tasks * kTile; o += kThreads) {
      const int task = o / kTile, rem = o - task * kTile;
      const int nt = rem / 128, l = (rem / 4) & 31, q = rem & 3;
      float v = 0.f;
      for (int part = 0; part < split; ++part) v += P[(part * n_tasks + task) * kTile + rem];
      const int n = (task % n_mt) * 16 + (l >> 2) + (q >> 1) * 8;
      const int r = (task / n_mt) * kNT * 8 + nt * 8 + 2 * (l & 3) + (q & 1);
      if (r < R && n < nb) out[(b_base + n) * out_row + r] = v;
    }
    __syncthreads();
  }
}

}  // namespace fused_rnn::cuda
