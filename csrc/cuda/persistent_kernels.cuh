// Persistent CUDA kernels: the whole recurrence of one layer and direction (GRU, LSTM, Elman RNN)
// in ONE cooperative launch, with the recurrent weights resident in shared memory for all T
// steps and one grid-wide barrier per step (or, in cluster mode, independent thread-block
// clusters that each hold the weights and a share of the batch rows, with one cluster barrier
// per step: BlockShare; or no barrier at all, the rows exchanged as step-tagged words that
// their readers poll: kTaggedExchange). Tuning lists the variants (barrier, products, staging,
// exchange) and their settings.
//
// Work split: block k owns the hidden units j in [k*U, k*U + U) (U = ceil(H / #SMs); cluster
// mode: U = ceil(H / blocks per cluster), k = the block's rank in its cluster).
//   forward, per step:  gh[b, g, u] = sum_k W_hh[g*H + j, k] h_prev[b, k] for its units, all
//                       gates g, all rows b (the block keeps W_hh[g*H + j, :] on chip), then the
//                       cell's pointwise update of its units; barrier; the next step reads the
//                       whole h (all blocks' units) from L2.
//   backward, per step: the pointwise gate gradients of its units (d_gates written to global
//                       memory, where the weight-gradient GEMMs after the loop read them too);
//                       barrier; dh_prev[b, j] = sum_r d_gates[b, r] W_hh[r, j] for its units over
//                       all G*H rows r (the block keeps the columns W_hh[:, j] on chip). dh and
//                       (LSTM) dc of its units stay in shared memory from step to step.
// The products are block_products.cuh's: on CUDA cores by default (warp-level: the 32 lanes split
// the reduction dimension, each lane keeps a 32 / kBW rows x kBW batch-rows tile of partial sums,
// and one butterfly (31 shuffles) leaves each lane one finished sum), or on tensor cores
// (FUSED_RNN_PERSISTENT_PRODUCT=mma: kernels with kMma, W and X kept as stored). Sums run in a
// fixed order: results are deterministic.
// The pointwise parts are step_elements.cuh's (gate formulas from gates.h), as on the general
// path. Reads of what other blocks wrote in this launch go through L2 (ld.global.cg).
// Compiled as four translation units, one per storage type (persistent_<type>.cu instantiate
// recurrence_forward / recurrence_backward), so that nvcc builds them in parallel; the launch
// records of FUSED_RNN_PERSISTENT_PROFILE live in persistent_profile.cpp.
// ATen / c10 headers only (no torch/extension.h).
#pragma once

// FUSED_RNN_WARP_EMULATION: compiled as host C++ by tests/persistent_emulation.cpp, which runs
// the kernels' threads as coroutines (tests/cuda_host_emulation.h); the device-only pieces below
// (inline PTX, the CUDA runtime calls of the launch) have host stand-ins or are left out there.
#if !defined(FUSED_RNN_WARP_EMULATION)
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>
#endif
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../path_choice.h"
#include "block_products.cuh"
#include "cuda_kernels.h"
#include "step_elements.cuh"

// Thread-block clusters: compiled for sm_90+ (and in the host emulation); elsewhere their device
// functions trap (the host picks cluster mode on sm_90+ only).
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FUSED_RNN_WARP_EMULATION)
#define FUSED_RNN_CLUSTERS 1
#endif

// The block's dynamic shared memory (host emulation: the emulated block's buffer).
#if !defined(FUSED_RNN_DYNAMIC_SHARED)
#define FUSED_RNN_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace fused_rnn::cuda {

// Keeps the record of the last profiled launch of one direction (persistent_profile.cpp; read
// by persistent_profile, cuda_kernels.h).
void record_profile(bool backward, std::vector<int64_t> record);

namespace {

namespace cg = cooperative_groups;

// Values of the forward that one backward element reads per step (see the backward kernel's
// input_ptr), by the number of gates: GRU 6, LSTM 7, RNN 2.
constexpr int backward_inputs_of(int gates) {
  return gates == 3 ? 6 : gates == 4 ? 7 : 2;
}

__device__ __forceinline__ int64_t step_time(int64_t s, int64_t T, bool reverse) {
  return reverse ? T - 1 - s : s;
}

// The part [first, last) of n loads that this block makes in shared staging: the cluster's blocks
// split them in rank order (some get none where n < blocks).
struct LoadRange {
  int first, last;
};

__device__ __forceinline__ LoadRange cluster_part(int n) {
#if defined(FUSED_RNN_CLUSTERS)
  const cg::cluster_group cluster = cg::this_cluster();
  const int blocks = static_cast<int>(cluster.num_blocks());
  const int per = (n + blocks - 1) / blocks, first = static_cast<int>(cluster.block_rank()) * per;
  return {min(first, n), min(first + per, n)};
#else
  __trap();
  return {0, 0};
#endif
}

// v[0 .. N) into elements at, at + 1, ... of every block of the cluster (the same local address
// in each), 16 bytes per store where the span allows. Visible to them after the next cluster
// barrier.
template <typename E, int N>
__device__ __forceinline__ void store_span_to_cluster(E* at, const E (&v)[N]) {
#if defined(FUSED_RNN_CLUSTERS)
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned blocks = cluster.num_blocks();
  if constexpr (N * sizeof(E) % 16 == 0) {
    if (reinterpret_cast<uintptr_t>(at) % 16 == 0) {
      constexpr int kWords = N * sizeof(E) / 16;
      uint4 raw[kWords];
      memcpy(raw, v, sizeof(raw));
      for (unsigned r = 0; r < blocks; ++r) {
        uint4* dst = cluster.map_shared_rank(reinterpret_cast<uint4*>(at), r);
#pragma unroll
        for (int q = 0; q < kWords; ++q) dst[q] = raw[q];
      }
      return;
    }
  }
  for (unsigned r = 0; r < blocks; ++r) {
    E* dst = cluster.map_shared_rank(at, r);
#pragma unroll
    for (int e = 0; e < N; ++e) dst[e] = v[e];
  }
#else
  __trap();
#endif
}

// X[bb * ld + k] = src[(b0 + bb) * row + k] for bb < nb, k < K, read through L2 and converted to
// X's element type E. Each thread has kBatch loads in flight before it stores (a step's latency
// is a few L2 round trips), walks its (row, column) position without divisions, and reads 16
// bytes at a time where the rows allow. shared (shared staging, kSharedStaging): this block
// makes only its part of the loads (cluster_part) and stores each value into every block of its
// cluster, so each row is read from L2 once per cluster instead of once per block; the caller
// puts a cluster barrier after it.
template <typename S, typename E>
__device__ __forceinline__ void stage_rows(E* X, int ld, const S* src, int64_t row, int b0,
                                           int nb, int K, bool shared) {
  constexpr int kBatch = 8;
  constexpr int kVec = 16 / sizeof(S);  // elements of S per 16-byte load
  const bool vec = K % kVec == 0 && row % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const int per_row = vec ? K / kVec : K;  // loads per row
  const LoadRange part = shared ? cluster_part(nb * per_row) : LoadRange{0, nb * per_row};
  const int n = part.last;
  for (int base = part.first + threadIdx.x; base < n; base += kThreads * kBatch) {
    int bb = base / per_row, c = base - bb * per_row;  // one division per batch
    int rows[kBatch], cols[kBatch];
    uint4 raw[kBatch];
    acc_t<S> one[kBatch];
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
        E* dst = X + rows[q] * ld + cols[q] * kVec;
        E conv[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) conv[e] = static_cast<E>(static_cast<acc_t<S>>(vals[e]));
        if (shared) {
          store_span_to_cluster(dst, conv);
        } else {
#pragma unroll
          for (int e = 0; e < kVec; ++e) dst[e] = conv[e];
        }
      } else {
        const E v[1] = {static_cast<E>(one[q])};  // exact: one[q] came from an S
        if (shared) {
          store_span_to_cluster(X + rows[q] * ld + cols[q], v);
        } else {
          X[rows[q] * ld + cols[q]] = v[0];
        }
      }
    }
  }
}

// cp.async: global -> shared memory copies that a block barrier does not wait for (only
// cp.async.wait_all does). 4 bytes through L1 (inputs written before the launch), 16 bytes through
// L2 only (rows other blocks wrote in this launch).
// (Host emulation: emu::cp_async, at once or at the wait.)
__device__ __forceinline__ void cp_async4(void* smem_dst, const void* src) {
#if defined(FUSED_RNN_WARP_EMULATION)
  emu::cp_async(smem_dst, src, 4);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
#endif
}

__device__ __forceinline__ void cp_async16_l2(void* smem_dst, const void* src) {
#if defined(FUSED_RNN_WARP_EMULATION)
  emu::cp_async(smem_dst, src, 16);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(FUSED_RNN_WARP_EMULATION)
  emu::cp_async_wait_all();
#else
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// stage_rows by cp.async (FUSED_RNN_PERSISTENT_STAGING=async): 16-byte copies through L2 (.cg:
// other blocks wrote these rows in this launch), all issued before one wait, so the whole step's
// rows are in flight at once instead of kBatch loads per thread. Only where X keeps the values
// as stored (E == S: float32 and float64 on CUDA cores, every type on tensor cores) and every
// row starts 16-byte aligned; false: not possible here (nothing issued), stage_rows instead.
template <typename S, typename E>
__device__ __forceinline__ bool stage_rows_async(E* X, int ld, const S* src, int64_t row, int b0,
                                                 int nb, int K) {
  if constexpr (!std::is_same_v<S, E>) {
    return false;
  } else {
    constexpr int kVec = 16 / sizeof(S);
    if (K % kVec != 0 || row % kVec != 0 || ld % kVec != 0 ||
        reinterpret_cast<uintptr_t>(src) % 16 != 0) {
      return false;
    }
    const int per_row = K / kVec, n = nb * per_row;
    int bb = threadIdx.x / per_row, c = threadIdx.x - bb * per_row;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      cp_async16_l2(X + bb * ld + c * kVec, src + static_cast<int64_t>(b0 + bb) * row + c * kVec);
      c += kThreads;
      while (c >= per_row) {
        c -= per_row;
        ++bb;
      }
    }
    cp_async_wait_all();
    return true;
  }
}

// Bits of a launch's `flags` argument.
constexpr int kAsyncStaging = 1;   // stage rows by cp.async where possible (stage_rows_async)
constexpr int kClusterBarrier = 2;  // thread-block clusters, each with its own batch rows
constexpr int kDsmemExchange = 4;   // cluster mode: h / d_gates rows through distributed
                                    // shared memory (store_to_cluster), not global memory
constexpr int kSharedStaging = 8;   // the launch has clusters (in grid modes too) whose blocks
                                    // share the staging: each row read from L2 by one block of
                                    // the cluster and stored into every block of it
constexpr int kTaggedExchange = 16;  // no step barrier: the rows travel as words tagged with
                                     // their step (stage_tagged), which readers poll
constexpr int kSplitK = 32;  // the launch has clusters (grid modes) whose blocks split the
                             // reduction of one set of hidden units (split_chunk, sum_split)
constexpr int kTestStall = 64;  // a test's (FUSED_RNN_PERSISTENT_TEST_STALL=1, counter barrier
                               // only): block 0 never arrives at the step barrier, so every
                               // wait there must end in SpinWatchdog's trap

// Split reduction (kSplitK, FUSED_RNN_PERSISTENT_SPLIT=Q, sm_90+, grid modes): a cluster of Q
// blocks owns Q * U hidden units; block rank q of it keeps the weights of all of them but only
// for the reduction columns [q * Kc, q * Kc + Kc) (Kc = split_chunk(K, Q)), stages only those
// columns of h_prev / d_gates (1/Q of the bytes every block otherwise reads from L2 per step),
// and multiplies them into partial sums for the cluster's units; after a cluster barrier each
// block adds, for its own U units, the Q blocks' partial sums (read from their shared memory, in
// rank order: deterministic) and runs the pointwise part as without the split. Kc: K / Q rounded
// up to 8 elements (16-byte aligned chunks for the loads and the products; the last chunks may be
// shorter or empty, their columns zero). Q == 1: K.
__host__ __device__ constexpr int split_chunk(int K, int Q) {
  return Q > 1 ? ((K + Q - 1) / Q + 7) / 8 * 8 : K;
}

// Rows into X: shared within the cluster where the launch asks for it (the caller then ends the
// staging with a cluster barrier), by cp.async where it asks for that and the rows allow it,
// else by loads.
// (float64: not compiled, the plan never shares there; it would spill the LSTM backward's
// registers, see choose_plan.)
template <typename S, typename E>
__device__ __forceinline__ void stage(E* X, int ld, const S* src, int64_t row, int b0, int nb,
                                      int K, int flags) {
  if constexpr (!std::is_same_v<S, double>) {
    if (flags & kSharedStaging) return stage_rows(X, ld, src, row, b0, nb, K, true);
  }
  if (!((flags & kAsyncStaging) && stage_rows_async(X, ld, src, row, b0, nb, K))) {
    stage_rows(X, ld, src, row, b0, nb, K, false);
  }
}

// Tagged exchange (kTaggedExchange, FUSED_RNN_PERSISTENT_BARRIER=tagged): each value of h /
// d_gates that other blocks read next travels as one 64-bit word, the value's bits in the low
// half and its step's tag (1, 2, ...: never 0, the buffer starts zeroed) in the high half,
// written and read with relaxed atomicity at GPU scope (st / ld.relaxed.gpu: a reader sees the
// whole word or none of it). A reader polls each word until its tag is the one it waits for:
// the rows carry their own readiness, so a step needs no grid barrier, and a block waits only
// for the values it reads (blocks run at most a step apart; two buffers, by step parity, are
// enough: a block writes step s + 2's words only after it has read step s + 1's from every
// block, which each wrote after reading step s's). Not for float64 (no room for a tag).
__device__ __forceinline__ void store_tagged(unsigned long long* at, unsigned long long word) {
#if defined(FUSED_RNN_WARP_EMULATION)
  *at = word;
#else
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(at), "l"(word) : "memory");
#endif
}

__device__ __forceinline__ unsigned long long load_tagged(const unsigned long long* at) {
  unsigned long long word = 0;
#if defined(FUSED_RNN_WARP_EMULATION)
  word = *at;
#else
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(word) : "l"(at) : "memory");
#endif
  return word;
}

// The global nanosecond timer (%globaltimer; host emulation: 0).
__device__ __forceinline__ long long globaltimer_ns() {
  long long ns = 0;
#if !defined(FUSED_RNN_WARP_EMULATION)
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
#endif
  return ns;
}

// A spin wait of this file (the counter barrier's, the tagged exchange's polls) that has not
// ended after kSpinLimitNs is a bug (a word never written, a block gone): the kernel traps, so
// the launch fails with an error ("unspecified launch failure") instead of hanging the process
// and the device until a timeout kills them. A healthy wait lasts one step, microseconds
// (milliseconds under compute-sanitizer). Host emulation: compiled out, the emulation reports a
// poll whose value never comes by itself. (Not for cooperative groups' grid barrier or the
// cluster barrier, which are not this file's loops.)
constexpr long long kSpinLimitNs = 20'000'000'000LL;  // 20 s

struct SpinWatchdog {
  long long since = 0;  // %globaltimer at the first check; 0: not started
  __device__ __forceinline__ void check() {
#if !defined(FUSED_RNN_WARP_EMULATION)
    const long long now = globaltimer_ns();
    if (since == 0) {
      since = now;
    } else if (now - since > kSpinLimitNs) {
      __trap();
    }
#endif
  }
};

// Between two polls of a word not yet written (host emulation: the other threads run).
__device__ __forceinline__ void poll_pause() {
#if defined(FUSED_RNN_WARP_EMULATION)
  emu::spin();
#else
  __nanosleep(20);
#endif
}

// The word of value v (as stored: S) of step tag `tag`, and the value of a word.
template <typename S>
__device__ __forceinline__ unsigned long long tagged_word(acc_t<S> v, unsigned tag) {
  unsigned bits = 0;
  if constexpr (std::is_same_v<S, float>) {
    bits = __float_as_uint(v);
  } else {
    bits = static_cast<S>(v).x;  // c10::Half / c10::BFloat16: their 16 bits
  }
  return (static_cast<unsigned long long>(tag) << 32) | bits;
}

template <typename S>
__device__ __forceinline__ acc_t<S> tagged_value(unsigned long long word) {
  const unsigned bits = static_cast<unsigned>(word);
  if constexpr (std::is_same_v<S, float>) {
    return __uint_as_float(bits);
  } else {
    return static_cast<float>(S(static_cast<unsigned short>(bits), S::from_bits()));
  }
}

// X[bb * ld + k] = the value of src[(b0 + bb) * K + k] (tagged words [rows, K]) for bb < nb,
// k < K, once that word carries `tag`. kBatch words in flight per thread, then each checked and
// polled again until ready.
template <typename S, typename E>
__device__ __forceinline__ void stage_tagged(E* X, int ld, const unsigned long long* src, int b0,
                                             int nb, int K, unsigned tag) {
  constexpr int kBatch = 8;
  const int n = nb * K;
  src += static_cast<int64_t>(b0) * K;
  SpinWatchdog watchdog;
  for (int base = threadIdx.x; base < n; base += kThreads * kBatch) {
    unsigned long long w[kBatch];
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      if (base + q * kThreads < n) w[q] = load_tagged(src + base + q * kThreads);
    }
#pragma unroll
    for (int q = 0; q < kBatch; ++q) {
      const int i = base + q * kThreads;
      if (i >= n) continue;
      while (static_cast<unsigned>(w[q] >> 32) != tag) {
        watchdog.check();
        poll_pause();
        w[q] = load_tagged(src + i);
      }
      const int bb = i / K;
      X[bb * ld + i - bb * K] = static_cast<E>(tagged_value<S>(w[q]));
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

// The hidden units and batch rows of one block. Grid modes: unit slice blockIdx.x of all B rows.
// Cluster mode (FUSED_RNN_PERSISTENT_BARRIER=cluster, sm_90+): the launch is independent
// clusters of C blocks; cluster q takes batch rows [q * group_rows, + group_rows) (the batch
// rows of an RNN never meet), its block of rank k unit slice k, and a step ends at the
// cluster's own barrier: no grid-wide barrier at all.
struct BlockShare {
  int rank;  // unit slice: hidden units [rank * U, rank * U + U)
  int b_lo;  // first batch row
  int rows;  // batch rows
};

__device__ __forceinline__ BlockShare block_share(int flags, int B, int group_rows) {
  if (flags & kClusterBarrier) {
#if defined(FUSED_RNN_CLUSTERS)
    const cg::cluster_group cluster = cg::this_cluster();
    const int b_lo = static_cast<int>(blockIdx.x / cluster.num_blocks()) * group_rows;
    return {static_cast<int>(cluster.block_rank()), b_lo, min(group_rows, B - b_lo)};
#else
    __trap();
#endif
  }
  return {static_cast<int>(blockIdx.x), 0, B};
}

// The cluster's barrier.
__device__ __forceinline__ void cluster_sync() {
#if defined(FUSED_RNN_CLUSTERS)
  cg::this_cluster().sync();
#else
  __trap();
#endif
}

// The cluster's barrier where `cluster`, else the block's.
__device__ __forceinline__ void block_or_cluster_sync(bool cluster) {
  if (cluster) {
    cluster_sync();
  } else {
    __syncthreads();
  }
}

// The block's rank in its cluster and the cluster's blocks.
struct ClusterPlace {
  int rank, blocks;
};

__device__ __forceinline__ ClusterPlace cluster_place() {
#if defined(FUSED_RNN_CLUSTERS)
  const cg::cluster_group cluster = cg::this_cluster();
  return {static_cast<int>(cluster.block_rank()), static_cast<int>(cluster.num_blocks())};
#else
  __trap();
  return {0, 1};
#endif
}

// Split reduction, the sums of this block's units: for row b < rows and i < n (gate-major:
// i = g * U + u), out[b * n + i] (+)= the sum over the cluster's blocks, in rank order, of their
// part[b * part_row + first + g * stride + u] (the same place in each block's shared memory).
// `add`: added to out. A thread takes w consecutive units (16 bytes where U and the offsets
// allow, else 1) and has the loads of kInFlight blocks in flight before it adds (a load from
// another block's shared memory is a round trip through the cluster's network). Reads the other
// blocks' shared memory: after a cluster barrier that follows their products, and before the
// barrier after which they overwrite `part`.
template <typename A>
__device__ __forceinline__ void sum_split(A* out, A* part, int rows, int n, int U,
                                          int part_row, int first, int stride, bool add) {
#if defined(FUSED_RNN_CLUSTERS)
  constexpr int kVec = 16 / sizeof(A), kInFlight = 8;
  cg::cluster_group cluster = cg::this_cluster();
  const int blocks = static_cast<int>(cluster.num_blocks());
  const bool vec = U % kVec == 0 && part_row % kVec == 0 && first % kVec == 0 &&
                   stride % kVec == 0 && reinterpret_cast<uintptr_t>(part) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int w = vec ? kVec : 1, per_row = n / w;  // n = G * U: a multiple of w
  for (int e = threadIdx.x; e < rows * per_row; e += kThreads) {
    const int b = e / per_row, i = (e - b * per_row) * w, g = i / U;
    A* at = part + b * part_row + first + g * stride + (i - g * U);
    A sum[kVec];
    for (int r0 = 0; r0 < blocks; r0 += kInFlight) {
      uint4 raw[kInFlight];
      A one[kInFlight];
#pragma unroll
      for (int q = 0; q < kInFlight; ++q) {
        if (r0 + q < blocks) {
          A* src = cluster.map_shared_rank(at, static_cast<unsigned>(r0 + q));
          if (vec) {
            raw[q] = *reinterpret_cast<const uint4*>(src);
          } else {
            one[q] = *src;
          }
        }
      }
#pragma unroll
      for (int q = 0; q < kInFlight; ++q) {
        if (r0 + q >= blocks) continue;
        A v[kVec] = {};
        if (vec) {
          memcpy(v, &raw[q], 16);
        } else {
          v[0] = one[q];
        }
#pragma unroll
        for (int k = 0; k < kVec; ++k) sum[k] = r0 + q == 0 ? v[k] : sum[k] + v[k];
      }
    }
    A* dst = out + b * n + i;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {  // (a constant bound: sum stays in registers)
      if (k < w) dst[k] = add ? dst[k] + sum[k] : sum[k];
    }
  }
#else
  __trap();
#endif
}

// Exchange through distributed shared memory: v into the same element (local address `at` in
// this block's shared memory) of every block of the cluster, this one included. Visible to them
// after the next cluster barrier.
template <typename E>
__device__ __forceinline__ void store_to_cluster(E* at, E v) {
#if defined(FUSED_RNN_CLUSTERS)
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned n = cluster.num_blocks();
  for (unsigned r = 0; r < n; ++r) *cluster.map_shared_rank(at, r) = v;
#else
  __trap();
#endif
}

// The counter barrier's two accesses: add 1 with release semantics, read with acquire semantics
// (host emulation: plain accesses, and a read first lets the other emulated threads run).
__device__ __forceinline__ void add_release(unsigned* counter) {
#if defined(FUSED_RNN_WARP_EMULATION)
  ++*counter;
#else
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
#endif
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* counter) {
  unsigned seen = 0;
#if defined(FUSED_RNN_WARP_EMULATION)
  emu::spin();
  seen = *counter;
#else
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
#endif
  return seen;
}

// The barrier that ends every step. Cluster mode: the cluster's barrier (release / acquire at
// cluster scope: the rows one block wrote are visible to the others of its cluster).
// counter == nullptr: cooperative groups' grid.sync(). Otherwise counter points at a zeroed
// word of this launch: each block adds 1 with release semantics once its writes of the step are
// done (the block barrier before it orders them), then waits with acquire loads until all
// blocks have added (target = steps done * blocks).
__device__ __forceinline__ void step_barrier(int flags, unsigned* counter, unsigned target) {
  if (flags & kClusterBarrier) {
    cluster_sync();
    return;
  }
  if (counter == nullptr) {
    cg::this_grid().sync();
    return;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (!(flags & kTestStall) || blockIdx.x != 0) add_release(counter);
    SpinWatchdog watchdog;
    while (static_cast<int>(load_acquire(counter) - target) < 0) {
      watchdog.check();
    }
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
      begin_ns = globaltimer_ns();
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
    const long long end_ns = globaltimer_ns();
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

// Starts the copy of segment `seg` (elements src[0 .. units)) into its slot of `buf`; called by
// every thread with its share of (segment, word) pairs, see fetch_segments.
template <typename S>
__device__ __forceinline__ void fetch_word(unsigned* buf, int seg, int word, int wps,
                                           const S* src, int units) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(src);
  const int words = (static_cast<int>(addr & 3) + units * static_cast<int>(sizeof(S)) + 3) / 4;
  if (units > 0 && word < words) {  // units 0: a block that only pads the grid to whole clusters
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

// The element type of W and X in shared memory: the accumulation type on CUDA cores (fp32 /
// fp64), the storage type on tensor cores (fp16 / bf16; float32 holding tf32 values in W).
template <typename S, bool kMma>
using operand_t = std::conditional_t<kMma, S, acc_t<S>>;

// A weight as the products read it (tensor cores on float32: rounded to tf32 once, here).
template <typename E, bool kMma, typename A>
__device__ __forceinline__ E to_operand(A w) {
  if constexpr (kMma && std::is_same_v<E, float>) {
    return __uint_as_float(to_tf32(w));
  } else {
    return static_cast<E>(w);
  }
}

// Columns [K, ld) of M (W or X) are zero for the tensor cores' k loop (staging and the weight
// loads write columns < K only).
template <typename E>
__device__ __forceinline__ void zero_columns(E* M, int rows, int K, int ld) {
  const int pad = ld - K;
  for (int idx = threadIdx.x; idx < rows * pad; idx += kThreads) {
    const int r = idx / pad;
    M[r * ld + K + idx - r * pad] = E(0);
  }
}

// X, the staged rows of h_prev (forward) or d_gates (backward) in shared memory: [nX, Bc, ld],
// one buffer, or two with kDsmemExchange, where step s reads buffer s % 2 while the cluster
// writes step s + 1's rows (forward) / step s - 1's (backward) into the other.
template <typename E>
struct StagedRows {
  E* base;
  int Bc, ld;
  bool two;
  __device__ int rows() const { return (two ? 2 : 1) * Bc; }  // of all buffers
  __device__ E* step(int64_t s) const { return two ? base + (s & 1) * Bc * ld : base; }
  __device__ E* end() const { return base + rows() * ld; }
};

// A block's rows: Bq = its batch rows (BlockShare: all B, or its cluster's), local row b is
// batch row b_lo + b. Shared memory: xs (slots of x_t W_ih^T, this step's and the next's:
// slot_bytes<S>(Bq*G, U)), then in operand_t<S, kMma> (ld = row_stride(Kc), Rw =
// padded_rows(G*Uc); without kSplitK Kc = H, Uc = U): W [Rw, ld], X [nX, Bc, ld] (nX = 2
// buffers with kDsmemExchange, where step s reads buffer s % 2 and the cluster writes step
// s + 1's rows into the other, else 1); then in elements of acc_t<S>: gh [Bq, G*U],
// P [kWarps * scratch_per_warp], bias_x [G*U], bias_h [G*U], cs [Bq, U], and with kSplitK
// gp [Bc, G*Uc].
template <Cell kCell, int kBW, typename S, bool kMma>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_forward_kernel(RecurrenceForward<S> p, int U, int Bc, int flags, int group_rows,
                              unsigned* barrier, unsigned long long* exchange, long long* phases) {
  using A = acc_t<S>;
  using E = operand_t<S, kMma>;
  constexpr int G = gates_of(kCell);
  constexpr bool kTaggable = !std::is_same_v<S, double>;  // (no room for a tag beside a double)
  FUSED_RNN_DYNAMIC_SHARED(smem_raw);
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch), R = G * U;
  const BlockShare share = block_share(flags, B, group_rows);
  const int Bq = share.rows, b_lo = share.b_lo;
  // split reduction: this block's rank q in its cluster of Q, the cluster's Uc units from c0,
  // its reduction columns [k0, k0 + kq) of Kc; without: Q = 1, Uc = U, c0 = j0, all H columns
  // (not float64: compiled out, the plan never splits there; its registers would spill, ptxas)
  constexpr bool kSplittable = !std::is_same_v<S, double>;
  const bool split = kSplittable && (flags & kSplitK) != 0;
  const ClusterPlace place = split ? cluster_place() : ClusterPlace{0, 1};
  const int Q = place.blocks, Uc = Q * U, c0 = (share.rank / Q) * Uc, Rs = G * Uc;
  const int Kc = split_chunk(H, Q), k0 = place.rank * Kc, kq = max(0, min(Kc, H - k0));
  const int ld = row_stride(Kc, sizeof(E), kMma), Rw = padded_rows(Rs, kMma);
  const int wps = slot_words<S>(U);
  unsigned* xs = reinterpret_cast<unsigned*>(smem_raw);  // xs: [2][Bq*G][wps] words
  // W: [Rw, ld], row g*Uc + v = W_hh[g*H + c0 + v, k0 .. k0 + kq)
  E* W = reinterpret_cast<E*>(smem_raw + slot_bytes<S>(Bq * G, U));
  const bool dsmem = (flags & kDsmemExchange) != 0;
  const StagedRows<E> X{W + Rw * ld, Bc, ld, dsmem};  // X: [nX, Bc, ld]  rows of h_prev
  A* gh = reinterpret_cast<A*>(X.end());  // gh: [Bq, R]  h_prev W_hh^T, this block's rows
  A* P = gh + Bq * R;                     // P: [kWarps * scratch_per_warp]
  A* bias_x = P + kWarps * scratch_per_warp(kMma);  // bias_x: [R]  added to x_t W_ih^T (GRU: b_ih;
                                          //   LSTM / RNN: b_ih + b_hh)
  A* bias_h = bias_x + R;                 // bias_h: [R]  GRU: b_hh, added to h_prev W_hh^T
  A* cs = bias_h + R;                     // cs: [Bq, U]  LSTM: this block's units' cell state
  A* gp = cs + Bq * U;  // gp: [Bc, Rs]  split: a pass's partial sums of the cluster's units
  // units 0: a block that pads the grid to whole clusters (shared staging): it stages, owns none
  const int j0 = share.rank * U, units = max(0, min(U, H - j0));
  for (int idx = threadIdx.x; idx < Rw * ld; idx += kThreads) {
    const int r = idx / ld, k = idx - r * ld, g = r / Uc, v = r - g * Uc;
    const A w = r < Rs && c0 + v < H && k < kq
                    ? static_cast<A>(p.w_hh[static_cast<int64_t>(g * H + c0 + v) * H + k0 + k])
                    : A(0);
    W[idx] = to_operand<E, kMma>(w);
  }
  // X's columns past this block's (tensor cores: also the padding to ld) stay zero
  if (kMma || kq < ld) zero_columns(X.base, X.rows(), kq, ld);
  for (int r = threadIdx.x; r < R; r += kThreads) {
    const int g = r / U, u = r - g * U;
    const int64_t i = static_cast<int64_t>(g) * H + j0 + u;
    bias_x[r] = u < units && p.b_ih ? static_cast<A>(p.b_ih[i]) : A(0);
    bias_h[r] = u < units && p.b_hh && kCell == Cell::kGru ? static_cast<A>(p.b_hh[i]) : A(0);
  }
  if constexpr (kCell == Cell::kLstm) {
    for (int e = threadIdx.x; e < Bq * U; e += kThreads) {
      const int b = e / U, u = e - b * U;
      cs[e] = u < units ? static_cast<A>(p.c0[static_cast<int64_t>(b_lo + b) * H + j0 + u])
                        : A(0);
    }
  }
  const bool h_staged = Bc >= Bq && !split;  // X holds all of h_prev after the staging
  const int n_el = Bq * units;     // pointwise elements of this block
  const int64_t T = p.steps;
  // segment (b, g) of step s: x_t[b_lo + b, g*H + j0 .. + units)
  auto x_segment = [&](int64_t s, int seg) {
    const int b = seg / G, g = seg - b * G;
    return p.x + step_time(s, T, p.reverse) * p.x_step + (b_lo + b) * p.x_row + g * H + j0;
  };
  auto fetch_inputs = [&](int64_t s) {  // into xs[s % 2]
    unsigned* buf = xs + (s & 1) * Bq * G * wps;
    for (int i = threadIdx.x; i < Bq * G * wps; i += kThreads) {
      const int seg = i / wps;
      fetch_word(buf, seg, i - seg * wps, wps, x_segment(s, seg), units);
    }
  };
  const bool shared = (flags & kSharedStaging) != 0;
  // exchange: [2, B, H] tagged words of h (kTaggedExchange), step s's in buffer s % 2, tag s + 1
  const bool tagged = kTaggable && (flags & kTaggedExchange) != 0;
  const int64_t BH = static_cast<int64_t>(B) * H;
  fetch_inputs(0);
  // every block of the cluster runs before any writes into another
  if (dsmem || shared) cluster_sync();
  PhaseClock clock(phases);
  A* const prod = split ? gp : gh;  // where the products go
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_time(s, T, p.reverse);
    E* const Xs = X.step(s);  // this step's h_prev rows
    const S* h_prev = s == 0 ? p.h0 : p.out + step_time(s - 1, T, p.reverse) * p.out_step;
    const int64_t h_prev_row = s == 0 ? H : p.out_row;
    S* x_t = p.x + t * p.x_step;        // x_t: [B, G*H]
    S* out_t = p.out + t * p.out_step;  // out_t: [B, H]
    const unsigned* x_slots = xs + (s & 1) * Bq * G * wps;  // this step's x_t W_ih^T
    // with the exchange through shared memory the cluster wrote h_prev into Xs (s > 0)
    const bool staging = !dsmem || s == 0;
    for (int b0 = 0; b0 < Bq; b0 += Bc) {
      const int nb = min(Bc, Bq - b0);
      // X is free: in this block, and with shared staging in every block of the cluster (for
      // the first pass the step barrier saw to that: all blocks had finished their products);
      // split: every block of the cluster has summed the previous pass's partial sums in gp
      block_or_cluster_sync(((shared && staging) || split) && b0 > 0);
      bool staged = !staging;
      if constexpr (kTaggable) {
        if (tagged && s > 0) {  // polls the words of step s - 1 (no step barrier before)
          stage_tagged<S>(Xs, ld, exchange + ((s - 1) & 1) * BH, b_lo + b0, nb, H,
                          static_cast<unsigned>(s));
          staged = true;
        }
      }
      if (!staged && kq > 0) stage(Xs, ld, h_prev + k0, h_prev_row, b_lo + b0, nb, kq, flags);
      if (b0 == 0) cp_async_wait_all();  // this step's slots (issued a step ago) have landed
      // the rows are in X (shared staging: every block of the cluster has stored its part)
      block_or_cluster_sync(shared && staging);
      clock.lap(0, false);
      // (split: the pass's partial sums into gp's rows from 0, else gh's rows from b0)
      if constexpr (kMma) {
        block_mma(W, Rs, Xs, nb, Kc, ld, prod, Rs, split ? 0 : b0, P);
      } else {
        block_matvec_any<kBW>(W, Rs, Xs, nb, Kc, prod, Rs, split ? 0 : b0, P);
      }
      if (split) {  // gh of this block's units, the pass's rows: the cluster's partial sums
        cluster_sync();  // every block of the cluster has the pass's partial sums in gp
        sum_split(gh + b0 * R, gp, nb, R, U, Rs, place.rank * U, Uc, false);
        __syncthreads();
      }
      clock.lap(1, false);  // block_matvec ends with a block barrier
    }
    // The cell's update of element (local row b, unit u) from its input projection xin[g].
    auto element = [&](int b, int u, const A(&xin)[G]) {
      const int64_t j = j0 + u, bg = b_lo + b;  // bg: the batch row
      const A* g_b = gh + b * R;  // [G*U]
      const A hp = h_staged ? static_cast<A>(Xs[b * ld + j])
                            : L2Load::ld(h_prev + bg * h_prev_row + j);
      // the new state as stored, for the exchange through shared memory (always asked for: a
      // pointer that is sometimes null would put h_new in local memory)
      A h_new(0);
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
        gru_forward_values(q, bg, j, gi[0], gi[1], gi[2], ghv[0], ghv[1], ghv[2], hp, &h_new);
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
        c = static_cast<A>(static_cast<S>(lstm_forward_values(q, bg, j, a[0], a[1], a[2], a[3],
                                                              c, hp, &h_new)));
      } else {
        A x = xin[0] + g_b[u];
        if (p.b_ih) x += bias_x[u];
        const RnnForwardStep<S> q{B, H, x_t, p.x_row, p.b_ih, h_prev, h_prev_row, out_t,
                                  p.out_row, kCell == Cell::kRnnRelu, t, p.lengths};
        rnn_forward_values<kCell == Cell::kRnnRelu>(q, bg, j, x, hp, &h_new);
      }
      if (dsmem && s + 1 < T) store_to_cluster(X.step(s + 1) + b * ld + j, static_cast<E>(h_new));
      if constexpr (kTaggable) {
        if (tagged && s + 1 < T) {
          store_tagged(exchange + (s & 1) * BH + bg * H + j,
                       tagged_word<S>(h_new, static_cast<unsigned>(s + 1)));
        }
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
    // this step's h is complete and visible to every block (of the cluster); tagged exchange:
    // no barrier, the next step's staging waits for each word it reads
    if (!tagged) step_barrier(flags, barrier, static_cast<unsigned>(s + 1) * gridDim.x);
    clock.lap(3, false);
  }
  clock.finish();
}

// A block's rows as in the forward kernel (Bq rows from b_lo). Shared memory: xs (slots of the
// forward's values an element reads, this step's and the next's: slot_bytes<S>(Bq*kIn, U)), then
// in operand_t<S, kMma> (ld = row_stride(Kc), Uw = padded_rows(Uc); without kSplitK Kc = G*H,
// Uc = U): Wt [Uw, ld], X [nX, Bc, ld] (nX = 2 with kDsmemExchange: step s's d_gates rows in
// buffer s % 2, written there by the cluster's pointwise phase; else 1); then in elements of
// acc_t<S>: mv [Bq, U], dh [Bq, U], dc [Bq, U], P [kWarps * scratch_per_warp], and with kSplitK
// mvp [Bc, Uc].
template <Cell kCell, int kBW, typename S, bool kMma>
__global__ void __launch_bounds__(kThreads, 1)
    recurrence_backward_kernel(RecurrenceBackward<S> p, int U, int Bc, int flags, int group_rows,
                               unsigned* barrier, unsigned long long* exchange, long long* phases) {
  using A = acc_t<S>;
  using E = operand_t<S, kMma>;
  constexpr int G = gates_of(kCell);
  constexpr bool kTaggable = !std::is_same_v<S, double>;  // see the forward kernel
  FUSED_RNN_DYNAMIC_SHARED(smem_raw);
  const int H = static_cast<int>(p.hidden), B = static_cast<int>(p.batch), K = G * H;
  const BlockShare share = block_share(flags, B, group_rows);
  const int Bq = share.rows, b_lo = share.b_lo;
  // split reduction (see the forward kernel): the cluster's Uc units from c0, this block's
  // reduction rows [k0, k0 + kq) of W_hh (columns of d_gates), Kc of them
  constexpr bool kSplittable = !std::is_same_v<S, double>;  // (not float64: see the forward)
  const bool split = kSplittable && (flags & kSplitK) != 0;
  const ClusterPlace place = split ? cluster_place() : ClusterPlace{0, 1};
  const int Q = place.blocks, Uc = Q * U, c0 = (share.rank / Q) * Uc;
  const int Kc = split_chunk(K, Q), k0 = place.rank * Kc, kq = max(0, min(Kc, K - k0));
  const int ld = row_stride(Kc, sizeof(E), kMma), Uw = padded_rows(Uc, kMma);
  constexpr int kIn = backward_inputs_of(G);  // see input_ptr
  unsigned* xs = reinterpret_cast<unsigned*>(smem_raw);  // xs: [2][Bq*kIn][slot_words] words
  // Wt: [Uw, ld], row v = W_hh[k0 .. k0 + kq, c0 + v]
  E* Wt = reinterpret_cast<E*>(smem_raw + slot_bytes<S>(Bq * kIn, U));
  const bool dsmem = (flags & kDsmemExchange) != 0;
  const StagedRows<E> X{Wt + Uw * ld, Bc, ld, dsmem};  // X: [nX, Bc, ld]  rows of d_gates
  A* mv = reinterpret_cast<A*>(X.end());  // mv: [Bq, U]  d_gates W_hh for this block's units
  A* dh = mv + Bq * U;                     // dh: [Bq, U]  running dL/dh
  A* dc = dh + Bq * U;                     // dc: [Bq, U]  running dL/dc (LSTM)
  A* P = dc + Bq * U;                      // P: [kWarps * scratch_per_warp]
  A* mvp = P + kWarps * scratch_per_warp(kMma);  // mvp: [Bc, Uc]  split: a pass's partial sums
  A* const prod = split ? mvp : mv;                // where the products go
  const int j0 = share.rank * U, units = max(0, min(U, H - j0));  // 0: see the forward kernel
  for (int idx = threadIdx.x; idx < Kc * Uw; idx += kThreads) {  // consecutive threads: along j
    const int r = idx / Uw, v = idx - r * Uw;
    const A w = v < Uc && c0 + v < H && r < kq
                    ? static_cast<A>(p.w_hh[static_cast<int64_t>(k0 + r) * H + c0 + v])
                    : A(0);
    Wt[v * ld + r] = to_operand<E, kMma>(w);
  }
  if constexpr (kMma) zero_columns(Wt, Uw, Kc, ld);
  // X's columns past this block's (tensor cores: also the padding to ld) stay zero
  if (kMma || kq < ld) zero_columns(X.base, X.rows(), kq, ld);
  for (int e = threadIdx.x; e < Bq * U; e += kThreads) {
    const int b = e / U, u = e - b * U;
    const int64_t i = static_cast<int64_t>(b_lo + b) * H + j0 + u;
    dh[e] = u < units ? static_cast<A>(p.dh[i]) : A(0);
    dc[e] = u < units && p.dc ? static_cast<A>(p.dc[i]) : A(0);
  }
  const int64_t T = p.steps;
  const int n_el = Bq * units;  // pointwise elements of this block
  // exchange: [2, B, K] tagged words of d_gates (kTaggedExchange): step s's in buffer
  // (T - s) % 2, tag T - s
  const bool tagged = kTaggable && (flags & kTaggedExchange) != 0;
  const int64_t BK = static_cast<int64_t>(B) * K;
  // The forward's values that element (b, j0 + u) of step s reads, k < kIn: dL/d(output)
  // first, then GRU: h_prev, r, z, n, gh_n;  LSTM: i, f, g, o, c_prev, c;  RNN: h. Segment
  // (b, k) of step s: input k of units j0 .. j0 + units, starting at input_ptr(s, b, k); b is
  // the batch row (b_lo + local row).
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
    unsigned* buf = xs + (s & 1) * Bq * kIn * wps;
    for (int i = threadIdx.x; i < Bq * kIn * wps; i += kThreads) {
      const int seg = i / wps, b = seg / kIn;
      fetch_word(buf, seg, i - seg * wps, wps, input_ptr(s, b_lo + b, seg - b * kIn), units);
    }
  };
  // The cell's gradients of element (local row b, unit u) of step s from its values v.
  auto element = [&](int64_t s, int b, int u, const A(&v)[kIn]) {
    const int64_t t = step_time(s, T, p.reverse);
    const int64_t j = j0 + u, bg = b_lo + b;  // bg: the batch row
    A* dh_e = dh + b * U + u;
    // the gate gradients multiplied by W_hh, as stored, for the exchange through shared memory
    // (always asked for: a pointer that is sometimes null would put dg in local memory)
    A dg[G];
    if constexpr (kCell == Cell::kGru) {
      const GruBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                 p.h_prev + t * p.hp_step, p.hp_row, p.saved + t * B * 4 * H,
                                 4 * H, p.d_x + t * p.dx_step, p.dx_row,
                                 p.d_h + t * p.dh_step, p.dh_row, t, p.lengths};
      gru_backward_values(q, bg, j, v[0], v[1], v[2], v[3], v[4], v[5], dh_e, dg);
    } else if constexpr (kCell == Cell::kLstm) {
      const S* c_prev =
          s == 0 ? p.c0 : p.cells + step_time(s - 1, T, p.reverse) * B * H;  // [B, H]
      const LstmBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                  nullptr, p.gates + t * p.g_step, p.g_row, c_prev, H,
                                  p.cells + t * B * H, H, p.d_x + t * p.dx_step, p.dx_row,
                                  t, p.lengths};
      lstm_backward_values(q, bg, j, v[0], v[1], v[2], v[3], v[4], v[5], v[6], dh_e,
                           dc + b * U + u, dg);
    } else {
      const RnnBackwardStep<S> q{B, H, p.grad_out + t * p.go_step, p.go_row, nullptr,
                                 p.out + t * p.out_step, p.out_row, p.d_x + t * p.dx_step,
                                 p.dx_row, kCell == Cell::kRnnRelu, t, p.lengths};
      rnn_backward_values<kCell == Cell::kRnnRelu>(q, bg, j, v[0], v[1], dh_e, dg);
    }
    if (dsmem) {
      E* row = X.step(s) + b * ld + j;
#pragma unroll
      for (int g = 0; g < G; ++g) store_to_cluster(row + g * H, static_cast<E>(dg[g]));
    }
    if constexpr (kTaggable) {
      if (tagged) {
        const unsigned tag = static_cast<unsigned>(T - s);
        unsigned long long* row = exchange + (tag & 1) * BK + bg * K + j;
#pragma unroll
        for (int g = 0; g < G; ++g) store_tagged(row + g * H, tagged_word<S>(dg[g], tag));
      }
    }
  };
  const bool shared = (flags & kSharedStaging) != 0 && !dsmem;  // (the exchange: no staging)
  // every block of the cluster runs before any writes into another
  if (dsmem || shared) cluster_sync();
  PhaseClock clock(phases);
  fetch_inputs(T - 1);
  for (int64_t s = T - 1; s >= 0; --s) {
    cp_async_wait_all();  // this step's slots (issued a step ago) have landed
    __syncthreads();      // dh, dc and the slots complete
    const int64_t t = step_time(s, T, p.reverse);
    const unsigned* slots = xs + (s & 1) * Bq * kIn * wps;
    for (int e = threadIdx.x; e < n_el; e += kThreads) {
      const int b = e / units, u = e - b * units;
      A v[kIn];
#pragma unroll
      for (int k = 0; k < kIn; ++k) {
        v[k] = slot_value(slots, b * kIn + k, wps, input_ptr(s, b_lo + b, k), u);
      }
      element(s, b, u, v);
    }
    clock.lap(2, true);
    // this step's d_gates are complete and visible to every block (of the cluster); tagged
    // exchange: no barrier, the staging below waits for each word it reads
    if (!tagged) step_barrier(flags, barrier, static_cast<unsigned>(T - s) * gridDim.x);
    clock.lap(3, false);
    // the next step's values travel during this step's staging and product (other buffer)
    if (s > 0) fetch_inputs(s - 1);
    const S* d_h_t = p.d_h + t * p.dh_step;  // [B, K]
    E* const Xs = X.step(s);  // this step's d_gates rows
    for (int b0 = 0; b0 < Bq; b0 += Bc) {
      const int nb = min(Bc, Bq - b0);
      // X is free: in this block, and with shared staging in every block of the cluster (for
      // the first pass the step barrier saw to that); split: every block of the cluster has
      // summed the previous pass's partial sums in mvp
      block_or_cluster_sync((shared || split) && b0 > 0);
      // with the exchange through shared memory the cluster wrote the rows into Xs already
      bool staged = dsmem;
      if constexpr (kTaggable) {
        if (tagged) {
          const unsigned tag = static_cast<unsigned>(T - s);
          stage_tagged<S>(Xs, ld, exchange + (tag & 1) * BK, b_lo + b0, nb, K, tag);
          staged = true;
        }
      }
      if (!staged && kq > 0) stage(Xs, ld, d_h_t + k0, p.dh_row, b_lo + b0, nb, kq, flags);
      block_or_cluster_sync(shared);  // the rows are in X
      clock.lap(0, false);
      // (split: the pass's partial sums into mvp's rows from 0, else mv's rows from b0)
      if constexpr (kMma) {
        block_mma(Wt, Uc, Xs, nb, Kc, ld, prod, Uc, split ? 0 : b0, P);
      } else {
        block_matvec_any<kBW>(Wt, Uc, Xs, nb, Kc, prod, Uc, split ? 0 : b0, P);
      }
      if (split) {  // dh of this block's units, the pass's rows: + the cluster's partial sums
        cluster_sync();  // every block of the cluster has the pass's partial sums in mvp
        sum_split(dh + b0 * U, mvp, nb, U, U, Uc, place.rank * U, 0, true);
      }
      clock.lap(1, false);  // block_matvec ends with a block barrier
    }
    if (!split) {
      for (int e = threadIdx.x; e < Bq * U; e += kThreads) dh[e] += mv[e];
    }
  }
  clock.finish();
  // split: no block leaves while the others of its cluster may still read its mvp
  if (split) cluster_sync();
  __syncthreads();
  for (int e = threadIdx.x; e < Bq * units; e += kThreads) {
    const int b = e / units, u = e - b * units;
    const int64_t i = static_cast<int64_t>(b_lo + b) * H + j0 + u;
    p.dh[i] = static_cast<S>(dh[b * U + u]);
    if (p.dc) p.dc[i] = static_cast<S>(dc[b * U + u]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: plan (units per block, rows staged per pass, shared memory), choice, launch.
// ---------------------------------------------------------------------------------------------

struct Plan {
  int units = 0, staged_rows = 0, blocks = 0, bw = 1;
  bool mma = false;    // products on tensor cores
  int cluster = 0;     // blocks per cluster (cluster mode), 0: one grid with a grid barrier
  int group_rows = 0;  // cluster mode: batch rows per cluster
  bool dsmem = false;  // cluster mode: rows exchanged through distributed shared memory
  bool tagged = false;  // tagged exchange (kTaggedExchange): no step barrier
  int share = 0;       // shared staging (kSharedStaging): blocks per cluster that share it (the
                       // launch's cluster size in grid modes too; blocks is then a multiple of
                       // it); 0: every block stages its rows itself
  int split = 0;       // split reduction (kSplitK): blocks per cluster that split it (grid
                       // modes; blocks is a multiple of it); 0: each block the whole reduction
  size_t smem = 0;
};

struct DeviceLimits {
  int sms = 0;
  size_t smem_optin = 0;
  bool cooperative = false;
  int major = 0;  // compute capability
};

#if !defined(FUSED_RNN_WARP_EMULATION)
DeviceLimits device_limits() {
  int dev = 0, sms = 0, smem = 0, coop = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return {sms, static_cast<size_t>(smem), coop != 0, major};
}
#endif

// Tuning settings of the persistent kernels, for measuring variants on a GPU (benchmarks/
// persistent_sweep.py); the defaults are what the measurements chose. Read from the environment
// at every launch:
//   FUSED_RNN_PERSISTENT_UNITS=n      at least n hidden units per block (fewer, busier blocks;
//                                     grid modes)
//   FUSED_RNN_PERSISTENT_BARRIER=grid|counter|cluster|tagged   the per-step barrier:
//                                     cooperative groups' grid.sync(), one release-add /
//                                     acquire-poll counter, none (tagged: the rows travel as
//                                     words tagged with their step, which the next staging
//                                     polls, kTaggedExchange; not float64: grid), or (sm_90+)
//                                     cluster mode: independent
//                                     thread-block clusters, each holding the whole W_hh over
//                                     its C blocks and taking a share of the batch rows, with
//                                     the cluster's barrier per step (BlockShare); where no
//                                     cluster holds the weights, the grid barrier
//   FUSED_RNN_PERSISTENT_CLUSTER=n    cluster mode: n blocks per cluster (1-16; default: 8, or
//                                     16 where 8 cannot hold the weights)
//   FUSED_RNN_PERSISTENT_EXCHANGE=l2|dsmem   cluster mode: the rows of h / d_gates travel
//                                     through global memory (L2; every block stages them) or
//                                     through distributed shared memory (each block writes its
//                                     new values into every block of its cluster: no staging;
//                                     needs two buffers of the cluster's rows)
//   FUSED_RNN_PERSISTENT_PROFILE=1    keep the phase clock of each launch (PhaseClock; read
//                                     with fused_rnn._C._persistent_profile); each launch then
//                                     waits for the kernel to finish
//   FUSED_RNN_PERSISTENT_PRODUCT=fma|mma   the per-step products on CUDA cores (fma, in the
//                                     accumulation type) or on tensor cores (mma, block_mma:
//                                     fp16 / bf16 operands as stored, fp32 accumulators; float32
//                                     as tf32, only while torch allows TF32 in float32 matrix
//                                     products, torch.backends.cuda.matmul.allow_tf32, as the
//                                     general path's cuBLAS GEMMs do; float64, float32 without
//                                     that permission and devices before sm_80: CUDA cores)
//   FUSED_RNN_PERSISTENT_STAGING=loads|async|shared   rows of h_prev / d_gates into shared
//                                     memory by loads (stage_rows), by cp.async
//                                     (stage_rows_async, where the staged rows keep the stored
//                                     type and 16-byte alignment), or (sm_90+) shared within
//                                     thread-block clusters (kSharedStaging: each block loads
//                                     1/C of the rows and stores them into all C blocks of its
//                                     cluster; in grid modes the launch gets clusters of
//                                     FUSED_RNN_PERSISTENT_CLUSTER blocks, default 8, and the
//                                     grid is padded to whole clusters with blocks that own no
//                                     units; where it cannot, and for float64, loads)
//   FUSED_RNN_PERSISTENT_SPLIT=n      (sm_90+, grid and counter barriers; n = 2-16, 1: off, the
//                                     default) the split reduction (kSplitK): clusters of n
//                                     blocks, each block a 1/n share of the reduction columns
//                                     for the cluster's units; tried first, before shared
//                                     staging; where it does not fit: without it
enum class Barrier { kGrid = 0, kCounter = 1, kCluster = 2, kTagged = 3 };
enum class Staging { kLoads = 0, kAsync = 1, kShared = 2 };

struct Tuning {
  int64_t min_units = 1;
  Barrier barrier = Barrier::kGrid;
  int cluster_size = 0;  // 0: the plan chooses
  bool dsmem = false;
  bool profile = false;
  bool mma = false;
  Staging staging = Staging::kLoads;
  int split = 1;  // blocks splitting the reduction; 1: none
  bool test_stall = false;  // kTestStall: a test of the spin wait's watchdog
};

// The index in `names` of environment variable `name`'s value; `fallback` when unset or empty;
// raises otherwise.
int env_choice(const char* name, const std::vector<std::string>& names, int fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  const std::string v(env);
  for (size_t i = 0; i < names.size(); ++i) {
    if (v == names[i]) return static_cast<int>(i);
  }
  std::string allowed;
  for (size_t i = 0; i < names.size(); ++i) {
    allowed += (i == 0 ? "'" : i + 1 == names.size() ? " or '" : ", '") + names[i] + "'";
  }
  TORCH_CHECK(false, "fused_rnn: ", name, " must be ", allowed, ", got '", v, "'");
}

// The integer value of environment variable `name` in [lo, hi]; `fallback` when unset or empty.
int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  TORCH_CHECK(*end == '\0' && v >= lo && v <= hi, "fused_rnn: ", name,
              " must be an integer in [", std::to_string(lo), ", ", std::to_string(hi),
              "], got '", env, "'");  // integers as strings: see checks.h, num()
  return v;
}

Tuning tuning() {
  Tuning t;
  t.min_units = env_int("FUSED_RNN_PERSISTENT_UNITS", 1, 4096, 1);
  t.barrier = static_cast<Barrier>(
      env_choice("FUSED_RNN_PERSISTENT_BARRIER", {"grid", "counter", "cluster", "tagged"}, 0));
  t.cluster_size = static_cast<int>(env_int("FUSED_RNN_PERSISTENT_CLUSTER", 1, 16, 0));
  t.dsmem = env_choice("FUSED_RNN_PERSISTENT_EXCHANGE", {"l2", "dsmem"}, 0) == 1;
  t.mma = env_choice("FUSED_RNN_PERSISTENT_PRODUCT", {"fma", "mma"}, 0) == 1;
  t.staging = static_cast<Staging>(
      env_choice("FUSED_RNN_PERSISTENT_STAGING", {"loads", "async", "shared"}, 0));
  t.split = static_cast<int>(env_int("FUSED_RNN_PERSISTENT_SPLIT", 1, 16, 1));
  t.test_stall = env_int("FUSED_RNN_PERSISTENT_TEST_STALL", 0, 1, 0) == 1;
  TORCH_CHECK(!t.test_stall || t.barrier == Barrier::kCounter,
              "fused_rnn: FUSED_RNN_PERSISTENT_TEST_STALL=1 (a test of the counter barrier's "
              "watchdog) needs FUSED_RNN_PERSISTENT_BARRIER=counter");
  if (const char* env = std::getenv("FUSED_RNN_PERSISTENT_PROFILE"); env && *env) {
    t.profile = std::string(env) != "0";
  }
  return t;
}

// The plan for B rows, hidden size H, G gates, storage type S, products on tensor cores or not,
// one grid (cluster == 0) or clusters of `cluster` blocks, exchanging rows through distributed
// shared memory or not, staging shared within clusters of `share` blocks or not (0; cluster
// mode: share == cluster), the reduction split over clusters of `split` blocks or not (0; grid
// modes only, without sharing) (shared memory as laid out in the kernels); false: does not fit.
template <typename S>
bool make_plan(int G, int64_t B, int64_t H, bool backward, bool mma, int cluster, bool dsmem,
               int share, int split, const DeviceLimits& d, int64_t min_units, Plan& plan) {
  const int64_t asize = sizeof(acc_t<S>);             // bytes of an accumulator
  const int64_t esize = mma ? sizeof(S) : asize;      // bytes of an element of W and X
  if (B < 1 || H < 1 || d.sms < 1 || (cluster == 0 && !d.cooperative)) return false;
  if (B > (1 << 16) || G * H * H >= (int64_t{1} << 31)) return false;
  int64_t U = std::min(H, std::max((H + d.sms - 1) / d.sms, min_units));
  // blocks of the grid modes for `units` per block: whole clusters where the staging is shared
  // (padded with blocks that own no units) or the reduction split (clusters of split * units)
  const auto grid_blocks = [&](int64_t units) {
    if (split > 0) return (H + split * units - 1) / (split * units) * split;
    const int64_t blocks = (H + units - 1) / units, c = std::max(share, 1);
    return (blocks + c - 1) / c * c;
  };
  if (split > 0 && (split < 2 || cluster > 0 || dsmem || share > 0)) return false;
  if ((share > 0 || split > 0) && cluster == 0) {
    if (std::max(share, split) > d.sms) return false;
    while (grid_blocks(U) > d.sms) ++U;  // ends: one unit-owning block (cluster) fits
  }
  if (cluster > 0 && share > 0 && share != cluster) return false;
  int64_t groups = 1, Bq = B;  // clusters, batch rows per block
  if (cluster > 0) {
    if (cluster > d.sms || H < cluster) return false;
    U = (H + cluster - 1) / cluster;
    groups = std::min<int64_t>(B, std::max(1, d.sms / cluster));  // clusters on the chip at once
    Bq = (B + groups - 1) / groups;
    groups = (B + Bq - 1) / Bq;
  }
  B = Bq;  // from here on: a block's batch rows
  const int64_t Uc = std::max(split, 1) * U;  // units whose weights a block keeps
  // slots of the inputs fetched ahead: forward x_t W_ih^T per gate; backward the forward's
  // values an element reads
  const int64_t segments = B * (backward ? backward_inputs_of(G) : G);
  const size_t slots = static_cast<size_t>(slot_bytes<S>(segments, static_cast<int>(U)));
  if (slots >= d.smem_optin) return false;
  // reduction length of a block (split: its share)
  const int64_t K = split_chunk(static_cast<int>(backward ? G * H : H), std::max(split, 1));
  const int64_t R = backward ? Uc : G * Uc;       // rows of the resident weight slice
  const int64_t ld = row_stride(static_cast<int>(K), static_cast<int>(esize), mma);
  const int64_t Rw = padded_rows(static_cast<int>(R), mma);
  // forward: gh [B, G*U], bias_x and bias_h [G*U], cs [B, U]; backward: mv, dh, dc [B, U]
  const int64_t per_batch = backward ? 3 * B * U : B * G * U + 2 * G * U + B * U;
  const int64_t fixed = Rw * ld * esize + (per_batch + kWarps * scratch_per_warp(mma)) * asize;
  // one staged row of X, and with the split its partial sums (gp / mvp: [rows, R])
  const int64_t row_bytes = ld * esize + (split > 0 ? R * asize : 0);
  const int64_t room = static_cast<int64_t>(d.smem_optin - slots);
  if (fixed + row_bytes > room) return false;  // not even 1 row
  int64_t rows = (room - fixed) / row_bytes;
  plan.bw = B >= 8 ? 8 : B >= 4 ? 4 : B >= 2 ? 2 : 1;
  int64_t buffers = 1;
  if (dsmem) {  // two buffers of all the block's rows
    if (cluster == 0 || rows < 2 * B) return false;
    rows = B;
    buffers = 2;
  }
  rows = std::min<int64_t>(rows, B);
  const int64_t whole = mma ? 8 : plan.bw;  // rows of a product tile: passes take whole tiles
  if (rows < B && rows > whole) rows -= rows % whole;
  plan.units = static_cast<int>(U);
  plan.staged_rows = static_cast<int>(rows);
  plan.blocks = static_cast<int>(cluster > 0 ? groups * cluster : grid_blocks(U));
  plan.mma = mma;
  plan.cluster = cluster;
  plan.group_rows = cluster > 0 ? static_cast<int>(Bq) : 0;
  plan.dsmem = dsmem;
  plan.share = share;
  plan.split = split;
  plan.smem = slots + static_cast<size_t>(fixed + buffers * rows * row_bytes);
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

#if !defined(FUSED_RNN_WARP_EMULATION)
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
#endif

// The kernels' `flags` argument for a plan.
int launch_flags(const Plan& plan, const Tuning& tune) {
  return (tune.staging == Staging::kAsync ? kAsyncStaging : 0) |
         (plan.cluster > 0 ? kClusterBarrier : 0) | (plan.dsmem ? kDsmemExchange : 0) |
         (plan.share > 0 ? kSharedStaging : 0) | (plan.tagged ? kTaggedExchange : 0) |
         (plan.split > 0 ? kSplitK : 0) | (tune.test_stall ? kTestStall : 0);
}

// The launch's blocks per cluster: cluster mode's, or in grid modes the shared staging's or the
// split reduction's (0: no clusters).
int launch_cluster(const Plan& plan) {
  return plan.cluster > 0 ? plan.cluster : plan.share > 0 ? plan.share : plan.split;
}

// How the rows were staged (the profile's element 14): 0 loads, 1 cp.async, 2 shared in clusters.
int staging_used(const Plan& plan, const Tuning& tune) {
  return plan.share > 0 ? 2 : tune.staging == Staging::kAsync ? 1 : 0;
}

#if !defined(FUSED_RNN_WARP_EMULATION)
// The launch configuration of a plan with clusters (cluster mode, or a grid mode with shared
// staging: then cooperative too, every block co-resident for the grid barrier, unless
// `cluster_only`: the occupancy query counts clusters). attr: room for its two attributes.
template <typename Kernel>
cudaLaunchConfig_t cluster_config(Kernel kernel, const Plan& plan, cudaStream_t stream,
                                  cudaLaunchAttribute (&attr)[2], bool cluster_only = false) {
  const int cluster = launch_cluster(plan);
  if (cluster > 8) {  // beyond the portable cluster size (H100 / H200: up to 16)
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  }
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeCooperative;
  attr[1].val.cooperative = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(plan.blocks);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = plan.cluster > 0 || cluster_only ? 1 : 2;
  return config;
}

// Blocks of the plan's kernel the device holds at once in clusters of the plan's size (whole
// clusters only: a cluster lives in one GPC).
template <typename Kernel>
int64_t resident_cluster_blocks(Kernel kernel, const Plan& plan) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.smem)));
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t config =
      cluster_config(kernel, plan, at::cuda::getCurrentCUDAStream(), attr, true);
  int resident = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&resident, kernel, &config));
  return static_cast<int64_t>(resident) * launch_cluster(plan);
}
#endif

// One launch of the plan: grid modes as one cooperative launch (every block co-resident, the
// grid barrier needs it; with shared staging in clusters too); cluster mode as clusters of
// plan.cluster blocks (cudaLaunchKernelEx; the clusters are independent, so they need not all
// be resident at once).
template <typename Kernel, typename Params>
void launch_persistent(Kernel kernel, const Params& p, const Plan& plan, const DeviceLimits& d,
                       const Tuning& tune, bool backward) {
  const bool counter_barrier = plan.cluster == 0 && tune.barrier == Barrier::kCounter;
  // tagged exchange: two buffers [B, K] of words, zeroed (no word carries a tag yet)
  const int64_t exchange_words =
      plan.tagged ? 2 * p.batch * (backward ? gates_of(p.cell) : 1) * p.hidden : 0;
#if defined(FUSED_RNN_WARP_EMULATION)  // the threads run as coroutines on the host
  (void)d;
  emulated_launch(kernel, plan.blocks, launch_cluster(plan), plan.smem, p, plan.units,
                  plan.staged_rows, launch_flags(plan, tune), plan.group_rows, counter_barrier,
                  exchange_words);
#else
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.smem)));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (plan.cluster == 0) {
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                                 plan.smem));
    TORCH_CHECK(per_sm * d.sms >= plan.blocks, "fused_rnn: persistent kernel needs ",
                std::to_string(plan.blocks), " co-resident blocks, the device holds ",
                std::to_string(per_sm * d.sms));  // integers as strings: see checks.h, num()
  }
  // counter: one zeroed word for the counter barrier. Freed to the caching allocator when this
  // function returns: it reuses the block only for work queued after the kernel on this stream.
  // (The same for the tagged exchange's words.)
  c10::DataPtr counter, clock, words;
  if (counter_barrier) {
    counter = at::cuda::getCUDADeviceAllocator()->allocate(sizeof(unsigned));
    C10_CUDA_CHECK(cudaMemsetAsync(counter.get(), 0, sizeof(unsigned), stream));
  }
  if (exchange_words > 0) {
    words = at::cuda::getCUDADeviceAllocator()->allocate(exchange_words * 8);
    C10_CUDA_CHECK(cudaMemsetAsync(words.get(), 0, exchange_words * 8, stream));
  }
  if (tune.profile) clock = at::cuda::getCUDADeviceAllocator()->allocate(kPhases * 8);
  Params params = p;
  int units = plan.units, rows = plan.staged_rows, group_rows = plan.group_rows;
  int flags = launch_flags(plan, tune);
  unsigned* barrier = static_cast<unsigned*>(counter.get());
  unsigned long long* exchange = static_cast<unsigned long long*>(words.get());
  long long* phases = static_cast<long long*>(clock.get());
  if (launch_cluster(plan) > 0) {
    cudaLaunchAttribute attr[2];
    cudaLaunchConfig_t config = cluster_config(kernel, plan, stream, attr);
    // clusters of this shape the device holds at once
    const int64_t resident = resident_cluster_blocks(kernel, plan) / launch_cluster(plan);
    // cluster mode: one at a time will do; grid modes (shared staging, split reduction): all
    // at once
    const int64_t need = plan.cluster > 0 ? 1 : plan.blocks / launch_cluster(plan);
    TORCH_CHECK(resident >= need, "fused_rnn: the device holds ", std::to_string(resident),
                " clusters of ", std::to_string(launch_cluster(plan)), " blocks with ",
                std::to_string(plan.smem), " bytes of shared memory each at once, this launch "
                "needs ", std::to_string(need), "; set FUSED_RNN_PERSISTENT_CLUSTER, "
                "FUSED_RNN_PERSISTENT_STAGING, FUSED_RNN_PERSISTENT_SPLIT or "
                "FUSED_RNN_PERSISTENT_BARRIER");
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params, units, rows, flags, group_rows,
                                      barrier, exchange, phases));
  } else {
    void* args[] = {&params, &units, &rows, &flags, &group_rows, &barrier, &exchange, &phases};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                               dim3(plan.blocks), dim3(kThreads), args,
                                               plan.smem, stream));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (tune.profile) {
    long long host[kPhases];
    C10_CUDA_CHECK(cudaMemcpyAsync(host, phases, sizeof(host), cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    int dev = 0, khz = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev));
    record_profile(backward, {host[0],          host[1],         host[2],  host[3],
                              host[4],          host[5],         p.steps,  p.batch,
                              p.hidden,         plan.blocks,     plan.units, plan.staged_rows,
                              khz,              plan.mma,        staging_used(plan, tune),
                              plan.cluster,     plan.group_rows, plan.dsmem,
                              plan.share,       plan.tagged,     plan.split});
  }
#endif
}

// f(kernel) for the plan's kernel: tensor cores (one instantiation: the batch tile is theirs),
// or CUDA cores with the plan's batch rows per warp tile.
template <Cell kCell, typename S, template <Cell, int, typename, bool> class Pick, typename F>
void with_kernel_for_bw(const Plan& plan, F&& f) {
  if constexpr (!std::is_same_v<S, double>) {
    if (plan.mma) return f(Pick<kCell, 8, S, true>::kernel());
  }
  TORCH_CHECK(!plan.mma, "fused_rnn: no tensor-core persistent kernel for float64");
  switch (plan.bw) {
    case 8: return f(Pick<kCell, 8, S, false>::kernel());
    case 4: return f(Pick<kCell, 4, S, false>::kernel());
    case 2: return f(Pick<kCell, 2, S, false>::kernel());
    default: return f(Pick<kCell, 1, S, false>::kernel());
  }
}

template <Cell kCell, int kBW, typename S, bool kMma>
struct ForwardKernel {
  static auto kernel() { return &recurrence_forward_kernel<kCell, kBW, S, kMma>; }
};
template <Cell kCell, int kBW, typename S, bool kMma>
struct BackwardKernel {
  static auto kernel() { return &recurrence_backward_kernel<kCell, kBW, S, kMma>; }
};

// f(kernel) for the kernel of the cell and the plan.
template <typename S, template <Cell, int, typename, bool> class Pick, typename F>
void with_kernel(Cell cell, const Plan& plan, F&& f) {
  switch (cell) {
    case Cell::kGru: return with_kernel_for_bw<Cell::kGru, S, Pick>(plan, f);
    case Cell::kLstm: return with_kernel_for_bw<Cell::kLstm, S, Pick>(plan, f);
    case Cell::kRnnTanh: return with_kernel_for_bw<Cell::kRnnTanh, S, Pick>(plan, f);
    case Cell::kRnnRelu: return with_kernel_for_bw<Cell::kRnnRelu, S, Pick>(plan, f);
  }
}

template <typename S, typename Params, template <Cell, int, typename, bool> class Pick>
void launch_for_cell(Cell cell, const Params& p, const Plan& plan, const DeviceLimits& d,
                     const Tuning& t, bool backward) {
  with_kernel<S, Pick>(cell, plan,
                       [&](auto kernel) { launch_persistent(kernel, p, plan, d, t, backward); });
}

// The whole recurrence on the persistent kernel when the path setting and the shapes allow it;
// false: the caller runs the general path.
// The plan of one call: false where none fits. tf32: torch allows TF32 in float32 products.
template <typename S>
bool choose_plan(int G, int64_t B, int64_t H, bool backward, const DeviceLimits& d,
                 const Tuning& tune, bool tf32, Plan& plan) {
  // tensor cores where asked for and the type allows (see Tuning: FUSED_RNN_PERSISTENT_PRODUCT)
  bool mma = false;
  if constexpr (!std::is_same_v<S, double>) {
    mma = tune.mma && d.major >= 8 && (sizeof(S) == 2 || tf32);
  }
  // Plans tried in turn: cluster mode where asked for (sm_90+; the given cluster size, or 8
  // blocks, then 16; with the exchange through distributed shared memory where asked for, then
  // through L2), then one grid; each with tensor cores where asked for, then CUDA cores (their
  // layout needs less room in float32: no padding).
  // Shared staging where asked for (sm_90+; not float64: its kernels are compiled without it,
  // the LSTM backward's registers would spill, measured with ptxas): in cluster mode by the
  // cluster's blocks, in grid modes in clusters of the given size or 8; then without.
  std::vector<int> clusters;
  if (tune.barrier == Barrier::kCluster && d.major >= 9) {
    clusters = tune.cluster_size > 0 ? std::vector<int>{tune.cluster_size} : std::vector<int>{8, 16};
  }
  clusters.push_back(0);
  // the tagged exchange: one grid without a step barrier (not float64), its own staging
  const bool tagged = tune.barrier == Barrier::kTagged && !std::is_same_v<S, double>;
  const bool share = tune.staging == Staging::kShared && d.major >= 9 &&
                     !std::is_same_v<S, double> && !tagged;
  // The split reduction where asked for (sm_90+, the grid or counter barrier), tried first: with
  // tensor cores where asked for, then CUDA cores; then the plans below.
  // (not float64: its kernels are compiled without it, see the forward kernel)
  const bool split = tune.split > 1 && d.major >= 9 && !std::is_same_v<S, double> &&
                     (tune.barrier == Barrier::kGrid || tune.barrier == Barrier::kCounter);
  bool fits = false;
  for (const bool tensor_cores : {true, false}) {
    if (fits || !split || (tensor_cores && !mma)) continue;
    fits = make_plan<S>(G, B, H, backward, tensor_cores, 0, false, 0, tune.split, d,
                        tune.min_units, plan);
  }
  for (const int cluster : clusters) {
    const int shared_by = cluster > 0 ? cluster : tune.cluster_size > 0 ? tune.cluster_size : 8;
    for (const int sharing : {share ? shared_by : -1, 0}) {
      for (const bool dsmem : {true, false}) {
        for (const bool tensor_cores : {true, false}) {
          if (fits || sharing < 0 || (tensor_cores && !mma) ||
              (dsmem && (!tune.dsmem || cluster == 0))) {
            continue;
          }
          fits = make_plan<S>(G, B, H, backward, tensor_cores, cluster, dsmem, sharing, 0, d,
                              tune.min_units, plan);
        }
      }
    }
  }
  plan.tagged = fits && tagged;
  return fits;
}

#if !defined(FUSED_RNN_WARP_EMULATION)
template <typename S, typename Params, template <Cell, int, typename, bool> class Pick>
bool run_recurrence(const Params& p, bool backward) {
  if (cuda_path() == CudaPath::kGeneral || p.steps == 0 || p.batch == 0) return false;
  const DeviceLimits d = device_limits();
  const Tuning tune = tuning();
  const int G = gates_of(p.cell);
  const bool tf32 = at::globalContext().allowTF32CuBLAS();
  Plan plan;
  bool fits = choose_plan<S>(G, p.batch, p.hidden, backward, d, tune, tf32, plan);
  if (fits && launch_cluster(plan) > 0 && plan.cluster == 0) {
    // shared staging or the split reduction in a grid mode: every cluster resident at once, and
    // a GPC holds whole clusters only, so the device may hold fewer blocks in clusters than it
    // has SMs; plan again for as many as it holds
    int64_t resident = 0;
    with_kernel<S, Pick>(p.cell, plan,
                         [&](auto kernel) { resident = resident_cluster_blocks(kernel, plan); });
    if (resident < plan.blocks) {
      DeviceLimits fewer = d;
      fewer.sms = static_cast<int>(resident);
      fits = choose_plan<S>(G, p.batch, p.hidden, backward, fewer, tune, tf32, plan);
    }
  }
  if (!want_persistent(G, p.batch, p.hidden, fits, backward, sizeof(S) == 2)) return false;
  launch_for_cell<S, Params, Pick>(p.cell, p, plan, d, tune, backward);
  return true;
}
#endif

}  // namespace

#if !defined(FUSED_RNN_WARP_EMULATION)
// The entry points (cuda_kernels.h); persistent_<type>.cu instantiate them.
template <typename S>
bool recurrence_forward(const RecurrenceForward<S>& p) {
  return run_recurrence<S, RecurrenceForward<S>, ForwardKernel>(p, /*backward=*/false);
}

template <typename S>
bool recurrence_backward(const RecurrenceBackward<S>& p) {
  return run_recurrence<S, RecurrenceBackward<S>, BackwardKernel>(p, /*backward=*/true);
}
#endif

}  // namespace fused_rnn::cuda
