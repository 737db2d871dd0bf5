// A/B of two versions of the CPU step kernels (csrc/cpu/row_kernels.cpp) in one process:
// "old" is the AVX512 build of another checkout's row_kernels.cpp, "new" the AVX512 build of this
// one's, compiled under the namespace AVX512X. Each kernel runs 16 rows x 35 steps at H=256 (one
// thread's half of B=32), the two versions alternated 300 times; prints the median microseconds
// per step and whether both gave the same bits. Both checkouts must share step_params.h and
// row_kernels.h (the step structs and the kernel table). Built and run by step_kernel_ab.sh.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "../csrc/cpu/row_kernels.h"

namespace fused_rnn::cpu {
extern const IsaKernels kIsaKernelsAVX512X;
}
using namespace fused_rnn;
using namespace fused_rnn::cpu;
using Buf = std::vector<float>;

constexpr int64_t T = 35, B = 32, H = 256, kRows = B / 2, kRounds = 300;

Buf random_buf(size_t n, float scale = 1.0f) {
  static std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  Buf v(n);
  for (auto& x : v) x = normal(rng) * scale;
  return v;
}

// body(kernels, version) runs all T steps of one kernel with version 0 (old) or 1 (new).
void time_kernel(const char* name, const std::function<void(const RowKernels<float>&, int)>& body) {
  std::vector<double> us[2];
  for (int round = 0; round < kRounds; ++round) {
    for (int v = 0; v < 2; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      body(v ? kIsaKernelsAVX512X.f32 : kIsaKernelsAVX512.f32, v);
      const auto t1 = std::chrono::steady_clock::now();
      us[v].push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / T);
    }
  }
  for (auto& u : us) std::sort(u.begin(), u.end());
  const double old_us = us[0][kRounds / 2], new_us = us[1][kRounds / 2];
  printf("%-14s old %6.2f us  new %6.2f us  ratio %.2fx\n", name, old_us, new_us, old_us / new_us);
}

void same_bits(const char* what, const Buf* pair) {
  const size_t bytes = pair[0].size() * sizeof(float);
  const bool same = std::memcmp(pair[0].data(), pair[1].data(), bytes) == 0;
  printf("   %s: %s\n", what, same ? "same bits" : "DIFFERENT BITS");
}

int main() {
  // gi: [T, B, 4H] projections (the GRU reads 3H of each row, the RNN H); gh: [B, 4H] hidden
  // projections; bias: [4H]; grad: [T, B, H] output gradients; states: [T + 1, B, H].
  const Buf gi = random_buf(T * B * 4 * H), gh = random_buf(B * 4 * H);
  const Buf bias = random_buf(4 * H, 0.1f), grad = random_buf(T * B * H);
  const Buf states = random_buf((T + 1) * B * H, 0.5f);
  const float* hs = states.data();

  Buf h[2] = {states, states}, saved[2] = {Buf(T * B * 4 * H), Buf(T * B * 4 * H)};
  time_kernel("gru_forward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = 0; t < T; ++t) {
      k.gru_forward({B, H, gi.data() + t * B * 3 * H, 3 * H, gh.data(), 3 * H, bias.data(),
                     bias.data(), h[v].data() + t * B * H, H, h[v].data() + (t + 1) * B * H, H,
                     saved[v].data() + t * B * 4 * H, 4 * H, t, nullptr},
                    0, kRows, 0, H);
    }
  });
  same_bits("h", h);
  same_bits("saved", saved);

  Buf dh[2] = {Buf(B * H), Buf(B * H)}, d_gi[2] = {Buf(T * B * 3 * H), Buf(T * B * 3 * H)};
  Buf d_gh[2] = {Buf(B * 3 * H), Buf(B * 3 * H)};
  time_kernel("gru_backward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = T - 1; t >= 0; --t) {
      k.gru_backward({B, H, grad.data() + t * B * H, H, dh[v].data(), hs + t * B * H, H,
                      saved[0].data() + t * B * 4 * H, 4 * H, d_gi[v].data() + t * B * 3 * H,
                      3 * H, d_gh[v].data(), 3 * H, t, nullptr},
                     0, kRows, 0, H);
    }
  });
  same_bits("dh", dh);
  same_bits("d_gi", d_gi);
  same_bits("d_gh", d_gh);

  Buf gates[2] = {gi, gi}, c[2] = {states, states}, hl[2] = {states, states};
  time_kernel("lstm_forward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = 0; t < T; ++t) {
      k.lstm_forward({B, H, gates[v].data() + t * B * 4 * H, 4 * H, bias.data(),
                      hl[v].data() + t * B * H, H, c[v].data() + t * B * H, H,
                      c[v].data() + (t + 1) * B * H, H, hl[v].data() + (t + 1) * B * H, H, t,
                      nullptr},
                     0, kRows, 0, H);
    }
  });
  same_bits("h", hl);
  same_bits("c", c);

  const Buf acts = random_buf(T * B * 4 * H, 0.3f);  // acts: [T, B, 4H] saved activations
  Buf ldh[2] = {Buf(B * H), Buf(B * H)}, dc[2] = {Buf(B * H), Buf(B * H)};
  Buf d_gates[2] = {Buf(T * B * 4 * H), Buf(T * B * 4 * H)};
  time_kernel("lstm_backward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = T - 1; t >= 0; --t) {
      k.lstm_backward({B, H, grad.data() + t * B * H, H, ldh[v].data(), dc[v].data(),
                       acts.data() + t * B * 4 * H, 4 * H, hs + t * B * H, H,
                       hs + (t + 1) * B * H, H, d_gates[v].data() + t * B * 4 * H, 4 * H, t,
                       nullptr},
                      0, kRows, 0, H);
    }
  });
  same_bits("dc", dc);
  same_bits("d_gates", d_gates);

  Buf hr[2] = {states, states};
  time_kernel("rnn_forward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = 0; t < T; ++t) {
      k.rnn_forward({B, H, gi.data() + t * B * H, H, bias.data(), hr[v].data() + t * B * H, H,
                     hr[v].data() + (t + 1) * B * H, H, false, t, nullptr},
                    0, kRows, 0, H);
    }
  });
  same_bits("h", hr);

  Buf rdh[2] = {Buf(B * H), Buf(B * H)}, d_pre[2] = {Buf(T * B * H), Buf(T * B * H)};
  time_kernel("rnn_backward", [&](const RowKernels<float>& k, int v) {
    for (int64_t t = T - 1; t >= 0; --t) {
      k.rnn_backward({B, H, grad.data() + t * B * H, H, rdh[v].data(),
                      hr[0].data() + (t + 1) * B * H, H, d_pre[v].data() + t * B * H, H, false, t,
                      nullptr},
                     0, kRows, 0, H);
    }
  });
  same_bits("d_pre", d_pre);
  return 0;
}
