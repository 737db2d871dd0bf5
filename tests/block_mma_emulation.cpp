// Host emulation of the persistent kernels' tensor-core product, block_mma
// (csrc/cuda/block_products.cuh), so that its tiling, the split of the k steps over warps, the
// fixed-order sums of the parts and the output indexing are checked on a machine without a GPU.
// The block's 256 threads run as coroutines on one OS thread (ucontext): __syncthreads() is a
// block barrier; each mma.sync gathers the 32 lanes' fragment registers and multiplies the
// 16 x k and k x 8 tiles they hold, with the register layouts of the PTX ISA ("Matrix Fragments
// for mma.m16n8k16 / mma.m16n8k8") written out here once more, independently of the header's
// load_a / load_b. What it cannot check: the hardware itself (the GPU tests do that).
// Built (with AddressSanitizer where the compiler has it: reads outside W and X are errors) and
// run by tests/test_block_mma_emulation.py; prints one line per case, exit code 0 when all pass.
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

using std::max;
using std::min;

#define __host__
#define __device__
#define __forceinline__ inline
#define FUSED_RNN_WARP_EMULATION 1

struct Dim3 {
  int x = 0;
};
Dim3 threadIdx;  // the running coroutine's

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
void __syncthreads();
unsigned emulated_tf32(float x);
template <typename E>
void emulated_mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]);

#include "../csrc/cuda/block_products.cuh"

using fused_rnn::cuda::kThreads;
using fused_rnn::cuda::kWarps;

// ---- coroutines: the block's threads, run in turn until each waits or ends ----------------------
namespace {
ucontext_t scheduler;
ucontext_t threads[kThreads];
bool finished[kThreads];
std::vector<std::vector<char>> stacks(kThreads, std::vector<char>(1 << 16));

void yield_thread() { swapcontext(&threads[threadIdx.x], &scheduler); }

struct Barrier {
  int count, arrived = 0;
  long generation = 0;
  explicit Barrier(int n) : count(n) {}
  void wait() {
    const long g = generation;
    if (++arrived == count) {
      arrived = 0;
      ++generation;
      return;
    }
    while (generation == g) yield_thread();
  }
};

Barrier block_barrier(kThreads);

// One warp's mma.sync: every lane leaves its registers here, lane 0 multiplies, all take theirs.
struct WarpExchange {
  unsigned a[32][4], b[32][2];
  float c[32][4];
  Barrier barrier{32};
};
WarpExchange warps[kWarps];

void (*thread_body)();
void thread_entry() {
  thread_body();
  finished[threadIdx.x] = true;
}

// Runs body() on kThreads coroutines until all of them return.
void run_block(void (*body)()) {
  thread_body = body;
  for (int i = 0; i < kThreads; ++i) {
    finished[i] = false;
    getcontext(&threads[i]);
    threads[i].uc_stack.ss_sp = stacks[i].data();
    threads[i].uc_stack.ss_size = stacks[i].size();
    threads[i].uc_link = &scheduler;
    makecontext(&threads[i], thread_entry, 0);
  }
  for (bool any = true; any;) {
    any = false;
    for (int i = 0; i < kThreads; ++i) {
      if (finished[i]) continue;
      any = true;
      threadIdx.x = i;
      swapcontext(&scheduler, &threads[i]);
    }
  }
}
}  // namespace

void __syncthreads() { block_barrier.wait(); }

// cvt.rna.tf32.f32: 10 mantissa bits, round to nearest, ties away from zero.
unsigned emulated_tf32(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // finite: half of the dropped 13 bits
  return u & ~0x1fffu;
}

template <typename E>
float element(unsigned reg, int half) {  // a 16-bit element of a packed pair (low first)
  const auto bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
  return static_cast<float>(E(bits, E::from_bits()));
}

template <typename E>
void emulated_mma(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  const int lane = threadIdx.x & 31;
  WarpExchange& w = warps[threadIdx.x >> 5];
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
          A[row][col] = element<E>(w.a[L][i / 2], i % 2);
        }
        for (int i = 0; i < 4; ++i) {  // b_i in register i / 2
          const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
          B[row][g] = element<E>(w.b[L][i / 2], i % 2);
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

// ---- one case: out[(b_base + n) * out_row + r] = sum_k W[r, k] X[n, k] ---------------------------
namespace {
struct Case {
  const void *W, *X;
  int R, nb, K, ld, out_row, b_base;
  float *out, *P;
} current_case;

template <typename E>
void case_body() {
  const Case& c = current_case;
  fused_rnn::cuda::block_mma(static_cast<const E*>(c.W), c.R, static_cast<const E*>(c.X), c.nb,
                             c.K, c.ld, c.out, c.out_row, c.b_base, c.P);
}

template <typename E>
float operand(float v, bool tf32) {  // a value as the products see it
  if (tf32) return __uint_as_float(emulated_tf32(v));
  return static_cast<float>(static_cast<E>(v));
}

template <typename E>
bool run_case(const char* type, int R, int nb, int K, unsigned seed) {
  constexpr bool kTf32 = sizeof(E) == 4;
  const int esize = sizeof(E), ld = fused_rnn::cuda::row_stride(K, esize, true);
  const int Rw = fused_rnn::cuda::padded_rows(R, true), out_row = R + 3, b_base = 2;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  // W: [Rw, ld] zero outside [R, K] (as the kernels load it; tf32 values for float32);
  // X: [nb, ld] zero from column K on. Exactly these sizes: built with AddressSanitizer (as the
  // test does), a read past either is an error.
  std::vector<E> W(static_cast<size_t>(Rw) * ld, E(0.f)), X(static_cast<size_t>(nb) * ld);
  std::vector<double> w_ref(static_cast<size_t>(R) * K), x_ref(static_cast<size_t>(nb) * K);
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < K; ++k) {
      const float v = operand<E>(uni(rng), kTf32);
      W[static_cast<size_t>(r) * ld + k] = E(v);
      w_ref[static_cast<size_t>(r) * K + k] = v;
    }
  }
  for (int n = 0; n < nb; ++n) {
    for (int k = 0; k < ld; ++k) {
      const float v = k >= K ? 0.f : uni(rng);
      X[static_cast<size_t>(n) * ld + k] = E(v);
      if (k < K) x_ref[static_cast<size_t>(n) * K + k] = operand<E>(v, kTf32);
    }
  }
  const float kPoison = -12345.f;
  std::vector<float> out(static_cast<size_t>(b_base + nb) * out_row, kPoison);
  std::vector<float> P(kWarps * fused_rnn::cuda::scratch_per_warp(true));
  current_case = {W.data(), X.data(), R, nb, K, ld, out_row, b_base, out.data(), P.data()};
  run_block(case_body<E>);
  int bad = 0, unwritten = 0, stray = 0;
  double worst = 0;
  for (int n = -b_base; n < nb; ++n) {
    for (int r = 0; r < out_row; ++r) {
      const float got = out[static_cast<size_t>(b_base + n) * out_row + r];
      if (n < 0 || r >= R) {  // not the product's: must stay untouched
        stray += got != kPoison;
        continue;
      }
      double want = 0, scale = 0;
      for (int k = 0; k < K; ++k) {
        const double p = w_ref[static_cast<size_t>(r) * K + k] * x_ref[static_cast<size_t>(n) * K + k];
        want += p;
        scale += std::fabs(p);
      }
      if (got == kPoison) {
        ++unwritten;
        continue;
      }
      const double err = std::fabs(got - want) / (scale + 1e-30);
      worst = std::max(worst, err);
      bad += !(err <= 1e-5);  // fp32 accumulation of exact products (NaN fails)
    }
  }
  const bool ok = bad == 0 && unwritten == 0 && stray == 0;
  std::printf("%s %s R=%d nb=%d K=%d: worst error %.2e (of sum |products|), %d wrong, "
              "%d unwritten, %d written outside\n",
              ok ? "ok  " : "FAIL", type, R, nb, K, worst, bad, unwritten, stray);
  return ok;
}
}  // namespace

int main() {
  // (R, nb, K): forward R = gates * units (GRU at H=256 on 132 SMs: 3 x 2 = 6 rows, K = H),
  // backward R = units (2), K = gates * H; one task (k split 8 ways), 3 and 4 tasks (split 2),
  // 16 tasks (no split, 2 per warp); partial tiles in R, nb and K.
  const int shapes[][3] = {{6, 1, 256},   {6, 32, 256}, {2, 32, 768},  {24, 64, 1024},
                           {32, 64, 1024}, {48, 5, 100}, {37, 37, 37},  {128, 64, 64},
                           {16, 8, 16},   {3, 9, 8}};
  bool ok = true;
  unsigned seed = 1;
  for (const auto& s : shapes) {
    ok &= run_case<c10::BFloat16>("bf16", s[0], s[1], s[2], seed++);
    ok &= run_case<c10::Half>("fp16", s[0], s[1], s[2], seed++);
    ok &= run_case<float>("tf32", s[0], s[1], s[2], seed++);
  }
  std::printf("%s\n", ok ? "all cases pass" : "SOME CASES FAIL");
  return ok ? 0 : 1;
}
