// One element (batch row b, hidden unit j) of one time step of each fused cell, for the CUDA
// kernels of both paths: the general path's per-step kernels (step_kernels.cu) and the
// persistent kernels (persistent_kernels.cuh). The gate formulas are gates.h's.
//
// `L` says how to read global memory: PlainLoad (ordinary loads) for the per-step kernels,
// L2Load (ld.global.cg, bypassing the multiprocessor's L1) for the persistent kernels, which read
// what other blocks wrote in the same launch. Each cell has a `*_values` function, which takes
// its inputs as values (the persistent kernels fetch them ahead of time), and an `*_element`
// wrapper that reads them from the step struct first. The hidden projections come in as values
// (`gh_*`, bias not added, in the wrappers), so each path keeps them where it likes (global or
// shared memory); `dh` / `dc` point at this element's running state gradient (global or shared
// memory). The optional `h_out` / `dg_out` of the `*_values` functions receive, as stored (rounded
// to S), the new state (forward) or the gate gradients the recurrence multiplies by W_hh
// (backward), for the persistent kernels' exchange through distributed shared memory.
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

// GRU (PyTorch form), from values: gi_* = x_t W_i*^T + b_i*, gh_* = h_prev W_h*^T + b_h*,
// h_prev = this element's previous state. The persistent kernels call this with values they
// fetched ahead of time; gru_forward_element below loads them first.
template <typename S>
__device__ __forceinline__ void gru_forward_values(const GruForwardStep<S>& p, int64_t b,
                                                   int64_t j, acc_t<S> gi_r, acc_t<S> gi_z,
                                                   acc_t<S> gi_n, acc_t<S> gh_r, acc_t<S> gh_z,
                                                   acc_t<S> gh_n, acc_t<S> h_prev,
                                                   acc_t<S>* h_out = nullptr) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  if (!active(p.lengths, p.t, b)) {  // carried state
    p.h[b * p.h_row + j] = static_cast<S>(h_prev);
    if (h_out) *h_out = static_cast<A>(static_cast<S>(h_prev));
    if (p.saved) {
      for (int k = 0; k < 4; ++k) p.saved[b * p.saved_row + k * H + j] = S(0);
    }
    return;
  }
  A r, z, n, h;
  gru_cell_forward<A>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, h_prev, r, z, n, h);
  p.h[b * p.h_row + j] = static_cast<S>(h);
  if (h_out) *h_out = static_cast<A>(static_cast<S>(h));
  if (p.saved) {
    S* saved = p.saved + b * p.saved_row;  // [4H]
    saved[j] = static_cast<S>(r);
    saved[H + j] = static_cast<S>(z);
    saved[2 * H + j] = static_cast<S>(n);
    saved[3 * H + j] = static_cast<S>(gh_n);
  }
}

// GRU. gh_*: h_prev W_h*^T without bias; the rest is read from p.
template <typename L, typename S>
__device__ __forceinline__ void gru_forward_element(const GruForwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> gh_r, acc_t<S> gh_z,
                                                    acc_t<S> gh_n) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
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
  gru_forward_values(p, b, j, gi_r, gi_z, gi_n, gh_r, gh_z, gh_n,
                     L::ld(p.h_prev + b * p.h_prev_row + j));
}

// GRU backward, from values: grad_h = dL/d(output at this step), h_prev, and the forward's
// saved r, z, n, gh_n of this element.
// dh: in: dL/dh from later steps; out: the part of dL/dh_prev not via W_hh.
template <typename S, typename D>
__device__ __forceinline__ void gru_backward_values(const GruBackwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> grad_h, acc_t<S> h_prev,
                                                    acc_t<S> r, acc_t<S> z, acc_t<S> n,
                                                    acc_t<S> gh_n, D* dh,
                                                    acc_t<S>* dg_out = nullptr) {  // [3]: d_gh
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* d_gi = p.d_gi + b * p.d_gi_row;  // [3H]
  S* d_gh = p.d_gh + b * p.d_gh_row;  // [3H]
  if (!active(p.lengths, p.t, b)) {  // dh passes through
    for (int k = 0; k < 3; ++k) d_gi[k * H + j] = d_gh[k * H + j] = S(0);
    if (dg_out) dg_out[0] = dg_out[1] = dg_out[2] = A(0);
    return;
  }
  A d_r, d_z, d_gi_n, d_gh_n, dh_direct;
  gru_cell_backward<A>(static_cast<A>(*dh) + grad_h, h_prev, r, z, n, gh_n, d_r, d_z, d_gi_n,
                       d_gh_n, dh_direct);
  d_gi[j] = d_gh[j] = static_cast<S>(d_r);
  d_gi[H + j] = d_gh[H + j] = static_cast<S>(d_z);
  d_gi[2 * H + j] = static_cast<S>(d_gi_n);
  d_gh[2 * H + j] = static_cast<S>(d_gh_n);
  *dh = static_cast<D>(dh_direct);
  if (dg_out) {
    dg_out[0] = static_cast<A>(static_cast<S>(d_r));
    dg_out[1] = static_cast<A>(static_cast<S>(d_z));
    dg_out[2] = static_cast<A>(static_cast<S>(d_gh_n));
  }
}

// GRU backward, reading its values from p.
template <typename L, typename S, typename D>
__device__ __forceinline__ void gru_backward_element(const GruBackwardStep<S>& p, int64_t b,
                                                     int64_t j, D* dh) {
  const int64_t H = p.hidden;
  const S* saved = p.saved + b * p.saved_row;  // [4H]
  gru_backward_values(p, b, j, L::ld(p.grad_h + b * p.grad_h_row + j),
                      L::ld(p.h_prev + b * p.h_prev_row + j), L::ld(saved + j),
                      L::ld(saved + H + j), L::ld(saved + 2 * H + j), L::ld(saved + 3 * H + j),
                      dh);
}

// LSTM, from values: a_* = the gate pre-activations (x_t W_i*^T + h_prev W_h*^T + bias),
// c_prev, h_prev = this element's previous states (h_prev: used only to carry the state of an
// inactive row; p.h_prev == nullptr means h = 0 there). Returns the new cell state.
template <typename S>
__device__ __forceinline__ acc_t<S> lstm_forward_values(const LstmForwardStep<S>& p, int64_t b,
                                                        int64_t j, acc_t<S> a_i, acc_t<S> a_f,
                                                        acc_t<S> a_g, acc_t<S> a_o,
                                                        acc_t<S> c_prev, acc_t<S> h_prev,
                                                        acc_t<S>* h_out = nullptr) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* gates = p.gates + b * p.gates_row;  // [4H]
  if (!active(p.lengths, p.t, b)) {  // carried state
    for (int k = 0; k < 4; ++k) gates[k * H + j] = S(0);
    p.c[b * p.c_row + j] = static_cast<S>(c_prev);
    const S h_kept = p.h_prev ? static_cast<S>(h_prev) : S(0);
    p.h[b * p.h_row + j] = h_kept;
    if (h_out) *h_out = static_cast<A>(h_kept);
    return c_prev;
  }
  A c, h;
  lstm_cell_forward<A>(a_i, a_f, a_g, a_o, c_prev, c, h);
  gates[j] = static_cast<S>(a_i);
  gates[H + j] = static_cast<S>(a_f);
  gates[2 * H + j] = static_cast<S>(a_g);
  gates[3 * H + j] = static_cast<S>(a_o);
  p.c[b * p.c_row + j] = static_cast<S>(c);
  p.h[b * p.h_row + j] = static_cast<S>(h);
  if (h_out) *h_out = static_cast<A>(static_cast<S>(h));
  return c;
}

// LSTM. gh_*: h_prev W_h*^T not yet in p.gates (the general path adds it by GEMM: zeros here).
template <typename L, typename S>
__device__ __forceinline__ void lstm_forward_element(const LstmForwardStep<S>& p, int64_t b,
                                                     int64_t j, acc_t<S> gh_i, acc_t<S> gh_f,
                                                     acc_t<S> gh_g, acc_t<S> gh_o) {
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  const S* gates = p.gates + b * p.gates_row;  // [4H]
  A gi = L::ld(gates + j) + gh_i, gf = L::ld(gates + H + j) + gh_f,
    gg = L::ld(gates + 2 * H + j) + gh_g, go = L::ld(gates + 3 * H + j) + gh_o;
  if (p.bias) {
    gi += L::ld(p.bias + j);
    gf += L::ld(p.bias + H + j);
    gg += L::ld(p.bias + 2 * H + j);
    go += L::ld(p.bias + 3 * H + j);
  }
  lstm_forward_values(p, b, j, gi, gf, gg, go, L::ld(p.c_prev + b * p.c_prev_row + j),
                      p.h_prev ? L::ld(p.h_prev + b * p.h_prev_row + j) : A(0));
}

// LSTM backward, from values: grad_h = dL/d(output at this step), the saved activations
// i, f, g, o, and the cell states c_prev, c of this element.
// dh: in: dL/dh from later steps; out: 0 (all of dL/dh_prev goes through W_hh).
// dc: in: dL/dc from later steps; out: dL/dc_prev.
template <typename S, typename D>
__device__ __forceinline__ void lstm_backward_values(const LstmBackwardStep<S>& p, int64_t b,
                                                     int64_t j, acc_t<S> grad_h, acc_t<S> i,
                                                     acc_t<S> f, acc_t<S> g, acc_t<S> o,
                                                     acc_t<S> c_prev, acc_t<S> c, D* dh, D* dc,
                                                     acc_t<S>* dg_out = nullptr) {  // [4]
  using A = acc_t<S>;
  const int64_t H = p.hidden;
  S* d_gates = p.d_gates + b * p.d_gates_row;  // [4H]
  if (!active(p.lengths, p.t, b)) {  // dh and dc pass through
    for (int k = 0; k < 4; ++k) d_gates[k * H + j] = S(0);
    if (dg_out) dg_out[0] = dg_out[1] = dg_out[2] = dg_out[3] = A(0);
    return;
  }
  A dc_v = static_cast<A>(*dc);
  A d_i, d_f, d_g, d_o;
  lstm_cell_backward<A>(static_cast<A>(*dh) + grad_h, dc_v, i, f, g, o, c_prev, c, d_i, d_f, d_g,
                        d_o);
  d_gates[j] = static_cast<S>(d_i);
  d_gates[H + j] = static_cast<S>(d_f);
  d_gates[2 * H + j] = static_cast<S>(d_g);
  d_gates[3 * H + j] = static_cast<S>(d_o);
  *dc = static_cast<D>(dc_v);
  *dh = D(0);
  if (dg_out) {
    dg_out[0] = static_cast<A>(static_cast<S>(d_i));
    dg_out[1] = static_cast<A>(static_cast<S>(d_f));
    dg_out[2] = static_cast<A>(static_cast<S>(d_g));
    dg_out[3] = static_cast<A>(static_cast<S>(d_o));
  }
}

// LSTM backward, reading its values from p.
template <typename L, typename S, typename D>
__device__ __forceinline__ void lstm_backward_element(const LstmBackwardStep<S>& p, int64_t b,
                                                      int64_t j, D* dh, D* dc) {
  const int64_t H = p.hidden;
  const S* gates = p.gates + b * p.gates_row;  // [4H]
  lstm_backward_values(p, b, j, L::ld(p.grad_h + b * p.grad_h_row + j), L::ld(gates + j),
                       L::ld(gates + H + j), L::ld(gates + 2 * H + j), L::ld(gates + 3 * H + j),
                       L::ld(p.c_prev + b * p.c_prev_row + j), L::ld(p.c + b * p.c_row + j), dh,
                       dc);
}

// Elman RNN, from values: pre = x_t W_ih^T + h_prev W_hh^T + bias, h_prev = this element's
// previous state (carried by an inactive row).
template <bool kRelu, typename S>
__device__ __forceinline__ void rnn_forward_values(const RnnForwardStep<S>& p, int64_t b,
                                                   int64_t j, acc_t<S> pre, acc_t<S> h_prev,
                                                   acc_t<S>* h_out = nullptr) {
  const S h = static_cast<S>(
      active(p.lengths, p.t, b) ? rnn_cell_forward<kRelu, acc_t<S>>(pre) : h_prev);
  p.h[b * p.h_row + j] = h;
  if (h_out) *h_out = static_cast<acc_t<S>>(h);
}

// Elman RNN. gh: h_prev W_hh^T not yet in p.pre (zero for the general path).
template <bool kRelu, typename L, typename S>
__device__ __forceinline__ void rnn_forward_element(const RnnForwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> gh) {
  using A = acc_t<S>;
  A x = L::ld(p.pre + b * p.pre_row + j) + gh;
  if (p.bias) x += L::ld(p.bias + j);
  rnn_forward_values<kRelu>(p, b, j, x, L::ld(p.h_prev + b * p.h_prev_row + j));
}

// Elman RNN backward, from values: grad_h = dL/d(output at this step), h = this step's output.
// dh: in: dL/dh from later steps; out: 0 (all of dL/dh_prev goes through W_hh).
template <bool kRelu, typename S, typename D>
__device__ __forceinline__ void rnn_backward_values(const RnnBackwardStep<S>& p, int64_t b,
                                                    int64_t j, acc_t<S> grad_h, acc_t<S> h,
                                                    D* dh, acc_t<S>* dg_out = nullptr) {  // [1]
  using A = acc_t<S>;
  S* d_pre = p.d_pre + b * p.d_pre_row + j;
  if (!active(p.lengths, p.t, b)) {  // dh passes through
    *d_pre = S(0);
    if (dg_out) *dg_out = A(0);
    return;
  }
  const S d = static_cast<S>(rnn_cell_backward<kRelu, A>(static_cast<A>(*dh) + grad_h, h));
  *d_pre = d;
  *dh = D(0);
  if (dg_out) *dg_out = static_cast<A>(d);
}

// Elman RNN backward, reading its values from p.
template <bool kRelu, typename L, typename S, typename D>
__device__ __forceinline__ void rnn_backward_element(const RnnBackwardStep<S>& p, int64_t b,
                                                     int64_t j, D* dh) {
  rnn_backward_values<kRelu>(p, b, j, L::ld(p.grad_h + b * p.grad_h_row + j),
                             L::ld(p.h + b * p.h_row + j), dh);
}

}  // namespace fused_rnn::cuda
