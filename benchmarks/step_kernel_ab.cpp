// A/B of two versions of the CPU step kernels (csrc/cpu/row_kernels.cpp) in one process:
// "old" is the AVX512 build of another checkout's row_kernels.cpp, "new" the AVX512 build of this
// one's, compiled under the namespace AVX512X. Each kernel runs 16 rows x 35 steps at H=256 (one
// thread's half of B=32), the two versions alternated 300 times; prints the median microseconds
// per step and whether both gave the same bits. Both checkouts must share step_params.h and
// row_kernels.h (the step structs and the kernel table). Built and run by step_kernel_ab.sh.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
#include <functional>
#include "../csrc/cpu/row_kernels.h"
namespace fused_rnn::cpu { extern const IsaKernels kIsaKernelsAVX512X; }
using namespace fused_rnn;
using namespace fused_rnn::cpu;
const int64_t T = 35, B = 32, H = 256;
std::mt19937 rng(0);
std::vector<float> randv(size_t n, float sc = 1) { std::normal_distribution<float> nd; std::vector<float> v(n); for (auto& x : v) x = nd(rng) * sc; return v; }
struct Buf { std::vector<float> a, b; };
void run(const char* name, std::function<void(const RowKernels<float>&, int which)> f) {
  std::vector<double> times[2];
  for (int rep = 0; rep < 300; ++rep)
    for (int v = 0; v < 2; ++v) {
      auto t0 = std::chrono::steady_clock::now();
      f(v ? kIsaKernelsAVX512X.f32 : kIsaKernelsAVX512.f32, v);
      times[v].push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / T);
    }
  for (int v = 0; v < 2; ++v) std::sort(times[v].begin(), times[v].end());
  printf("%-14s old %6.2f us  new %6.2f us  ratio %.2fx\n", name, times[0][150], times[1][150], times[0][150] / times[1][150]);
}
bool same(const std::vector<float>& a, const std::vector<float>& b) { return std::memcmp(a.data(), b.data(), a.size() * 4) == 0; }
int main() {
  // gi: [T, B, 4H] input projections (the GRU reads 3H of each row, the RNN H), gh: [B, 4H]
  // hidden projections, bias: [4H], grad: [T, B, H] output gradients, hs0: [T + 1, B, H] states
  auto gi = randv(T * B * 4 * H), gh = randv(B * 4 * H), bias = randv(4 * H, 0.1f), grad = randv(T * B * H);
  auto hs0 = randv((T + 1) * B * H, 0.5f);
  // GRU forward with saving
  { std::vector<float> hs[2] = {hs0, hs0}, sv[2] = {std::vector<float>(T * B * 4 * H), std::vector<float>(T * B * 4 * H)};
    run("gru_forward", [&](const RowKernels<float>& k, int w) { for (int64_t t = 0; t < T; ++t) {
      GruForwardStep<float> p{B, H, gi.data() + t * B * 3 * H, 3 * H, gh.data(), 3 * H, bias.data(), bias.data(),
        hs[w].data() + t * B * H, H, hs[w].data() + (t + 1) * B * H, H, sv[w].data() + t * B * 4 * H, 4 * H, t, nullptr};
      k.gru_forward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d %d\n", same(hs[0], hs[1]), same(sv[0], sv[1]));
    std::vector<float> dh[2] = {std::vector<float>(B * H), std::vector<float>(B * H)}, dgi[2] = {std::vector<float>(T * B * 3 * H), std::vector<float>(T * B * 3 * H)}, dgh[2] = {std::vector<float>(B * 3 * H), std::vector<float>(B * 3 * H)};
    run("gru_backward", [&](const RowKernels<float>& k, int w) { for (int64_t t = T - 1; t >= 0; --t) {
      GruBackwardStep<float> p{B, H, grad.data() + t * B * H, H, dh[w].data(), hs0.data() + t * B * H, H, sv[0].data() + t * B * 4 * H, 4 * H,
        dgi[w].data() + t * B * 3 * H, 3 * H, dgh[w].data(), 3 * H, t, nullptr};
      k.gru_backward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d %d %d\n", same(dh[0], dh[1]), same(dgi[0], dgi[1]), same(dgh[0], dgh[1])); }
  { std::vector<float> g[2] = {gi, gi}, c[2] = {hs0, hs0}, h[2] = {hs0, hs0};
    run("lstm_forward", [&](const RowKernels<float>& k, int w) { for (int64_t t = 0; t < T; ++t) {
      LstmForwardStep<float> p{B, H, g[w].data() + t * B * 4 * H, 4 * H, bias.data(), h[w].data() + t * B * H, H,
        c[w].data() + t * B * H, H, c[w].data() + (t + 1) * B * H, H, h[w].data() + (t + 1) * B * H, H, t, nullptr};
      k.lstm_forward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d %d\n", same(h[0], h[1]), same(c[0], c[1]));
    auto gates = randv(T * B * 4 * H, 0.3f);
    std::vector<float> dh[2] = {std::vector<float>(B * H), std::vector<float>(B * H)}, dc[2] = {std::vector<float>(B * H), std::vector<float>(B * H)}, dg[2] = {std::vector<float>(T * B * 4 * H), std::vector<float>(T * B * 4 * H)};
    run("lstm_backward", [&](const RowKernels<float>& k, int w) { for (int64_t t = T - 1; t >= 0; --t) {
      LstmBackwardStep<float> p{B, H, grad.data() + t * B * H, H, dh[w].data(), dc[w].data(), gates.data() + t * B * 4 * H, 4 * H,
        hs0.data() + t * B * H, H, hs0.data() + (t + 1) * B * H, H, dg[w].data() + t * B * 4 * H, 4 * H, t, nullptr};
      k.lstm_backward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d %d\n", same(dc[0], dc[1]), same(dg[0], dg[1])); }
  { std::vector<float> h[2] = {hs0, hs0};
    run("rnn_forward", [&](const RowKernels<float>& k, int w) { for (int64_t t = 0; t < T; ++t) {
      RnnForwardStep<float> p{B, H, gi.data() + t * B * H, H, bias.data(), h[w].data() + t * B * H, H, h[w].data() + (t + 1) * B * H, H, false, t, nullptr};
      k.rnn_forward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d\n", same(h[0], h[1]));
    std::vector<float> dh[2] = {std::vector<float>(B * H), std::vector<float>(B * H)}, dp[2] = {std::vector<float>(T * B * H), std::vector<float>(T * B * H)};
    run("rnn_backward", [&](const RowKernels<float>& k, int w) { for (int64_t t = T - 1; t >= 0; --t) {
      RnnBackwardStep<float> p{B, H, grad.data() + t * B * H, H, dh[w].data(), h[0].data() + (t + 1) * B * H, H, dp[w].data() + t * B * H, H, false, t, nullptr};
      k.rnn_backward(p, 0, B / 2, 0, H); } });
    printf("   same bits (per output): %d\n", same(dp[0], dp[1])); }
}
