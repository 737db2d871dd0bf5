// Persistent CUDA kernels: the whole recurrence of one layer and direction (GRU, LSTM, Elman RNN)
// in ONE cooperative launch, with the recurrent weights resident in shared memory for all T
// steps and one grid-wide barrier per step.
//
// Work split: block k owns the hidden units j in [k*U, k*U + U) (U = ceil(H / #SMs)).
//   forward, per step:  gh[b, g, u] = sum_k W_hh[g*H + j, k] h_prev[b, k] for its units, all
//                       gates g, all rows b (the block keeps W_hh[g*H + j, :] on chip), then the
//                       cell's pointwise update of its units; barrier; the next step reads the
//                       whole h (all blocks' units) from L2.
//   backward, per step: the pointwise gate gradients of its units (d_gates written to global
//                       memory, where the weight-gradient GEMMs after the loop read them too);
//                       barrier; dh_prev[b, j] = sum_r d_gates[b, r] W_hh[r, j] for its units over
//                       all G*H rows r (the block keeps the columns W_hh[:, j] on chip). dh and
//                       (LSTM) dc of its units stay in shared memory from step to step.
// The products are warp-level: the 32 lanes split the reduction dimension, each lane keeps a
// 32 / kBW rows x kBW batch-rows tile of partial sums, and one butterfly (31 shuffles) leaves each
// lane one finished sum. Sums run in a fixed order: results are deterministic.
// The pointwise parts are step_elements.cuh's (gate formulas from gates.h), as on the general
// path. Reads of what other blocks wrote in this launch go through L2 (ld.global.cg).
// ATen / c10 headers only (no torch/extension.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "../path_choice.h"
#include "cuda_kernels.h"
#include "step_elements.cuh"

namespace fused_rnn::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Values of the forward that one backward element reads per step (see the backward kernel's
// input_ptr), by the number of gates: GRU 6, LSTM 7, RNN 2.
constexpr int backward_inputs_of(int gates) {
  return gates == 3 ? 6 : gates == 4 ? 7 : 2;
}

__device__ __forceinline__ int64_t step_time(int64_t s, int64_t T, bool reverse) {
  return reverse ? T - 1 - s : s;
}

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

// X[bb, k] = src[(b0 + bb) * row + k] for bb < nb, k < K, read through L2. Each thread has
// kBatch loads in flight before it stores (a step's latency is a few L2 round trips), walks its
// (row, column) position without divisions, and reads 16 bytes at a time where the rows allow.
template <typename S, typename A>
__device__ __forceinline__ void stage_rows(A* X, const S* src, int64_t row, int b0, int nb,
                                           int K) {
  constexpr int kBatch = 8;
  constexpr int kVec = 16 / sizeof(S);  // elements of S per 16-byte load
  const bool vec = K % kVec == 0 && row % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const int per_row = vec ? K / kVec : K;  // loads per row
  const int n = nb * per_row;
  for (int base = threadIdx.x; base < n; base += kThreads * kBatch) {
    int bb = base / per_row, c = base - bb * per_row;  // one division per batch
    int rows[kBatch], cols[kBatch];
    uint4 raw[kBatch];
    A one[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      rows[q] = bb;
      cols[q] = c;
      if (base + q * kThreads < n) {
        const S* p = src + static_cast<int64_t>(b0 + bb) * row;
        if (vec) {
          raw[q] = __ldcg(reinterpret_cast<const uint4*>(p) + c);
        } else {
          one[q] = L2Load::ld(p + c);
        }
      }
      c += kThreads;
      while (c >= per_row) {
        c -= per_row;
        ++bb;
      }
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      if (base + q * kThreads >= n) continue;
      if (vec) {
        S vals[kVec];
        memcpy(vals, &raw[q], 16);
        A* dst = X + rows[q] * K + cols[q] * kVec;
#pragma unroll
        for (int e = 0; e < kVec; ++e) dst[e] = static_cast<A>(vals[e]);
      } else {
        X[rows[q] * K + cols[q]] = one[q];
      }
    }
  }
}

// The raw bits of one S value, as the async copies leave them in shared memory.
template <typename S>
struct RawOf {
  using type = S;
};
template <>
struct RawOf<c10::Half> {
  using type = unsigned short;
};
template <>
struct RawOf<c10::BFloat16> {
  using type = unsigned short;
};

template <typename S>
__device__ __forceinline__ acc_t<S> from_raw(typename RawOf<S>::type v) {
  if constexpr (std::is_same_v<S, c10::Half> || std::is_same_v<S, c10::BFloat16>) {
    return static_cast<float>(S(v, S::from_bits()));
  } else {
    return v;
  }
}

// The barrier that ends every step. counter == nullptr: cooperative groups' grid.sync().
// Otherwise counter points at a zeroed word of this launch: each block adds 1 with release
// semantics once its writes of the step are done (the block barrier before it orders them),
// then waits with acquire loads until all blocks have added (target = steps done * blocks).
__device__ __forceinline__ void step_barrier(unsigned* counter, unsigned target) {
  if (counter == nullptr) {
    cg::this_grid().sync();
    return;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
    unsigned seen = 0;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (static_cast<int>(seen - target) < 0);
  }
  __syncthreads();
}

// Phase clock (FUSED_RNN_PERSISTENT_PROFILE=1), kept by thread 0 of block 0: SM clock cycles
// summed over all steps per phase: [0] staging (h_prev or d_gates rows into shared memory, up to
// the block barrier after it), [1] product, [2] pointwise (an extra block barrier ends it while
// profiling), [3] the step barrier (waiting for the slowest block); [4] the whole step loop in
// cycles and [5] in nanoseconds (%globaltimer). phases == nullptr: off.
constexpr int kPhases = 6;

struct PhaseClock {
  long long* phases;
  bool on;
  long long sum[4] = {0, 0, 0, 0}, mark = 0, begin = 0, begin_ns = 0;

  __device__ explicit PhaseClock(long long* out)
      : phases(out), on(out != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    if (on) {
      begin = mark = clock64();
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(begin_ns));
    }
  }
  // Ends phase i. The block barrier (while profiling: `phases` is the same for every thread)
  // makes thread 0's clock stand for the whole block.
  __device__ void lap(int i, bool block_barrier) {
    if (phases != nullptr && block_barrier) __syncthreads();
    if (on) {
      const long long now = clock64();
      sum[i] += now - mark;
      mark = now;
    }
  }
  __device__ void finish() {
    if (!on) return;
    long long end_ns;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(end_ns));
    for (int i = 0; i < 4; ++i) phases[i] = sum[i];
    phases[4] = clock64() - begin;
    phases[5] = end_ns - begin_ns;
  }
};

// Inputs fetched ahead go global -> shared memory by cp.async (4 bytes per copy): a block
// barrier waits for a thread's ordinary loads, not for these, so the next step's inputs are on
// their way while the block waits at the step barrier and stages h_prev (measured on the H200,
// run 4: loads into registers before the staging saved nothing). One slot per segment of
// `units` consecutive elements; a slot holds the 4-byte words that cover the segment (its first
// element starts (address & 3) bytes in). Words per slot, even so that slots stay 8-byte aligned.
template <typename S>
__host__ __device__ constexpr int slot_words(int units) {
  return ((units * static_cast<int>(sizeof(S)) + 3) / 4 + 2) & ~1;
}

// Bytes of the double-buffered slots of `segments` segments, rounded up to 16.
template <typename S>
__host__ __device__ constexpr int64_t slot_bytes(int64_t segments, int units) {
  return (2 * segments * slot_words<S>(units) * 4 + 15) / 16 * 16;
}

__device__ __forceinline__ void cp_async4(void* smem_dst, const void* src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}

// Starts the copy of segment `seg` (elements src[0 .. units)) into its slot of `buf`; called by
// every thread with its share of (segment, word) pairs, see fetch_segments.
template <typename S>
__device__ __forceinline__ void fetch_word(unsigned* buf, int seg, int word, int wps,
                                           const S* src, int units) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(src);
  const int words = (static_cast<int>(addr & 3) + units * static_cast<int>(sizeof(S)) + 3) / 4;
  if (word < words) {
    cp_async4(buf + seg * wps + word,
              reinterpret_cast<const void*>((addr & ~uintptr_t{3}) + 4 * word));
  }
}

// Element u of segment `seg` (first element at global address src) from its slot.
template <typename S>
__device__ __forceinline__ acc_t<S> slot_value(const unsigned* buf, int seg, int wps,
                                               const S* src, int u) {
  const char* at = reinterpret_cast<const char*>(buf + seg * wps) +
                   (reinterpret_cast<uintptr_t>(src) & 3) + u * sizeof(S);
  return from_raw<S>(*reinterpret_cast<const typename RawOf<S>::type*>(at));
}

// Shared memory: xs (slots of x_t W_ih^T, this step's and the next's: slot_bytes<S>(B*G, U)),
// then in elements of acc_t<S>: W [G*U, H], X [Bc, H], gh [B, G*U], P [kWarps*32],
// bias_x [G*U], bias_h [G*U], cs [B, U].
template <Cell kCell, int kBW, typename S>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_forward_kernel(RecurrenceForward<S> p, int U, int Bc, unsigned* barrier,
                              long long* phases) {
  using A = acc_t<S>;
  constexpr int G = gates_of(kCell);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch), R = G * U;
  const int wps = slot_words<S>(U);
  unsigned* xs = reinterpret_cast<unsigned*>(smem_raw);  // xs: [2][B*G][wps] words
  // W: [R, H], row g*U + u = W_hh[g*H + j0 + u, :]
  A* W = reinterpret_cast<A*>(smem_raw + slot_bytes<S>(B * G, U));
  A* X = W + R * H;                       // X: [Bc, H]  rows of h_prev
  A* gh = X + Bc * H;                     // gh: [B, R]  h_prev W_hh^T for this block's rows
  A* P = gh + B * R;                      // P: [kWarps * 32]
  A* bias_x = P + kWarps * 32;            // bias_x: [R]  added to x_t W_ih^T (GRU: b_ih;
                                          //   LSTM / RNN: b_ih + b_hh)
  A* bias_h = bias_x + R;                 // bias_h: [R]  GRU: b_hh, added to h_prev W_hh^T
  A* cs = bias_h + R;                     // cs: [B, U]  LSTM: this block's units' cell state
  const int j0 = blockIdx.x * U, units = min(U, H - j0);
  for (int idx = threadIdx.x; idx < R * H; idx += kThreads) {
    const int r = idx / H, k = idx - r * H, g = r / U, u = r - g * U;
    W[idx] = u < units ? static_cast<A>(p.w_hh[static_cast<int64_t>(g * H + j0 + u) * H + k])
                       : A(0);
  }
  for (int r = threadIdx.x; r < R; r += kThreads) {
    const int g = r / U, u = r - g * U;
    const int64_t i = static_cast<int64_t>(g) * H + j0 + u;
    bias_x[r] = u < units && p.b_ih ? static_cast<A>(p.b_ih[i]) : A(0);
    bias_h[r] = u < units && p.b_hh && kCell == Cell::kGru ? static_cast<A>(p.b_hh[i]) : A(0);
  }
  if constexpr (kCell == Cell::kLstm) {
    for (int e = threadIdx.x; e < B * U; e += kThreads) {
      const int b = e / U, u = e - b * U;
      cs[e] = u < units ? static_cast<A>(p.c0[static_cast<int64_t>(b) * H + j0 + u]) : A(0);
    }
  }
  const bool h_staged = Bc >= B;  // X holds all rows of h_prev after the staging
  const int n_el = B * units;     // pointwise elements of this block
  const int64_t T = p.steps;
  // segment (b, g) of step s: x_t[b, g*H + j0 .. + units)
  auto x_segment = [&](int64_t s, int seg) {
    const int b = seg / G, g = seg - b * G;
    return p.x + step_time(s, T, p.reverse) * p.x_step + b * p.x_row + g * H + j0;
  };
  auto fetch_inputs = [&](int64_t s) {  // into xs[s % 2]
    unsigned* buf = xs + (s & 1) * B * G * wps;
    for (int i = threadIdx.x; i < B * G * wps; i += kThreads) {
      const int seg = i / wps;
      fetch_word(buf, seg, i - seg * wps, wps, x_segment(s, seg), units);
    }
  };
  fetch_inputs(0);
  PhaseClock clock(phases);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_time(s, T, p.reverse);
    const S* h_prev = s == 0 ? p.h0 : p.out + step_time(s - 1, T, p.reverse) * p.out_step;
    const int64_t h_prev_row = s == 0 ? H : p.out_row;
    S* x_t = p.x + t * p.x_step;        // x_t: [B, G*H]
    S* out_t = p.out + t * p.out_step;  // out_t: [B, H]
    const unsigned* x_slots = xs + (s & 1) * B * G * wps;  // this step's x_t W_ih^T
    for (int b0 = 0; b0 < B; b0 += Bc) {
      const int nb = min(Bc, B - b0);
      __syncthreads();  // X is free
      stage_rows(X, h_prev, h_prev_row, b0, nb, H);
      if (b0 == 0) cp_async_wait_all();  // this step's slots (issued a step ago) have landed
      __syncthreads();
      clock.lap(0, false);
      block_matvec_any<kBW>(W, R, X, nb, H, gh, R, b0, P);
      clock.lap(1, false);  // block_matvec ends with a block barrier
    }
    // The cell's update of element (b, u) from its input projection xin[g].
    auto element = [&](int b, int u, const A(&xin)[G]) {
      const int64_t j = j0 + u;
      const A* g_b = gh + b * R;  // [G*U]
      const A hp = h_staged ? X[b * H + j] : L2Load::ld(h_prev + b * h_prev_row + j);
      if constexpr (kCell == Cell::kGru) {
        A gi[3], ghv[3];
#pragma unroll
        for (int g = 0; g < 3; ++g) {
          gi[g] = xin[g];
          if (p.b_ih) gi[g] += bias_x[g * U + u];
          ghv[g] = g_b[g * U + u];
          if (p.b_hh) ghv[g] += bias_h[g * U + u];
        }
        const GruForwardStep<S> q{B, H, x_t, p.x_row, nullptr, 0, p.b_ih, p.b_hh, h_prev,
                                  h_prev_row, out_t, p.out_row,
                                  p.saved ? p.saved + t * B * 4 * H : nullptr, 4 * H, t,
                                  p.lengths};
        gru_forward_values(q, b, j, gi[0], gi[1], gi[2], ghv[0], ghv[1], ghv[2], hp);
      } else if constexpr (kCell == Cell::kLstm) {
        auto cell_at = [&](int64_t step) {
          return p.cells + (p.cells_per_step ? step_time(step, T, p.reverse) : step % 2) * B * H;
        };
        A a[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          a[g] = xin[g] + g_b[g * U + u];
          if (p.b_ih) a[g] += bias_x[g * U + u];
        }
        const LstmForwardStep<S> q{B, H, x_t, p.x_row, p.b_ih, h_prev, h_prev_row,
                                   s == 0 ? p.c0 : cell_at(s - 1), H, cell_at(s), H, out_t,
                                   p.out_row, t, p.lengths};
        A& c = cs[b * U + u];  // kept as stored (rounded to S), as the general path reads it
        c = static_cast<A>(static_cast<S>(lstm_forward_values(q, b, j, a[0], a[1], a[2], a[3],
                                                              c, hp)));
      } else {
        A x = xin[0] + g_b[u];
        if (p.b_ih) x += bias_x[u];
        const RnnForwardStep<S> q{B, H, x_t, p.x_row, p.b_ih, h_prev, h_prev_row, out_t,
                                  p.out_row, kCell == Cell::kRnnRelu, t, p.lengths};
        rnn_forward_values<kCell == Cell::kRnnRelu>(q, b, j, x, hp);
      }
    };
    for (int e = threadIdx.x; e < n_el; e += kThreads) {
      const int b = e / units, u = e - b * units;
      A xin[G];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        xin[g] = slot_value(x_slots, b * G + g, wps, x_segment(s, b * G + g), u);
      }
      element(b, u, xin);
    }
    // the next step's inputs travel while this block waits at the barrier (other slot buffer)
    if (s + 1 < T) fetch_inputs(s + 1);
    clock.lap(2, true);
    // this step's h is complete and visible to every block
    step_barrier(barrier, static_cast<unsigned>(s + 1) * gridDim.x);
    clock.lap(3, false);
  }
  clock.finish();
}

// Shared memory: xs (slots of the forward's values an element reads, this step's and the next's:
// slot_bytes<S>(B*kIn, U)), then in elements of acc_t<S>: Wt [U, G*H], X [Bc, G*H], mv [B, U],
// dh [B, U], dc [B, U], P [kWarps*32].
template <Cell kCell, int kBW, typename S>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_backward_kernel(RecurrenceBackward<S> p, int U, int Bc, unsigned* barrier,
                               long long* phases) {
  using A = acc_t<S>;
  constexpr int G = gates_of(kCell);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch), K = G * H;
  constexpr int kIn = backward_inputs_of(G);  // see input_ptr
  unsigned* xs = reinterpret_cast<unsigned*>(smem_raw);  // xs: [2][B*kIn][slot_words] words
  // Wt: [U, K], row u = W_hh[:, j0 + u]
  A* Wt = reinterpret_cast<A*>(smem_raw + slot_bytes<S>(B * kIn, U));
  A* X = Wt + U * K;                       // X: [Bc, K]  rows of this step's d_gates
  A* mv = X + Bc * K;                      // mv: [B, U]  d_gates W_hh for this block's units
  A* dh = mv + B * U;                      // dh: [B, U]  running dL/dh
  A* dc = dh + B * U;                      // dc: [B, U]  running dL/dc (LSTM)
  A* P = dc + B * U;                       // P: [kWarps * 32]
  const int j0 = blockIdx.x * U, units = min(U, H - j0);
  for (int idx = threadIdx.x; idx < K * U; idx += kThreads) {  // consecutive threads: along j
    const int r = idx / U, u = idx - r * U;
    Wt[u * K + r] =
        u < units ? static_cast<A>(p.w_hh[static_cast<int64_t>(r) * H + j0 + u]) : A(0);
  }
  for (int e = threadIdx.x; e < B * U; e += kThreads) {
    const int b = e / U, u = e - b * U;
    const int64_t i = static_cast<int64_t>(b) * H + j0 + u;
    dh[e] = u < units ? static_cast<A>(p.dh[i]) : A(0);
    dc[e] = u < units && p.dc ? static_cast<A>(p.dc[i]) : A(0);
  }
  const int64_t T = p.steps;
  const int n_el = B * units;  // pointwise elements of this block
  // The forward's values that element (b, j0 + u) of step s reads, k < kIn: dL/d(output)
  // first, then GRU: h_prev, r, z, n, gh_n;  LSTM: i, f, g, o, c_prev, c;  RNN: h. Segment
  // (b, k) of step s: input k of units j0 .. j0 + units, starting at input_ptr(s, b, k).
  auto input_ptr = [&](int64_t s, int64_t b, int k) -> const S* {
    const int64_t t = step_time(s, T, p.reverse);
    if (k == 0) return p.grad_out + t * p.go_step + b * p.go_row + j0;
    if constexpr (kCell == Cell::kGru) {
      if (k == 1) return p.h_prev + t * p.hp_step + b * p.hp_row + j0;
      return p.saved + (t * B + b) * 4 * H + (k - 2) * H + j0;  // saved: [4H]
    } else if constexpr (kCell == Cell::kLstm) {
      if (k <= 4) return p.gates + t * p.g_step + b * p.g_row + (k - 1) * H + j0;  // [4H]
      if (k == 5) {
        return (s == 0 ? p.c0 : p.cells + step_time(s - 1, T, p.reverse) * B * H) + b * H + j0;
      }
      return p.cells + (t * B + b) * H + j0;
    } else {
      return p.out + t * p.out_step + b * p.out_row + j0;
    }
  };
  const int wps = slot_words<S>(U);
  auto fetch_inputs = [&](int64_t s) {  // into xs[s % 2]
    unsigned* buf = xs + (s & 1) * B * kIn * wps;
    for (int i = threadIdx.x; i < B * kIn * wps; i += kThreads) {
      const int seg = i / wps, b = seg / kIn;
      fetch_word(buf, seg, i - seg * wps, wps, input_ptr(s, b, seg - b * kIn), units);
    }
  };
  // The cell's gradients of element (b, u) of step s from its values v.
  auto element = [&](int64_t s, int b, int u, const A(&v)[kIn]) {
    const int64_t t = step_time(s, T, p.reverse);
    const int64_t j = j0 + u;
    A* dh_e = dh + b * U + u;
    if constexpr (kCell == Cell::kGru) {
      const GruBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                 p.h_prev + t * p.hp_step, p.hp_row, p.saved + t * B * 4 * H,
                                 4 * H, p.d_x + t * p.dx_step, p.dx_row,
                                 p.d_h + t * p.dh_step, p.dh_row, t, p.lengths};
      gru_backward_values(q, b, j, v[0], v[1], v[2], v[3], v[4], v[5], dh_e);
    } else if constexpr (kCell == Cell::kLstm) {
      const S* c_prev =
          s == 0 ? p.c0 : p.cells + step_time(s - 1, T, p.reverse) * B * H;  // [B, H]
      const LstmBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                  nullptr, p.gates + t * p.g_step, p.g_row, c_prev, H,
                                  p.cells + t * B * H, H, p.d_x + t * p.dx_step, p.dx_row,
                                  t, p.lengths};
      lstm_backward_values(q, b, j, v[0], v[1], v[2], v[3], v[4], v[5], v[6], dh_e,
                           dc + b * U + u);
    } else {
      const RnnBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                 p.out + t * p.out_step, p.out_row, p.d_x + t * p.dx_step,
                                 p.dx_row, kCell == Cell::kRnnRelu, t, p.lengths};
      rnn_backward_values<kCell == Cell::kRnnRelu>(q, b, j, v[0], v[1], dh_e);
    }
  };
  PhaseClock clock(phases);
  fetch_inputs(T - 1);
  for (int64_t s = T - 1; s >= 0; --s) {
    cp_async_wait_all();  // this step's slots (issued a step ago) have landed
    __syncthreads();      // dh, dc and the slots complete
    const int64_t t = step_time(s, T, p.reverse);
    const unsigned* slots = xs + (s & 1) * B * kIn * wps;
    for (int e = threadIdx.x; e < n_el; e += kThreads) {
      const int b = e / units, u = e - b * units;
      A v[kIn];
#pragma unroll
      for (int k = 0; k < kIn; ++k) {
        v[k] = slot_value(slots, b * kIn + k, wps, input_ptr(s, b, k), u);
      }
      element(s, b, u, v);
    }
    clock.lap(2, true);
    // this step's d_gates are complete and visible to every block
    step_barrier(barrier, static_cast<unsigned>(T - s) * gridDim.x);
    clock.lap(3, false);
    // the next step's values travel during this step's staging and product (other buffer)
    if (s > 0) fetch_inputs(s - 1);
    const S* d_h_t = p.d_h + t * p.dh_step;  // [B, K]
    for (int b0 = 0; b0 < B; b0 += Bc) {
      const int nb = min(Bc, B - b0);
      __syncthreads();  // X is free
      stage_rows(X, d_h_t, p.dh_row, b0, nb, K);
      __syncthreads();
      clock.lap(0, false);
      block_matvec_any<kBW>(Wt, U, X, nb, K, mv, U, b0, P);
      clock.lap(1, false);  // block_matvec ends with a block barrier
    }
    for (int e = threadIdx.x; e < B * U; e += kThreads) dh[e] += mv[e];
  }
  clock.finish();
  __syncthreads();
  for (int e = threadIdx.x; e < B * units; e += kThreads) {
    const int b = e / units, u = e - b * units;
    const int64_t i = static_cast<int64_t>(b) * H + j0 + u;
    p.dh[i] = static_cast<S>(dh[b * U + u]);
    if (p.dc) p.dc[i] = static_cast<S>(dc[b * U + u]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: plan (units per block, rows staged per pass, shared memory), choice, launch.
// ---------------------------------------------------------------------------------------------

struct Plan {
  int units = 0, staged_rows = 0, blocks = 0, bw = 1;
  size_t smem = 0;
};

struct DeviceLimits {
  int sms = 0;
  size_t smem_optin = 0;
  bool cooperative = false;
};

DeviceLimits device_limits() {
  int dev = 0, sms = 0, smem = 0, coop = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  return {sms, static_cast<size_t>(smem), coop != 0};
}

// Tuning settings of the persistent kernels, for measuring variants on a GPU (benchmarks/
// persistent_sweep.py); the defaults are what the measurements chose. Read from the environment
// at every launch:
//   FUSED_RNN_PERSISTENT_UNITS=n      at least n hidden units per block (fewer, busier blocks)
//   FUSED_RNN_PERSISTENT_BARRIER=grid|counter   the per-step barrier: cooperative groups'
//                                     grid.sync(), or one release-add / acquire-poll counter
//   FUSED_RNN_PERSISTENT_PROFILE=1    keep the phase clock of each launch (PhaseClock; read
//                                     with fused_rnn._C._persistent_profile); each launch then
//                                     waits for the kernel to finish
struct Tuning {
  int64_t min_units = 1;
  bool counter_barrier = false;
  bool profile = false;
};

Tuning tuning() {
  Tuning t;
  if (const char* env = std::getenv("FUSED_RNN_PERSISTENT_UNITS"); env && *env) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    TORCH_CHECK(*end == '\0' && v >= 1 && v <= 4096,
                "fused_rnn: FUSED_RNN_PERSISTENT_UNITS must be an integer in [1, 4096], got '",
                env, "'");
    t.min_units = v;
  }
  if (const char* env = std::getenv("FUSED_RNN_PERSISTENT_BARRIER"); env && *env) {
    const std::string v(env);
    TORCH_CHECK(v == "grid" || v == "counter",
                "fused_rnn: FUSED_RNN_PERSISTENT_BARRIER must be 'grid' or 'counter', got '", v,
                "'");
    t.counter_barrier = v == "counter";
  }
  if (const char* env = std::getenv("FUSED_RNN_PERSISTENT_PROFILE"); env && *env) {
    t.profile = std::string(env) != "0";
  }
  return t;
}

// The last profiled launch of each direction (forward 0, backward 1).
std::mutex profile_mutex;
std::vector<int64_t> last_profile[2];

// The plan for B rows, hidden size H, G gates, storage type S; false: does not fit.
template <typename S>
bool make_plan(int G, int64_t B, int64_t H, bool backward, const DeviceLimits& d,
               int64_t min_units, Plan& plan) {
  const size_t esize = sizeof(acc_t<S>);
  if (B < 1 || H < 1 || d.sms < 1 || !d.cooperative) return false;
  if (B > (1 << 16) || G * H * H >= (int64_t{1} << 31)) return false;
  const int64_t U = std::min(H, std::max((H + d.sms - 1) / d.sms, min_units));
  // slots of the inputs fetched ahead: forward x_t W_ih^T per gate; backward the forward's
  // values an element reads
  const int64_t segments = B * (backward ? backward_inputs_of(G) : G);
  const size_t slots = static_cast<size_t>(slot_bytes<S>(segments, static_cast<int>(U)));
  if (slots >= d.smem_optin) return false;
  const int64_t K = backward ? G * H : H;         // reduction length
  const int64_t R = backward ? U : G * U;         // rows of the resident weight slice
  // forward: gh [B, R], bias_x and bias_h [R], cs [B, U]; backward: mv, dh, dc [B, U]
  const int64_t per_batch = backward ? 3 * B * U : B * R + 2 * R + B * U;
  const int64_t fixed = R * K + per_batch + kWarps * 32;  // elements
  const size_t room = d.smem_optin - slots;                                // bytes
  if (static_cast<size_t>(fixed + K) * esize > room) return false;  // not even 1 row
  int64_t rows = static_cast<int64_t>((room / esize - fixed) / K);
  plan.bw = B >= 8 ? 8 : B >= 4 ? 4 : B >= 2 ? 2 : 1;
  rows = std::min<int64_t>(rows, B);
  if (rows < B && rows > plan.bw) rows -= rows % plan.bw;
  plan.units = static_cast<int>(U);
  plan.staged_rows = static_cast<int>(rows);
  plan.blocks = static_cast<int>((H + U - 1) / U);
  plan.smem = slots + static_cast<size_t>(fixed + rows * K) * esize;
  return true;
}

// auto: the persistent kernels while a step's multiply-adds G*B*H*H stay under a limit (and
// B <= kAutoMaxBatch). Their per-step products run on the CUDA cores, so beyond it the general
// path's cuBLAS GEMM per step is faster. Limits from the H200 measurements (T=256,
// benchmarks/persistent_kernel_notes.md, runs 3 and 4): the fp32 forward kernel was faster than
// the general path up to 2^27 (LSTM B=32 H=1024) and slower at 3*64*1024^2 (GRU B=64 H=1024);
// in bf16, whose cuBLAS GEMMs run on tensor cores, it won at 2^25 (LSTM B=32 H=512), tied at
// 3*64*512^2 (GRU B=64 H=512) and lost from 2^26 up (LSTM B=64 H=512: 4.03 vs 3.82 ms; GRU B=32
// H=1024: 4.80 vs 3.62 ms); the backward kernel, which also writes every step's gate gradients,
// was faster up to 2^25 (LSTM B=32 H=512) and even or slower from 3*64*512^2 (GRU B=64 H=512).
constexpr int64_t kAutoMaxBatch = 64;
constexpr int64_t kAutoMaxMacsForward = int64_t{1} << 27;
constexpr int64_t kAutoMaxMacsForwardHalf = int64_t{1} << 25;  // fp16 / bf16
constexpr int64_t kAutoMaxMacsBackward = int64_t{1} << 25;

bool want_persistent(int G, int64_t B, int64_t H, bool fits, bool backward, bool half) {
  switch (cuda_path()) {
    case CudaPath::kGeneral: return false;
    case CudaPath::kPersistent:
      TORCH_CHECK(fits, "fused_rnn: the persistent CUDA kernel cannot run this ",
                  backward ? "backward" : "forward",
                  " (its recurrent weights and batch do not fit on the chip); use "
                  "fused_rnn.set_cuda_path('auto') or 'general'");
      return true;
    default: {
      const int64_t limit = backward ? kAutoMaxMacsBackward
                            : half   ? kAutoMaxMacsForwardHalf
                                     : kAutoMaxMacsForward;
      return fits && B <= kAutoMaxBatch && G * B * H * H <= limit;
    }
  }
}

template <typename Kernel, typename Params>
void launch_cooperative(Kernel kernel, const Params& p, const Plan& plan, const DeviceLimits& d,
                        const Tuning& tune, bool backward) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.smem)));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                               plan.smem));
  TORCH_CHECK(per_sm * d.sms >= plan.blocks, "fused_rnn: persistent kernel needs ",
              std::to_string(plan.blocks), " co-resident blocks, the device holds ",
              std::to_string(per_sm * d.sms));  // integers as strings: see checks.h, num()
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // counter: one zeroed word for the counter barrier. Freed to the caching allocator when this
  // function returns: it reuses the block only for work queued after the kernel on this stream.
  c10::DataPtr counter, clock;
  if (tune.counter_barrier) {
    counter = at::cuda::getCUDADeviceAllocator()->allocate(sizeof(unsigned));
    C10_CUDA_CHECK(cudaMemsetAsync(counter.get(), 0, sizeof(unsigned), stream));
  }
  if (tune.profile) clock = at::cuda::getCUDADeviceAllocator()->allocate(kPhases * 8);
  Params params = p;
  int units = plan.units, rows = plan.staged_rows;
  unsigned* barrier = static_cast<unsigned*>(counter.get());
  long long* phases = static_cast<long long*>(clock.get());
  void* args[] = {&params, &units, &rows, &barrier, &phases};
  C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                             dim3(plan.blocks), dim3(kThreads), args, plan.smem,
                                             stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (tune.profile) {
    long long host[kPhases];
    C10_CUDA_CHECK(cudaMemcpyAsync(host, phases, sizeof(host), cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    int dev = 0, khz = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
    const std::lock_guard<std::mutex> lock(profile_mutex);
    last_profile[backward] = {host[0], host[1], host[2],  host[3],     host[4],
                              host[5], p.steps, p.batch, p.hidden, plan.blocks,
                              plan.units, plan.staged_rows, khz};
  }
}

template <Cell kCell, typename S, typename Params, template <Cell, int, typename> class Pick>
void launch_for_bw(const Params& p, const Plan& plan, const DeviceLimits& d, const Tuning& tune,
                   bool backward) {
  switch (plan.bw) {
    case 8: return launch_cooperative(Pick<kCell, 8, S>::kernel(), p, plan, d, tune, backward);
    case 4: return launch_cooperative(Pick<kCell, 4, S>::kernel(), p, plan, d, tune, backward);
    case 2: return launch_cooperative(Pick<kCell, 2, S>::kernel(), p, plan, d, tune, backward);
    default: return launch_cooperative(Pick<kCell, 1, S>::kernel(), p, plan, d, tune, backward);
  }
}

template <Cell kCell, int kBW, typename S>
struct ForwardKernel {
  static auto kernel() { return &recurrence_forward_kernel<kCell, kBW, S>; }
};
template <Cell kCell, int kBW, typename S>
struct BackwardKernel {
  static auto kernel() { return &recurrence_backward_kernel<kCell, kBW, S>; }
};

template <typename S, typename Params, template <Cell, int, typename> class Pick>
void launch_for_cell(Cell cell, const Params& p, const Plan& plan, const DeviceLimits& d,
                     const Tuning& t, bool backward) {
  switch (cell) {
    case Cell::kGru: return launch_for_bw<Cell::kGru, S, Params, Pick>(p, plan, d, t, backward);
    case Cell::kLstm: return launch_for_bw<Cell::kLstm, S, Params, Pick>(p, plan, d, t, backward);
    case Cell::kRnnTanh:
      return launch_for_bw<Cell::kRnnTanh, S, Params, Pick>(p, plan, d, t, backward);
    case Cell::kRnnRelu:
      return launch_for_bw<Cell::kRnnRelu, S, Params, Pick>(p, plan, d, t, backward);
  }
}

// The whole recurrence on the persistent kernel when the path setting and the shapes allow it;
// false: the caller runs the general path.
template <typename S, typename Params, template <Cell, int, typename> class Pick>
bool run_recurrence(const Params& p, bool backward) {
  if (cuda_path() == CudaPath::kGeneral || p.steps == 0 || p.batch == 0) return false;
  const DeviceLimits d = device_limits();
  const Tuning tune = tuning();
  const int G = gates_of(p.cell);
  Plan plan;
  const bool fits =
      make_plan<S>(G, p.batch, p.hidden, backward, d, tune.min_units, plan);
  if (!want_persistent(G, p.batch, p.hidden, fits, backward, sizeof(S) == 2)) return false;
  launch_for_cell<S, Params, Pick>(p.cell, p, plan, d, tune, backward);
  return true;
}

}  // namespace

std::vector<int64_t> persistent_profile(bool backward) {
  const std::lock_guard<std::mutex> lock(profile_mutex);
  return last_profile[backward];
}

template <typename S>
bool recurrence_forward(const RecurrenceForward<S>& p) {
  return run_recurrence<S, RecurrenceForward<S>, ForwardKernel>(p, /*backward=*/false);
}

template <typename S>
bool recurrence_backward(const RecurrenceBackward<S>& p) {
  return run_recurrence<S, RecurrenceBackward<S>, BackwardKernel>(p, /*backward=*/true);
}

#define FUSED_RNN_INSTANTIATE(S)                                          \
  template bool recurrence_forward<S>(const RecurrenceForward<S>&); \
  template bool recurrence_backward<S>(const RecurrenceBackward<S>&);
FUSED_RNN_INSTANTIATE(float)
FUSED_RNN_INSTANTIATE(double)
FUSED_RNN_INSTANTIATE(c10::Half)
FUSED_RNN_INSTANTIATE(c10::BFloat16)
#undef FUSED_RNN_INSTANTIATE

}  // namespace fused_rnn::cuda
