// Host emulation of the CUDA execution model, enough to run the persistent kernels
// (csrc/cuda/persistent_kernels.cuh, block_products.cuh) on a machine without a GPU: every
// thread of a launch is a coroutine (ucontext) on one OS thread, run until it waits;
// __syncthreads, the grid barrier and the cluster barrier wait for their threads (the counter
// barrier's atomics are plain accesses, its poll lets the others run first); warp shuffles and
// mma.sync exchange the 32 lanes' registers (mma from the PTX ISA's fragment tables, written out
// here apart from the kernels' loads); shared memory is one buffer per block, distributed shared
// memory maps an address to the same offset in another block of the cluster.
// Adversarial where the hardware leaves things open (emu::set_schedule(seed), seed != 0): each
// time a thread stops, a random ready thread of a random block runs next (some blocks run ahead
// of others up to the next barrier they share), and each cp.async reads its source and writes
// its destination at once or at the issuing thread's cp.async.wait_all (randomly), so a value
// read before the barrier or the wait that orders its write differs between schedules. Shared
// memory starts as NaN bytes (0xFF), so reading what no thread wrote shows, and becomes NaN
// again when the last thread of its block returns, so a block of the cluster that reads another
// block's shared memory after that block has exited reads NaN; a deadlock (a
// barrier some threads never reach, a poll whose value never comes), a cp.async never waited
// for and a misaligned cp.async are errors. What it checks: indexing, tiling, the order of
// phases and barriers, which rows go where, races between barriers. What it cannot: the memory
// model's fences and caches, timing, the hardware's own rounding (the mma sums in double).
// Include before the kernels, with FUSED_RNN_WARP_EMULATION defined by this header. Used by
// tests/block_mma_emulation.cpp and tests/persistent_emulation.cpp.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// everything the kernels include that must not see the keyword macros below
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

using std::max;
using std::min;

#define FUSED_RNN_WARP_EMULATION 1
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint4 {
  unsigned x, y, z, w;
};
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline Dim3 threadIdx, blockIdx, gridDim;  // the running coroutine's

namespace emu {

constexpr int kBlockThreads = 256;  // the kernels' kThreads
constexpr size_t kStack = 48 << 10;

// The schedule: 0 runs the threads in index order, round after round, and copies at once; any
// other seed schedules at random (splitmix64 from the seed): each time a thread stops at a
// barrier, the next to run is a random ready thread of a random block, the blocks weighted 1, 2,
// 4 or 8 (drawn per launch) so that some run ahead of others up to the next barrier they share;
// in every other launch (drawn) one block is a laggard, weighted 1 against 64-512: the others
// run as far as they can before most of its threads have moved (a block whose threads read
// shared memory early in a phase sees what a block ahead wrote there too soon); while threads
// only poll (spin) the blocks are drawn alike, so a laggard that others poll for runs; and each
// cp.async happens at a random time (see cp_async).
inline uint64_t schedule_state = 0;
inline void set_schedule(uint64_t seed) { schedule_state = seed; }
inline bool laggard_every_launch = false;  // random schedules: a laggard in every launch
inline void set_laggards(bool every_launch) { laggard_every_launch = every_launch; }
inline uint64_t random_bits() {
  uint64_t z = (schedule_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A cp.async in flight: its source is read at issue (`read`) or at the wait, its destination
// written at the wait.
struct Copy {
  void* dst;
  const void* src;
  int bytes;
  bool read;  // source already read into data
  unsigned char data[16];
};

void block_thread();          // the running thread waits until release_thread
void release_thread(int id);  // thread id may run again

// Barrier arrivals and threads finished: a thread that runs without adding to it only polled
// (spin); many such runs in a row and nothing else is a deadlock.
inline long progress = 0;

// Waits until `count` threads have arrived, then lets them all go on.
struct Barrier {
  int count = 0, arrived = 0;
  std::vector<int> waiting;
  void wait();
};

// One warp's exchange of registers (shuffles, mma.sync).
struct Warp {
  double value[32];
  unsigned a[32][4], b[32][2];
  float c[32][4];
  Barrier barrier{32};
};

struct Block {
  std::vector<unsigned char> smem;  // dynamic shared memory (malloc'd: 16-byte aligned)
  int returned = 0;                 // threads that have returned (all: smem is NaN again)
  Barrier barrier{kBlockThreads};
  Warp warps[kBlockThreads / 32];
};

// The running launch: its blocks, the grid barrier, one barrier per cluster, the threads.
struct Launch {
  int blocks = 0, cluster = 1;
  std::vector<std::unique_ptr<Block>> block;
  Barrier grid;
  std::vector<std::unique_ptr<Barrier>> clusters;
  std::vector<ucontext_t> context;
  std::vector<std::vector<char>> stacks;
  std::vector<char> finished, blocked;
  std::vector<std::vector<int>> ready;    // random schedules: each block's threads that can run
  std::vector<int> weight;                // random schedules: each block's share of the picks
  std::vector<std::vector<Copy>> copies;  // each thread's cp.async in flight
  std::string error;                      // what went wrong (run() throws it at the end)
  ucontext_t scheduler;
  std::function<void()> body;
  int current = 0;
};
inline Launch* launch = nullptr;

inline Block& this_block() { return *launch->block[blockIdx.x]; }

inline void block_thread() {
  launch->blocked[launch->current] = 1;
  swapcontext(&launch->context[launch->current], &launch->scheduler);
}

// A thread polling memory another thread will change (the counter barrier): the others run
// first, then it reads again.
inline void spin() {
  if (schedule_state) launch->ready[launch->current / kBlockThreads].push_back(launch->current);
  swapcontext(&launch->context[launch->current], &launch->scheduler);
}

inline void release_thread(int id) {
  launch->blocked[id] = 0;
  if (schedule_state) launch->ready[id / kBlockThreads].push_back(id);
}

inline void Barrier::wait() {
  ++progress;
  if (++arrived < count) {
    waiting.push_back(launch->current);
    block_thread();
    return;
  }
  arrived = 0;
  for (int id : waiting) release_thread(id);
  waiting.clear();
}

inline void thread_entry() {
  launch->body();
  if (!launch->copies[launch->current].empty() && launch->error.empty()) {
    launch->error = "thread " + std::to_string(launch->current % kBlockThreads) + " of block " +
                    std::to_string(launch->current / kBlockThreads) +
                    " ended with cp.async in flight (no cp.async.wait_all after it)";
  }
  launch->finished[launch->current] = 1;
  ++progress;
  Block& block = this_block();
  if (++block.returned == kBlockThreads) {  // the block has exited: its shared memory is gone
    std::fill(block.smem.begin(), block.smem.end(), 0xFF);
  }
}

// cp.async of `bytes` (4 or 16) bytes: at once, or (random schedules) queued until the thread's
// cp_async_wait_all, with the source read now or then.
inline void cp_async(void* dst, const void* src, int bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes != 0 &&
      launch->error.empty()) {  // the hardware faults (misaligned address)
    launch->error = "cp.async of " + std::to_string(bytes) + " bytes from or to an address " +
                    "not aligned to " + std::to_string(bytes);
  }
  const uint64_t r = schedule_state ? random_bits() % 3 : 0;
  if (r == 0) {
    std::memcpy(dst, src, bytes);
    return;
  }
  Copy c{dst, src, bytes, r == 1, {}};
  if (c.read) std::memcpy(c.data, src, bytes);
  launch->copies[launch->current].push_back(c);
}

inline void cp_async_wait_all() {
  std::vector<Copy>& mine = launch->copies[launch->current];
  for (const Copy& c : mine) std::memcpy(c.dst, c.read ? c.data : c.src, c.bytes);
  mine.clear();
}

// Runs thread i until it waits at a barrier or returns.
inline void resume(Launch& l, int i) {
  l.current = i;
  blockIdx.x = i / kBlockThreads;
  threadIdx.x = i % kBlockThreads;
  swapcontext(&l.scheduler, &l.context[i]);
}

// The next thread of a random schedule: a block drawn among those with ready threads, by weight
// (alike where `alike`), then one of its ready threads; -1 if none is ready.
inline int pick_ready(Launch& l, bool alike) {
  auto weight = [&](int b) { return l.ready[b].empty() ? 0 : alike ? 1 : l.weight[b]; };
  int total = 0;
  for (int b = 0; b < l.blocks; ++b) total += weight(b);
  if (total == 0) return -1;
  int r = static_cast<int>(random_bits() % total), b = 0;
  for (; r >= weight(b); ++b) r -= weight(b);
  std::vector<int>& q = l.ready[b];
  const size_t k = random_bits() % q.size();
  const int id = q[k];
  q[k] = q.back();
  q.pop_back();
  return id;
}

// Runs body() on every thread of `blocks` blocks (clusters of `cluster` blocks, `smem` bytes of
// dynamic shared memory each) until all return; throws std::runtime_error if a thread broke a
// rule the hardware would not report (cp.async never waited for) or the threads deadlock
// (all that have not returned wait at barriers the others do not reach, or only poll).
inline void run(int blocks, int cluster, size_t smem, std::function<void()> body) {
  Launch l;
  l.blocks = blocks;
  l.cluster = cluster;
  l.grid.count = blocks * kBlockThreads;
  for (int b = 0; b < blocks; ++b) {
    l.block.push_back(std::make_unique<Block>());
    l.block.back()->smem.assign(smem, 0xFF);  // NaN: the kernels must write what they read
  }
  for (int c = 0; c < blocks / cluster; ++c) {
    l.clusters.push_back(std::make_unique<Barrier>());
    l.clusters.back()->count = cluster * kBlockThreads;
  }
  const int n = blocks * kBlockThreads;
  l.context.resize(n);
  l.stacks.assign(n, std::vector<char>(kStack));
  l.finished.assign(n, 0);
  l.blocked.assign(n, 0);
  l.copies.assign(n, {});
  l.ready.assign(blocks, {});
  const bool laggard_launch =
      schedule_state && (random_bits() % 2 == 1 || laggard_every_launch);
  const int laggard = schedule_state ? static_cast<int>(random_bits() % blocks) : -1;
  for (int b = 0; b < blocks; ++b) {
    const int w = schedule_state ? 1 << (random_bits() % 4) : 1;
    l.weight.push_back(!laggard_launch ? w : b == laggard ? 1 : 64 * w);
    for (int t = 0; t < kBlockThreads; ++t) l.ready[b].push_back(b * kBlockThreads + t);
  }
  l.body = std::move(body);
  Launch* outer = launch;
  launch = &l;
  for (int i = 0; i < n; ++i) {
    getcontext(&l.context[i]);
    l.context[i].uc_stack.ss_sp = l.stacks[i].data();
    l.context[i].uc_stack.ss_size = kStack;
    l.context[i].uc_link = &l.scheduler;
    makecontext(&l.context[i], thread_entry, 0);
  }
  gridDim.x = blocks;
  int left = n;     // threads that have not returned
  long idle = 0;    // runs in a row that only polled
  while (left > 0) {
    bool ran = false;
    const long before = progress;
    if (schedule_state) {
      const int i = pick_ready(l, idle > 0);
      if (i >= 0) {
        resume(l, i);
        ran = true;
        left -= l.finished[i];
      }
    } else {
      for (int i = 0; i < n; ++i) {
        if (l.finished[i] || l.blocked[i]) continue;
        resume(l, i);
        ran = true;
        left -= l.finished[i];
      }
    }
    idle = progress == before ? idle + 1 : 0;
    if (!ran || idle > 4L * n) {  // the waiting threads' stacks are dropped with l
      launch = outer;
      throw std::runtime_error("host emulation: deadlock, every unfinished thread waits at a "
                               "barrier that the others do not reach, or polls memory that no "
                               "running thread will change");
    }
  }
  launch = outer;
  if (!l.error.empty()) throw std::runtime_error("host emulation: " + l.error);
}

inline Warp& this_warp() { return this_block().warps[threadIdx.x / 32]; }

}  // namespace emu

inline void __syncthreads() { emu::this_block().barrier.wait(); }
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "__trap() in the host emulation\n");
  std::abort();
}
inline long long clock64() { return 0; }

inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float __ldcg(const float* p) { return *p; }
inline double __ldcg(const double* p) { return *p; }
inline unsigned short __ldcg(const unsigned short* p) { return *p; }
inline uint4 __ldcg(const uint4* p) { return *p; }

// __shfl_xor_sync for the kernels' float / double values (all 32 lanes take part).
template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  emu::Warp& w = emu::this_warp();
  const int lane = threadIdx.x & 31;
  w.value[lane] = static_cast<double>(v);
  w.barrier.wait();
  const T got = static_cast<T>(w.value[lane ^ lane_mask]);
  w.barrier.wait();
  return got;
}

// cvt.rna.tf32.f32: 10 mantissa bits, round to nearest, ties away from zero.
inline unsigned emulated_tf32(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // finite: half of the dropped 13 bits
  return u & ~0x1fffu;
}

template <typename E>
float emulated_element(unsigned reg, int half) {  // a 16-bit element of a packed pair, low first
  const auto bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  return static_cast<float>(E(bits, E::from_bits()));
}

// mma.sync m16n8k16 (fp16 / bf16) or m16n8k8 (tf32), fp32 accumulators: every lane leaves its
// registers, lane 0 multiplies the tiles they hold (PTX ISA fragment tables), all take theirs.
template <typename E>
void emulated_mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  const int lane = threadIdx.x & 31;
  emu::Warp& w = emu::this_warp();
  std::memcpy(w.a[lane], a, sizeof(a));
  std::memcpy(w.b[lane], b, sizeof(b));
  std::memcpy(w.c[lane], c, sizeof(c));
  w.barrier.wait();
  if (lane == 0) {
    constexpr int kK = sizeof(E) == 2 ? 16 : 8;
    double A[16][16] = {}, B[16][8] = {};
    for (int L = 0; L < 32; ++L) {
      const int g = L >> 2, t = L & 3;
      if constexpr (sizeof(E) == 2) {
        for (int i = 0; i < 8; ++i) {  // a_i in register i / 2
          const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
          const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
          A[row][col] = emulated_element<E>(w.a[L][i / 2], i % 2);
        }
        for (int i = 0; i < 4; ++i) {  // b_i in register i / 2
          const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
          B[row][g] = emulated_element<E>(w.b[L][i / 2], i % 2);
        }
      } else {
        for (int i = 0; i < 4; ++i) {
          const int row = (i == 0 || i == 2) ? g : g + 8;
          const int col = (i < 2) ? t : t + 4;
          A[row][col] = __uint_as_float(w.a[L][i]);
        }
        B[t][g] = __uint_as_float(w.b[L][0]);
        B[t + 4][g] = __uint_as_float(w.b[L][1]);
      }
    }
    for (int L = 0; L < 32; ++L) {
      const int g = L >> 2, t = L & 3;
      for (int i = 0; i < 4; ++i) {
        const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
        double d = w.c[L][i];
        for (int k = 0; k < kK; ++k) d += A[row][k] * B[k][col];
        w.c[L][i] = static_cast<float>(d);
      }
    }
  }
  w.barrier.wait();
  std::memcpy(c, w.c[lane], sizeof(c));
  w.barrier.wait();  // all lanes have theirs before the next mma.sync overwrites them
}

// Cooperative groups: the grid and the thread-block cluster of the running thread.
namespace cooperative_groups {
struct grid_group {
  void sync() const { emu::launch->grid.wait(); }
};
inline grid_group this_grid() { return {}; }

struct cluster_group {
  unsigned block_rank() const { return blockIdx.x % emu::launch->cluster; }
  unsigned num_blocks() const { return static_cast<unsigned>(emu::launch->cluster); }
  void sync() const { emu::launch->clusters[blockIdx.x / emu::launch->cluster]->wait(); }
  // The same offset in the shared memory of block `rank` of this cluster.
  template <typename T>
  T* map_shared_rank(T* addr, unsigned rank) const {
    const ptrdiff_t offset =
        reinterpret_cast<unsigned char*>(addr) - emu::this_block().smem.data();
    const int first = blockIdx.x / emu::launch->cluster * emu::launch->cluster;
    return reinterpret_cast<T*>(emu::launch->block[first + rank]->smem.data() + offset);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

#define FUSED_RNN_DYNAMIC_SHARED(name) unsigned char* name = emu::this_block().smem.data()

// The persistent kernels' launch (launch_persistent in persistent_kernels.cuh): every block's
// threads run kernel(p, U, Bc, flags, group_rows, counter, exchange, no phase clock), counter: a
// zeroed word for the counter barrier, or none (grid.sync()); exchange: `exchange_words` zeroed
// words for the tagged exchange, or none.
template <typename Kernel, typename Params>
void emulated_launch(Kernel kernel, int blocks, int cluster, size_t smem, const Params& p, int U,
                     int Bc, int flags, int group_rows, bool counter_barrier,
                     int64_t exchange_words) {
  unsigned word = 0;
  unsigned* counter = counter_barrier ? &word : nullptr;
  std::vector<unsigned long long> words(exchange_words, 0);
  unsigned long long* exchange = exchange_words > 0 ? words.data() : nullptr;
  emu::run(blocks, cluster > 0 ? cluster : 1, smem,
           [&] { kernel(p, U, Bc, flags, group_rows, counter, exchange, nullptr); });
}
