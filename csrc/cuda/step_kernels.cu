// CUDA step kernels of the general path: per time step ONE fused pointwise kernel, launched on
// the current stream after the step's hidden GEMM (cuBLAS through ATen). The elements are
// step_elements.cuh's (gate formulas from gates.h), computed in float (half types) or double.
// Offsets are 64-bit throughout.
// ATen / c10 headers only (no torch/extension.h): it keeps CUDA builds fast.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "cuda_kernels.h"
#include "step_elements.cuh"

namespace fused_rnn::cuda {
namespace {

constexpr int kThreads = 256;

template <typename S>
__device__ __forceinline__ acc_t<S> ld(const S* p) {
  return static_cast<acc_t<S>>(*p);
}

// Grid-stride loop over the B*H elements of one step.
#define FUSED_RNN_FOR_EACH_ELEMENT(n, i)                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename S>
__global__ void gru_forward_kernel(GruForwardStep<S> p) {
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    const S* gh = p.gh + b * p.gh_row;  // [3H]
    gru_forward_element<PlainLoad>(p, b, j, ld(gh + j), ld(gh + H + j), ld(gh + 2 * H + j));
  }
}

template <typename S>
__global__ void gru_backward_kernel(GruBackwardStep<S> p) {
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    gru_backward_element<PlainLoad>(p, b, j, p.dh + b * H + j);
  }
}

template <typename S>
__global__ void lstm_forward_kernel(LstmForwardStep<S> p) {  // gates already hold h W_hh^T
  const int64_t H = p.hidden;
  const acc_t<S> zero(0);
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    lstm_forward_element<PlainLoad>(p, b, j, zero, zero, zero, zero);
  }
}

template <typename S>
__global__ void lstm_backward_kernel(LstmBackwardStep<S> p) {
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    lstm_backward_element<PlainLoad>(p, b, j, p.dh + b * H + j, p.dc + b * H + j);
  }
}

template <bool kRelu, typename S>
__global__ void rnn_forward_kernel(RnnForwardStep<S> p) {  // pre already holds h W_hh^T
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    rnn_forward_element<kRelu, PlainLoad>(p, b, j, acc_t<S>(0));
  }
}

template <bool kRelu, typename S>
__global__ void rnn_backward_kernel(RnnBackwardStep<S> p) {
  const int64_t H = p.hidden;
  FUSED_RNN_FOR_EACH_ELEMENT(p.batch * H, i) {
    const int64_t b = i / H, j = i - b * H;
    rnn_backward_element<kRelu, PlainLoad>(p, b, j, p.dh + b * H + j);
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
                                      &gru_textbook_state_back<S>, &gru_textbook_gates_back<S>,
                                      &recurrence_forward<S>, &recurrence_backward<S>};
  return kernels;
}

template const StepKernels<float>& step_kernels<float>();
template const StepKernels<double>& step_kernels<double>();
template const StepKernels<c10::Half>& step_kernels<c10::Half>();
template const StepKernels<c10::BFloat16>& step_kernels<c10::BFloat16>();

}  // namespace fused_rnn::cuda
