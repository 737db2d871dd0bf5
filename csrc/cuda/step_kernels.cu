// CUDA step kernels of the general path: per time step ONE fused pointwise kernel, launched on
// the current stream after the step's hidden GEMM (cuBLAS through ATen). The gate formulas are
// gates.h's, instantiated on float (half types) or double. Offsets are 64-bit throughout.
// ATen / c10 headers only (no torch/extension.h): it keeps CUDA builds fast.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "../gates.h"
#include "cuda_kernels.h"

namespace fused_rnn::cuda {
namespace {

constexpr int kThreads = 256;

template <typename S>
using acc_t = at::opmath_type<S>;  // float for float / half / bfloat16, double for double

template <typename S>
__device__ __forceinline__ acc_t<S> ld(const S* p) {
  return static_cast<acc_t<S>>(*p);
}

__device__ __forceinline__ bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Grid-stride loop over the B*H elements of one step.
#define FUSED_RNN_FOR_EACH_ELEMENT(n, i)                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename S>
__global__ void gru_forward_kernel(GruForwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    if (!active(p.lengths, p.t, b)) {  // carried state
      p.h[b * p.h_row + j] = p.h_prev[b * p.h_prev_row + j];
      if (p.saved) {
        for (int k = 0; k < 4; ++k) p.saved[b * p.saved_row + k * H + j] = S(0);
      }
      continue;
    }
    const S* gi = p.gi + b * p.gi_row;  // [3H]
    const S* gh = p.gh + b * p.gh_row;  // [3H]
    A gi_r = ld(gi + j), gi_z = ld(gi + H + j), gi_n = ld(gi + 2 * H + j);
    A gh_r = ld(gh + j), gh_z = ld(gh + H + j), gh_n = ld(gh + 2 * H + j);
    if (p.b_ih) {
      gi_r += ld(p.b_ih + j);
      gi_z += ld(p.b_ih + H + j);
      gi_n += ld(p.b_ih + 2 * H + j);
    }
    if (p.b_hh) {
      gh_r += ld(p.b_hh + j);
      gh_z += ld(p.b_hh + H + j);
      gh_n += ld(p.b_hh + 2 * H + j);
    }
    A r, z, n, h;
    gru_cell_forward<A>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, ld(p.h_prev + b * p.h_prev_row + j),
                        r, z, n, h);
    p.h[b * p.h_row + j] = static_cast<S>(h);
    if (p.saved) {
      S* saved = p.saved + b * p.saved_row;  // [4H]
      saved[j] = static_cast<S>(r);
      saved[H + j] = static_cast<S>(z);
      saved[2 * H + j] = static_cast<S>(n);
      saved[3 * H + j] = static_cast<S>(gh_n);
    }
  }
}

template <typename S>
__global__ void gru_backward_kernel(GruBackwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* d_gi = p.d_gi + b * p.d_gi_row;  // [3H]
    S* d_gh = p.d_gh + b * p.d_gh_row;  // [3H]
    if (!active(p.lengths, p.t, b)) {  // dh passes through
      for (int k = 0; k < 3; ++k) d_gi[k * H + j] = d_gh[k * H + j] = S(0);
      continue;
    }
    const S* saved = p.saved + b * p.saved_row;  // [4H]
    S* dh = p.dh + b * H + j;
    A d_r, d_z, d_gi_n, d_gh_n, dh_direct;
    gru_cell_backward<A>(ld(dh) + ld(p.grad_h + b * p.grad_h_row + j),
                         ld(p.h_prev + b * p.h_prev_row + j), ld(saved + j), ld(saved + H + j),
                         ld(saved + 2 * H + j), ld(saved + 3 * H + j), d_r, d_z, d_gi_n, d_gh_n,
                         dh_direct);
    d_gi[j] = d_gh[j] = static_cast<S>(d_r);
    d_gi[H + j] = d_gh[H + j] = static_cast<S>(d_z);
    d_gi[2 * H + j] = static_cast<S>(d_gi_n);
    d_gh[2 * H + j] = static_cast<S>(d_gh_n);
    *dh = static_cast<S>(dh_direct);
  }
}

template <typename S>
__global__ void lstm_forward_kernel(LstmForwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* gates = p.gates + b * p.gates_row;  // [4H]
    if (!active(p.lengths, p.t, b)) {  // carried state
      for (int k = 0; k < 4; ++k) gates[k * H + j] = S(0);
      p.c[b * p.c_row + j] = p.c_prev[b * p.c_prev_row + j];
      p.h[b * p.h_row + j] = p.h_prev ? p.h_prev[b * p.h_prev_row + j] : S(0);
      continue;
    }
    A gi = ld(gates + j), gf = ld(gates + H + j), gg = ld(gates + 2 * H + j),
      go = ld(gates + 3 * H + j);
    if (p.bias) {
      gi += ld(p.bias + j);
      gf += ld(p.bias + H + j);
      gg += ld(p.bias + 2 * H + j);
      go += ld(p.bias + 3 * H + j);
    }
    A c, h;
    lstm_cell_forward<A>(gi, gf, gg, go, ld(p.c_prev + b * p.c_prev_row + j), c, h);
    gates[j] = static_cast<S>(gi);
    gates[H + j] = static_cast<S>(gf);
    gates[2 * H + j] = static_cast<S>(gg);
    gates[3 * H + j] = static_cast<S>(go);
    p.c[b * p.c_row + j] = static_cast<S>(c);
    p.h[b * p.h_row + j] = static_cast<S>(h);
  }
}

template <typename S>
__global__ void lstm_backward_kernel(LstmBackwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* d_gates = p.d_gates + b * p.d_gates_row;  // [4H]
    if (!active(p.lengths, p.t, b)) {  // dh and dc pass through
      for (int k = 0; k < 4; ++k) d_gates[k * H + j] = S(0);
      continue;
    }
    const S* gates = p.gates + b * p.gates_row;  // [4H]
    S* dc_ptr = p.dc + b * H + j;
    A dc = ld(dc_ptr);
    A d_i, d_f, d_g, d_o;
    lstm_cell_backward<A>(ld(p.dh + b * H + j) + ld(p.grad_h + b * p.grad_h_row + j), dc,
                          ld(gates + j), ld(gates + H + j), ld(gates + 2 * H + j),
                          ld(gates + 3 * H + j), ld(p.c_prev + b * p.c_prev_row + j),
                          ld(p.c + b * p.c_row + j), d_i, d_f, d_g, d_o);
    d_gates[j] = static_cast<S>(d_i);
    d_gates[H + j] = static_cast<S>(d_f);
    d_gates[2 * H + j] = static_cast<S>(d_g);
    d_gates[3 * H + j] = static_cast<S>(d_o);
    *dc_ptr = static_cast<S>(dc);
    p.dh[b * H + j] = S(0);  // all of dL/dh_prev goes through W_hh
  }
}

template <bool kRelu, typename S>
__global__ void rnn_forward_kernel(RnnForwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    if (!active(p.lengths, p.t, b)) {  // carried state
      p.h[b * p.h_row + j] = p.h_prev[b * p.h_prev_row + j];
      continue;
    }
    A x = ld(p.pre + b * p.pre_row + j);
    if (p.bias) x += ld(p.bias + j);
    p.h[b * p.h_row + j] = static_cast<S>(rnn_cell_forward<kRelu, A>(x));
  }
}

template <bool kRelu, typename S>
__global__ void rnn_backward_kernel(RnnBackwardStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* d_pre = p.d_pre + b * p.d_pre_row + j;
    if (!active(p.lengths, p.t, b)) {  // dh passes through
      *d_pre = S(0);
      continue;
    }
    S* dh = p.dh + b * H + j;
    *d_pre = static_cast<S>(rnn_cell_backward<kRelu, A>(
        ld(dh) + ld(p.grad_h + b * p.grad_h_row + j), ld(p.h + b * p.h_row + j)));
    *dh = S(0);  // all of dL/dh_prev goes through W_hh
  }
}

template <typename S>
__global__ void gru_textbook_gates_kernel(GruTextbookGatesStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* act = p.act + b * p.act_row;  // [3H]
    if (!active(p.lengths, p.t, b)) {
      for (int k = 0; k < 3; ++k) act[k * H + j] = S(0);
      p.rh[b * H + j] = S(0);
      continue;
    }
    const S* gi = p.gi + b * p.gi_row;  // [3H]
    const S* gh = p.gh + b * p.gh_row;  // [2H]
    A gi_r = ld(gi + j), gi_z = ld(gi + H + j), gh_r = ld(gh + j), gh_z = ld(gh + H + j);
    if (p.b_ih) {
      gi_r += ld(p.b_ih + j);
      gi_z += ld(p.b_ih + H + j);
    }
    if (p.b_hh) {
      gh_r += ld(p.b_hh + j);
      gh_z += ld(p.b_hh + H + j);
    }
    A r, z, rh;
    gru_textbook_gates_forward<A>(gi_r, gi_z, gh_r, gh_z, ld(p.h_prev + b * p.h_prev_row + j), r,
                                  z, rh);
    act[j] = static_cast<S>(r);
    act[H + j] = static_cast<S>(z);
    p.rh[b * H + j] = static_cast<S>(rh);
  }
}

template <typename S>
__global__ void gru_textbook_state_kernel(GruTextbookStateStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    const S* h_prev = p.h_prev + b * p.h_prev_row;
    if (!active(p.lengths, p.t, b)) {
      p.h[b * p.h_row + j] = h_prev[j];
      continue;
    }
    S* act = p.act + b * p.act_row;  // [3H]
    A x = ld(p.gi + b * p.gi_row + 2 * H + j), g = ld(p.gh_n + b * H + j);
    if (p.b_ih) x += ld(p.b_ih + 2 * H + j);
    if (p.b_hh) g += ld(p.b_hh + 2 * H + j);
    A n, h;
    gru_textbook_state_forward<A>(x, g, ld(act + H + j), ld(h_prev + j), n, h);
    act[2 * H + j] = static_cast<S>(n);
    p.h[b * p.h_row + j] = static_cast<S>(h);
  }
}

template <typename S>
__global__ void gru_textbook_state_back_kernel(GruTextbookStateBackStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    S* d_g = p.d_g + b * p.d_g_row;  // [3H]
    if (!active(p.lengths, p.t, b)) {  // dh passes through
      for (int k = 0; k < 3; ++k) d_g[k * H + j] = S(0);
      continue;
    }
    const S* act = p.act + b * p.act_row;  // [3H]
    S* dh = p.dh + b * H + j;
    A d_n, d_z, dh_direct;
    gru_textbook_state_backward<A>(ld(dh) + ld(p.grad_h + b * p.grad_h_row + j),
                                   ld(p.h_prev + b * p.h_prev_row + j), ld(act + H + j),
                                   ld(act + 2 * H + j), d_n, d_z, dh_direct);
    d_g[H + j] = static_cast<S>(d_z);
    d_g[2 * H + j] = static_cast<S>(d_n);
    *dh = static_cast<S>(dh_direct);
  }
}

template <typename S>
__global__ void gru_textbook_gates_back_kernel(GruTextbookGatesBackStep<S> p) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    if (!active(p.lengths, p.t, b)) continue;  // d_g zeroed by the first half
    S* dh = p.dh + b * H + j;
    A d_r, dh_direct = ld(dh);
    gru_textbook_gates_backward<A>(ld(p.d_rh + b * H + j), ld(p.h_prev + b * p.h_prev_row + j),
                                   ld(p.act + b * p.act_row + j), d_r, dh_direct);
    p.d_g[b * p.d_g_row + j] = static_cast<S>(d_r);
    *dh = static_cast<S>(dh_direct);
  }
}

template <typename Params>
void launch(void (*kernel)(Params), const Params& p) {
  const int64_t n = p.batch * p.hidden;
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20);
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename S>
void gru_forward(const GruForwardStep<S>& p) { launch(&gru_forward_kernel<S>, p); }
template <typename S>
void gru_backward(const GruBackwardStep<S>& p) { launch(&gru_backward_kernel<S>, p); }
template <typename S>
void lstm_forward(const LstmForwardStep<S>& p) { launch(&lstm_forward_kernel<S>, p); }
template <typename S>
void lstm_backward(const LstmBackwardStep<S>& p) { launch(&lstm_backward_kernel<S>, p); }
template <typename S>
void rnn_forward(const RnnForwardStep<S>& p) {
  launch(p.relu ? &rnn_forward_kernel<true, S> : &rnn_forward_kernel<false, S>, p);
}
template <typename S>
void rnn_backward(const RnnBackwardStep<S>& p) {
  launch(p.relu ? &rnn_backward_kernel<true, S> : &rnn_backward_kernel<false, S>, p);
}

template <typename S>
void gru_textbook_gates(const GruTextbookGatesStep<S>& p) {
  launch(&gru_textbook_gates_kernel<S>, p);
}
template <typename S>
void gru_textbook_state(const GruTextbookStateStep<S>& p) {
  launch(&gru_textbook_state_kernel<S>, p);
}
template <typename S>
void gru_textbook_state_back(const GruTextbookStateBackStep<S>& p) {
  launch(&gru_textbook_state_back_kernel<S>, p);
}
template <typename S>
void gru_textbook_gates_back(const GruTextbookGatesBackStep<S>& p) {
  launch(&gru_textbook_gates_back_kernel<S>, p);
}

}  // namespace

template <typename S>
const StepKernels<S>& step_kernels() {
  static const StepKernels<S> kernels{&gru_forward<S>,        &gru_backward<S>,
                                      &lstm_forward<S>,       &lstm_backward<S>,
                                      &rnn_forward<S>,        &rnn_backward<S>,
                                      &gru_textbook_gates<S>, &gru_textbook_state<S>,
                                      &gru_textbook_state_back<S>, &gru_textbook_gates_back<S>};
  return kernels;
}

template const StepKernels<float>& step_kernels<float>();
template const StepKernels<double>& step_kernels<double>();
template const StepKernels<c10::Half>& step_kernels<c10::Half>();
template const StepKernels<c10::BFloat16>& step_kernels<c10::BFloat16>();

}  // namespace fused_rnn::cuda
