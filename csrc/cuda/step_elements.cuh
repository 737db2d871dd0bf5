// One element (batch row b, hidden unit j) of one time step of each fused cell, for the CUDA
// kernels of both paths: the general path's per-step kernels (step_kernels.cu) and the
// persistent kernels (persistent_kernels.cu). The gate formulas are gates.h's.
//
// `L` says how to read global memory: PlainLoad (ordinary loads) for the per-step kernels,
// L2Load (ld.global.cg, bypassing the multiprocessor's L1) for the persistent kernels, which read
// what other blocks wrote in the same launch. The hidden projections come in as values (`gh_*`,
// bias not added), so each path keeps them where it likes (global memory or shared memory);
// `dh` / `dc` point at this element's running state gradient (global or shared memory).
// ATen / c10 headers only (no torch/extension.h).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../gates.h"
#include "../step_params.h"

namespace fused_rnn::cuda {

template <typename S>
using acc_t = at::opmath_type<S>;  // float for float / half / bfloat16, double for double

struct PlainLoad {
  template <typename S>
  static __device__ __forceinline__ acc_t<S> ld(const S* p) {
    return static_cast<acc_t<S>>(*p);
  }
};

struct L2Load {
  static __device__ __forceinline__ float ld(const float* p) { return __ldcg(p); }
  static __device__ __forceinline__ double ld(const double* p) { return __ldcg(p); }
  static __device__ __forceinline__ float ld(const c10::Half* p) {
    return static_cast<float>(
        c10::Half(__ldcg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits()));
  }
  static __device__ __forceinline__ float ld(const c10::BFloat16* p) {
    return static_cast<float>(c10::BFloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)),
                                            c10::BFloat16::from_bits()));
  }
};

__device__ __forceinline__ bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// GRU (PyTorch form). gh_*: h_prev W_h*^T without bias.
template <typename L, typename S>
__device__ __forceinline__ void gru_forward_element(const GruForwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> gh_r, acc_t<S> gh_z,
                                                    acc_t<S> gh_n) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  if (!active(p.lengths, p.t, b)) {  // carried state
    p.h[b * p.h_row + j] = static_cast<S>(L::ld(p.h_prev + b * p.h_prev_row + j));
    if (p.saved) {
      for (int k = 0; k < 4; ++k) p.saved[b * p.saved_row + k * H + j] = S(0);
    }
    return;
  }
  const S* gi = p.gi + b * p.gi_row;  // [3H]
  A gi_r = L::ld(gi + j), gi_z = L::ld(gi + H + j), gi_n = L::ld(gi + 2 * H + j);
  if (p.b_ih) {
    gi_r += L::ld(p.b_ih + j);
    gi_z += L::ld(p.b_ih + H + j);
    gi_n += L::ld(p.b_ih + 2 * H + j);
  }
  if (p.b_hh) {
    gh_r += L::ld(p.b_hh + j);
    gh_z += L::ld(p.b_hh + H + j);
    gh_n += L::ld(p.b_hh + 2 * H + j);
  }
  A r, z, n, h;
  gru_cell_forward<A>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, L::ld(p.h_prev + b * p.h_prev_row + j),
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

// dh: in: dL/dh from later steps; out: the part of dL/dh_prev not via W_hh.
template <typename L, typename S, typename D>
__device__ __forceinline__ void gru_backward_element(const GruBackwardStep<S>& p, int64_t b,
                                                     int64_t j, D* dh) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* d_gi = p.d_gi + b * p.d_gi_row;  // [3H]
  S* d_gh = p.d_gh + b * p.d_gh_row;  // [3H]
  if (!active(p.lengths, p.t, b)) {  // dh passes through
    for (int k = 0; k < 3; ++k) d_gi[k * H + j] = d_gh[k * H + j] = S(0);
    return;
  }
  const S* saved = p.saved + b * p.saved_row;  // [4H]
  A d_r, d_z, d_gi_n, d_gh_n, dh_direct;
  gru_cell_backward<A>(static_cast<A>(*dh) + L::ld(p.grad_h + b * p.grad_h_row + j),
                       L::ld(p.h_prev + b * p.h_prev_row + j), L::ld(saved + j),
                       L::ld(saved + H + j), L::ld(saved + 2 * H + j), L::ld(saved + 3 * H + j),
                       d_r, d_z, d_gi_n, d_gh_n, dh_direct);
  d_gi[j] = d_gh[j] = static_cast<S>(d_r);
  d_gi[H + j] = d_gh[H + j] = static_cast<S>(d_z);
  d_gi[2 * H + j] = static_cast<S>(d_gi_n);
  d_gh[2 * H + j] = static_cast<S>(d_gh_n);
  *dh = static_cast<D>(dh_direct);
}

// LSTM. gh_*: h_prev W_h*^T not yet in p.gates (the general path adds it by GEMM: zeros here).
template <typename L, typename S>
__device__ __forceinline__ void lstm_forward_element(const LstmForwardStep<S>& p, int64_t b,
                                                     int64_t j, acc_t<S> gh_i, acc_t<S> gh_f,
                                                     acc_t<S> gh_g, acc_t<S> gh_o) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* gates = p.gates + b * p.gates_row;  // [4H]
  if (!active(p.lengths, p.t, b)) {  // carried state
    for (int k = 0; k < 4; ++k) gates[k * H + j] = S(0);
    p.c[b * p.c_row + j] = static_cast<S>(L::ld(p.c_prev + b * p.c_prev_row + j));
    p.h[b * p.h_row + j] = p.h_prev ? static_cast<S>(L::ld(p.h_prev + b * p.h_prev_row + j))
                                    : S(0);
    return;
  }
  A gi = L::ld(gates + j) + gh_i, gf = L::ld(gates + H + j) + gh_f,
    gg = L::ld(gates + 2 * H + j) + gh_g, go = L::ld(gates + 3 * H + j) + gh_o;
  if (p.bias) {
    gi += L::ld(p.bias + j);
    gf += L::ld(p.bias + H + j);
    gg += L::ld(p.bias + 2 * H + j);
    go += L::ld(p.bias + 3 * H + j);
  }
  A c, h;
  lstm_cell_forward<A>(gi, gf, gg, go, L::ld(p.c_prev + b * p.c_prev_row + j), c, h);
  gates[j] = static_cast<S>(gi);
  gates[H + j] = static_cast<S>(gf);
  gates[2 * H + j] = static_cast<S>(gg);
  gates[3 * H + j] = static_cast<S>(go);
  p.c[b * p.c_row + j] = static_cast<S>(c);
  p.h[b * p.h_row + j] = static_cast<S>(h);
}

// dh: in: dL/dh from later steps; out: 0 (all of dL/dh_prev goes through W_hh).
// dc: in: dL/dc from later steps; out: dL/dc_prev.
template <typename L, typename S, typename D>
__device__ __forceinline__ void lstm_backward_element(const LstmBackwardStep<S>& p, int64_t b,
                                                      int64_t j, D* dh, D* dc) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* d_gates = p.d_gates + b * p.d_gates_row;  // [4H]
  if (!active(p.lengths, p.t, b)) {  // dh and dc pass through
    for (int k = 0; k < 4; ++k) d_gates[k * H + j] = S(0);
    return;
  }
  const S* gates = p.gates + b * p.gates_row;  // [4H]
  A dc_v = static_cast<A>(*dc);
  A d_i, d_f, d_g, d_o;
  lstm_cell_backward<A>(static_cast<A>(*dh) + L::ld(p.grad_h + b * p.grad_h_row + j), dc_v,
                        L::ld(gates + j), L::ld(gates + H + j), L::ld(gates + 2 * H + j),
                        L::ld(gates + 3 * H + j), L::ld(p.c_prev + b * p.c_prev_row + j),
                        L::ld(p.c + b * p.c_row + j), d_i, d_f, d_g, d_o);
  d_gates[j] = static_cast<S>(d_i);
  d_gates[H + j] = static_cast<S>(d_f);
  d_gates[2 * H + j] = static_cast<S>(d_g);
  d_gates[3 * H + j] = static_cast<S>(d_o);
  *dc = static_cast<D>(dc_v);
  *dh = D(0);
}

// Elman RNN. gh: h_prev W_hh^T not yet in p.pre (zero for the general path).
template <bool kRelu, typename L, typename S>
__device__ __forceinline__ void rnn_forward_element(const RnnForwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> gh) {
  using A = acc_t<S>;
  if (!active(p.lengths, p.t, b)) {  // carried state
    p.h[b * p.h_row + j] = static_cast<S>(L::ld(p.h_prev + b * p.h_prev_row + j));
    return;
  }
  A x = L::ld(p.pre + b * p.pre_row + j) + gh;
  if (p.bias) x += L::ld(p.bias + j);
  p.h[b * p.h_row + j] = static_cast<S>(rnn_cell_forward<kRelu, A>(x));
}

// dh: in: dL/dh from later steps; out: 0 (all of dL/dh_prev goes through W_hh).
template <bool kRelu, typename L, typename S, typename D>
__device__ __forceinline__ void rnn_backward_element(const RnnBackwardStep<S>& p, int64_t b,
                                                     int64_t j, D* dh) {
  using A = acc_t<S>;
  S* d_pre = p.d_pre + b * p.d_pre_row + j;
  if (!active(p.lengths, p.t, b)) {  // dh passes through
    *d_pre = S(0);
    return;
  }
  *d_pre = static_cast<S>(rnn_cell_backward<kRelu, A>(
      static_cast<A>(*dh) + L::ld(p.grad_h + b * p.grad_h_row + j), L::ld(p.h + b * p.h_row + j)));
  *dh = D(0);
}

}  // namespace fused_rnn::cuda
