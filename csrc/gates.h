// Gate math of every fused cell, written once.
//
// Every function here is a template on the element type `T` and is compiled for
//   * the CPU loops with T = at::vec::Vectorized<float/double> (one SIMD register of elements)
//     or a VecGroup of several such registers computed together (csrc/cpu/row_kernels.cpp), and
//   * the CUDA kernels with T = float / double (half types are computed in float).
// The only operations used are +, -, *, the constructor T(scalar) and the two activations of
// `Activations<T>`, which is specialised for the vector types next to the CPU loops.
// No other file writes a gate formula: tests on the CPU therefore cover the GPU's math.
//
// Naming: `gi_*` are input projections (x_t W_ih^T + b_ih), `gh_*` hidden projections
// (h_{t-1} W_hh^T + b_hh), all pre-activation, one element of one gate each.
#pragma once

#include <math.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn {

// sigmoid / tanh of one element (scalar types); vector types get their own specialisation.
template <typename T>
struct Activations;

// relu keeps NaN (as torch.relu); relu_grad(y) is 1 where the output y > 0, else 0.
template <>
struct Activations<float> {
  static FUSED_RNN_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  static FUSED_RNN_HD float tanh(float x) { return tanhf(x); }
  static FUSED_RNN_HD float relu(float x) { return x > 0.0f || x != x ? x : 0.0f; }
  static FUSED_RNN_HD float relu_grad(float y) { return y > 0.0f ? 1.0f : 0.0f; }
};

template <>
struct Activations<double> {
  static FUSED_RNN_HD double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  static FUSED_RNN_HD double tanh(double x) { return ::tanh(x); }
  static FUSED_RNN_HD double relu(double x) { return x > 0.0 || x != x ? x : 0.0; }
  static FUSED_RNN_HD double relu_grad(double y) { return y > 0.0 ? 1.0 : 0.0; }
};

// ---------------------------------------------------------------------------------------------
// GRU, PyTorch / cuDNN form (reset gate applied to W_hn h + b_hn), gate order r, z, n:
//   r = sigmoid(gi_r + gh_r)
//   z = sigmoid(gi_z + gh_z)
//   n = tanh(gi_n + r * gh_n)
//   h = (1 - z) * n + z * h_prev
// ---------------------------------------------------------------------------------------------
template <typename T>
FUSED_RNN_HD void gru_cell_forward(T gi_r, T gi_z, T gi_n, T gh_r, T gh_z, T gh_n, T h_prev,
                                   T& r, T& z, T& n, T& h) {
  using A = Activations<T>;
  r = A::sigmoid(gi_r + gh_r);
  z = A::sigmoid(gi_z + gh_z);
  n = A::tanh(gi_n + r * gh_n);
  h = n + z * (h_prev - n);
}

// Backward of gru_cell_forward for one element.
//   dh:       dL/dh of this step (from the output at this step plus from the next step)
//   r, z, n:  the activations saved by the forward; gh_n: the saved W_hn h_prev + b_hn
// Gives the gradients of the pre-activations. The r and z gates enter gi and gh the same way,
// so d_gh_r == d_gi_r and d_gh_z == d_gi_z; only the n gate differs (d_gh_n = d_gi_n * r).
// dh_prev_direct is the part of dL/dh_prev that does not go through W_hh.
template <typename T>
FUSED_RNN_HD void gru_cell_backward(T dh, T h_prev, T r, T z, T n, T gh_n,
                                    T& d_r, T& d_z, T& d_gi_n, T& d_gh_n, T& dh_prev_direct) {
  const T one(1);
  const T dn = dh * (one - z) * (one - n * n);  // through tanh
  const T dz = dh * (h_prev - n);
  const T dr = dn * gh_n;
  d_r = dr * r * (one - r);
  d_z = dz * z * (one - z);
  d_gi_n = dn;
  d_gh_n = dn * r;
  dh_prev_direct = dh * z;
}

// ---------------------------------------------------------------------------------------------
// GRU, textbook form (the lesson's; reset gate applied before the hidden matmul):
//   n = tanh(gi_n + (r * h_prev) W_hn^T + b_hn)
// A step runs in two halves around the second GEMM, which needs r * h_prev.
// ---------------------------------------------------------------------------------------------
// First half: the gates, and rh = r * h_prev for the GEMM. gh_*: h_prev W_h*^T + b_h*.
template <typename T>
FUSED_RNN_HD void gru_textbook_gates_forward(T gi_r, T gi_z, T gh_r, T gh_z, T h_prev, T& r,
                                             T& z, T& rh) {
  using A = Activations<T>;
  r = A::sigmoid(gi_r + gh_r);
  z = A::sigmoid(gi_z + gh_z);
  rh = r * h_prev;
}

// Second half: gh_n = (r * h_prev) W_hn^T + b_hn.
template <typename T>
FUSED_RNN_HD void gru_textbook_state_forward(T gi_n, T gh_n, T z, T h_prev, T& n, T& h) {
  n = Activations<T>::tanh(gi_n + gh_n);
  h = n + z * (h_prev - n);
}

// Backward, first half: dh: dL/dh of this step. Gives the pre-activation gradients of n (the
// same for gi_n and gh_n) and z, and dh_prev_direct = dh * z.
template <typename T>
FUSED_RNN_HD void gru_textbook_state_backward(T dh, T h_prev, T z, T n, T& d_n, T& d_z,
                                              T& dh_prev_direct) {
  const T one(1);
  d_n = dh * (one - z) * (one - n * n);
  d_z = dh * (h_prev - n) * z * (one - z);
  dh_prev_direct = dh * z;
}

// Backward, second half: d_rh = dL/d(r * h_prev) = d_n W_hn. Gives the pre-activation gradient
// of r and adds the path through r * h_prev to dh_prev_direct.
template <typename T>
FUSED_RNN_HD void gru_textbook_gates_backward(T d_rh, T h_prev, T r, T& d_r, T& dh_prev_direct) {
  d_r = d_rh * h_prev * r * (T(1) - r);
  dh_prev_direct = dh_prev_direct + d_rh * r;
}

// ---------------------------------------------------------------------------------------------
// LSTM, gate order i, f, g, o. `i, f, g, o` come in as pre-activations (gi + gh, both biases
// included) and leave as activations; those activations are what the backward needs.
//   c = f * c_prev + i * g,  h = o * tanh(c)
// ---------------------------------------------------------------------------------------------
template <typename T>
FUSED_RNN_HD void lstm_cell_forward(T& i, T& f, T& g, T& o, T c_prev, T& c, T& h) {
  using A = Activations<T>;
  i = A::sigmoid(i);
  f = A::sigmoid(f);
  g = A::tanh(g);
  o = A::sigmoid(o);
  c = f * c_prev + i * g;
  h = o * A::tanh(c);
}

// Backward of lstm_cell_forward for one element.
//   dh: dL/dh of this step; dc: in, dL/dc of this step coming from the next step; out, dL/dc_prev.
//   i, f, g, o: saved activations; c_prev, c: the cell states before and after this step.
// Gives the gradients of the four pre-activations (the same for gi and gh).
template <typename T>
FUSED_RNN_HD void lstm_cell_backward(T dh, T& dc, T i, T f, T g, T o, T c_prev, T c,
                                     T& d_i, T& d_f, T& d_g, T& d_o) {
  using A = Activations<T>;
  const T one(1);
  const T tc = A::tanh(c);
  const T dc_total = dc + dh * o * (one - tc * tc);
  d_o = dh * tc * o * (one - o);
  d_i = dc_total * g * i * (one - i);
  d_f = dc_total * c_prev * f * (one - f);
  d_g = dc_total * i * (one - g * g);
  dc = dc_total * f;
}

// ---------------------------------------------------------------------------------------------
// Elman RNN: h = act(gi + gh), act = tanh or relu (kRelu); `pre` includes both biases.
// The backward needs only the output h: tanh' = 1 - h^2, relu' = [h > 0].
// ---------------------------------------------------------------------------------------------
template <bool kRelu, typename T>
FUSED_RNN_HD T rnn_cell_forward(T pre) {
  using A = Activations<T>;
  if constexpr (kRelu) {
    return A::relu(pre);
  } else {
    return A::tanh(pre);
  }
}

// dh: dL/dh of this step, h: this step's output; gives dL/d(pre-activation).
template <bool kRelu, typename T>
FUSED_RNN_HD T rnn_cell_backward(T dh, T h) {
  using A = Activations<T>;
  if constexpr (kRelu) {
    return dh * A::relu_grad(h);
  } else {
    return dh * (T(1) - h * h);
  }
}

}  // namespace fused_rnn
