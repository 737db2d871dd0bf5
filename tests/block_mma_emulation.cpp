// Host emulation of the persistent kernels' tensor-core product, block_mma
// (csrc/cuda/block_products.cuh), so that its tiling, the split of the k steps over warps, the
// fixed-order sums of the parts and the output indexing are checked on a machine without a GPU,
// one product at a time against float64 (the whole kernels: test_persistent_emulation.py).
// The block's 256 threads run as coroutines (tests/cuda_host_emulation.h: __syncthreads() is a
// block barrier; each mma.sync gathers the 32 lanes' fragment registers and multiplies the
// 16 x k and k x 8 tiles they hold, with the register layouts of the PTX ISA ("Matrix Fragments
// for mma.m16n8k16 / mma.m16n8k8") written out there once more, independently of the header's
// load_a / load_b); the threads run in a random order between barriers (a read of a value
// before the barrier that orders its write shows). What it cannot check: the hardware itself (the GPU tests do that).
// Built (with AddressSanitizer where the compiler has it: reads outside W and X are errors) and
// run by tests/test_block_mma_emulation.py; prints one line per case, exit code 0 when all pass.
#include <random>
#include <vector>

#include "cuda_host_emulation.h"  // threads as coroutines, __syncthreads, mma.sync from PTX tables
#include "../csrc/cuda/block_products.cuh"

using fused_rnn::cuda::kWarps;

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
  emu::set_schedule(seed);  // threads in a random order (seed != 0) between barriers
  emu::run(1, 1, 0, case_body<E>);
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
