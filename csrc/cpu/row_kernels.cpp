// Vectorised CPU loops of one time step. This file is compiled once per instruction set:
// setup.py builds it with -DCPU_CAPABILITY=AVX2 -mavx2 -mfma and -DCPU_CAPABILITY=AVX512
// -mavx512f ... as extra objects; in the ordinary build it is the portable DEFAULT variant.
// at::vec puts Vectorized<T> in the inline namespace CPU_CAPABILITY, so each build has its own
// types and functions. The gate formulas come from gates.h; here only loads and stores.
//
// bfloat16 rows are loaded into float vectors and computed in float.
// No scalar instantiation of the gate functions happens here: the tail of a row uses partial
// vector loads, so every element of a row goes through the same code, and no inline function
// compiled for AVX512 can be picked by the linker for a machine without it.
#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#endif

// GCC 12 reports its own AVX512 intrinsics (_mm512_reduce_add_ps, through at::vec's
// reduce_add) for using _mm512_undefined_*() (-Wuninitialized, a false positive): not for the
// lines of these headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <ATen/cpu/vec/functional.h>  // convert_from_float<BFloat16 / Half>
#include <ATen/cpu/vec/vec.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "../gates.h"
#include "row_kernels.h"
#include "transpose_16x16.h"

// The row loops' helpers and bodies are forced inline: GCC otherwise kept the group loads and
// the loop bodies out of line, passing each group through memory (1.3x slower).
#if defined(__GNUC__) || defined(__clang__)
#define FUSED_RNN_ALWAYS_INLINE __attribute__((always_inline))
#else
#define FUSED_RNN_ALWAYS_INLINE
#endif

#define FUSED_RNN_CAT2(a, b) a##b
#define FUSED_RNN_CAT(a, b) FUSED_RNN_CAT2(a, b)

namespace fused_rnn {

// Activations of one SIMD register of elements, for gates.h.
template <typename S>
struct Activations<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  // exp_u20: ATen's fast exp (a few ulp, clamps its argument to the finite range, so large
  // |x| saturate correctly); it would turn NaN into a number, so NaN is put back.
  static inline V exp(V x) { return V::blendv(x.exp_u20(), x, x.isnan()); }
  // 1 / d for d >= 1 (or NaN). float on AVX2 / AVX512: the hardware's approximate reciprocal
  // (12 / 14 bits) refined by two Newton steps in the form r + r * (1 - d * r), which gives
  // the correctly rounded quotient all but rarely (one step left tanh one ulp off +-1 near
  // saturation, where 1 - tanh^2 then is 1e-7 instead of 0: tests/test_modules_parity.py's
  // saturated gates). A division of 16 floats costs the AVX512 core ~16 cycles and waits ~20
  // more; the three of a GRU step were the hottest instructions of its forward kernel (perf
  // annotate). d is first capped at FLT_MAX (an infinite d would make the Newton step 0 * inf =
  // NaN).
  static inline V recip(V d) {
    if constexpr (kHardwareRecip) {
      const V one(S(1));
      const V dc = at::vec::minimum(V(std::numeric_limits<S>::max()), d);  // keeps NaN
      V r = approx_recip(dc);
      r = at::vec::fmadd(r, at::vec::fnmadd(dc, r, one), r);  // r + r * (1 - d * r)
      return at::vec::fmadd(r, at::vec::fnmadd(dc, r, one), r);
    }
    return V(S(1)) / d;
  }
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  static constexpr bool kHardwareRecip = std::is_same_v<S, float>;
#else
  static constexpr bool kHardwareRecip = false;
#endif
  // The hardware's approximate reciprocal (float, kHardwareRecip only).
  static inline V approx_recip(V d) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kHardwareRecip) return _mm512_rcp14_ps(d);
#elif defined(CPU_CAPABILITY_AVX2)
    if constexpr (kHardwareRecip) return _mm256_rcp_ps(d);
#endif
    return d;  // not used
  }
  // sigmoid(x) = 1 / (1 + exp(-x)), in two stages (VecGroup runs each stage over its registers).
  static inline V sigmoid_exp(V x) { return exp(x.neg()); }
  static inline V sigmoid_finish(V e) { return recip(V(S(1)) + e); }
  static inline V sigmoid(V x) { return sigmoid_finish(sigmoid_exp(x)); }
  // tanh(x) = 1 - 2 / (1 + exp(2x)): one exp and one reciprocal, several times cheaper than
  // Sleef's tanh; absolute error about one ulp of 1 (where |x| << 1 that is more than tanh's own
  // ulp, well inside what the recurrence's GEMMs round anyway). Saturates to +-1, keeps NaN.
  static inline V tanh_exp(V x) { return exp(x + x); }
  static inline V tanh_finish(V e) { return V(S(1)) - V(S(2)) * recip(V(S(1)) + e); }
  static inline V tanh(V x) { return tanh_finish(tanh_exp(x)); }
  static inline V relu(V x) { return at::vec::maximum(x, V(S(0))); }  // keeps NaN
  static inline V relu_grad(V y) { return V::blendv(V(S(0)), V(S(1)), y > V(S(0))); }
};

// kN SIMD registers computed as one value: each operation issues kN independent instructions in
// a row. A gate formula is one long chain of dependent operations (exp -> reciprocal -> the next
// gate's exp -> ...); with one register per loop iteration the core waited on that chain (the
// scheduler fills with its waiting operations before the next iteration's can start); with kN
// chains interleaved it overlaps them. The results are the same bits: every element still goes
// through the same operations.
template <typename V, int kN>
struct VecGroup {
  using Register = V;
  static constexpr int kRegisters = kN;
  V v[kN];
  VecGroup() = default;
  template <typename X, typename = std::enable_if_t<std::is_arithmetic_v<X>>>
  VecGroup(X s) {  // NOLINT(runtime/explicit): gates.h writes T(1)
    for (int i = 0; i < kN; ++i) v[i] = V(static_cast<typename V::value_type>(s));
  }
  template <typename F>
  static FUSED_RNN_ALWAYS_INLINE VecGroup map(F f) {
    VecGroup r;
    for (int i = 0; i < kN; ++i) r.v[i] = f(i);
    return r;
  }
  friend VecGroup operator+(const VecGroup& a, const VecGroup& b) {
    return map([&](int i) { return a.v[i] + b.v[i]; });
  }
  friend VecGroup operator-(const VecGroup& a, const VecGroup& b) {
    return map([&](int i) { return a.v[i] - b.v[i]; });
  }
  friend VecGroup operator*(const VecGroup& a, const VecGroup& b) {
    return map([&](int i) { return a.v[i] * b.v[i]; });
  }
};

// The activations of a group, stage by stage (all kN exps, then the kN rest), each stage the
// single-register one above.
template <typename V, int kN>
struct Activations<VecGroup<V, kN>> {
  using G = VecGroup<V, kN>;
  using One = Activations<V>;
  static inline G sigmoid(const G& x) {
    const G e = G::map([&](int i) { return One::sigmoid_exp(x.v[i]); });
    return G::map([&](int i) { return One::sigmoid_finish(e.v[i]); });
  }
  static inline G tanh(const G& x) {
    const G e = G::map([&](int i) { return One::tanh_exp(x.v[i]); });
    return G::map([&](int i) { return One::tanh_finish(e.v[i]); });
  }
  static inline G relu(const G& x) { return G::map([&](int i) { return One::relu(x.v[i]); }); }
  static inline G relu_grad(const G& y) {
    return G::map([&](int i) { return One::relu_grad(y.v[i]); });
  }
};

namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

template <typename S>
using Vec = at::vec::Vectorized<S>;

// The type the gate math runs in: bfloat16 rows are computed in float.
template <typename S>
struct Acc {
  using type = S;
};
template <>
struct Acc<c10::BFloat16> {
  using type = float;
};
template <>
struct Acc<c10::Half> {
  using type = float;
};
template <typename S>
using acc_t = typename Acc<S>::type;

// Elements [j, j + n) of a row, n <= Vec<acc_t<S>>::size(), as acc_t<S>.
template <typename S>
inline Vec<acc_t<S>> load(const S* p, int64_t n) {
  using A = acc_t<S>;
  if constexpr (std::is_same_v<S, A>) {
    return n == Vec<S>::size() ? Vec<S>::loadu(p) : Vec<S>::loadu(p, n);
  } else if (n == Vec<A>::size()) {  // ATen's conversion (vectorised in the AVX2 / AVX512 builds)
    Vec<A> v;
    if constexpr (std::is_same_v<S, c10::BFloat16>) {
      at::vec::load_fp32_from_bf16(p, v);
    } else {
      at::vec::load_fp32_from_fp16(p, v);
    }
    return v;
  } else {
    alignas(64) A tmp[Vec<A>::size()] = {};
    for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<A>(p[i]);
    return Vec<A>::loadu(tmp);
  }
}
template <typename S>
inline void store(const Vec<acc_t<S>>& v, S* p, int64_t n) {
  using A = acc_t<S>;
  if constexpr (std::is_same_v<S, A>) {
    if (n == Vec<S>::size()) {
      v.store(p);
    } else {
      v.store(p, n);
    }
  } else if (n == Vec<A>::size()) {
    // rounded to nearest, ties to even, as static_cast<S> rounds (NaN stays NaN)
    at::vec::convert_from_float<S>(v, v).store(p, static_cast<int>(n));
  } else {
    alignas(64) A tmp[Vec<A>::size()];
    v.store(tmp);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<S>(tmp[i]);
  }
}

// The row loops' unit: G = Group<S, N>, N registers of acc_t<S> computed together (VecGroup),
// N * Vec<acc_t<S>>::size() elements. Each kernel picks its N (benchmarks/step_kernel_ab.sh:
// 16 rows x 35 steps, H=256, AVX512, one thread, against one register): the forward kernels
// 1.3-1.8x faster with 2 or 4 (their activations are long chains); the GRU / LSTM backward
// kernels 0.8-0.9x with 2 (their work is stores; they keep 1).
template <typename S, int N>
using Group = VecGroup<Vec<acc_t<S>>, N>;

// The units [j, j + n) of one loop step: its groups are loaded from and stored to the rows at
// those units. N: std::integral_constant for whole groups (no masks), int64_t for the tail.
template <typename G, typename N>
struct Units {
  int64_t j;
  N n;
  // row[j, j + n) as a group; the elements past n are zero.
  template <typename S>
  FUSED_RNN_ALWAYS_INLINE G load(const S* row) const {
    constexpr int64_t W = G::Register::size();
    const S* p = row + j;
    G g;
    for (int i = 0; i < G::kRegisters; ++i) {
      const int64_t m = std::min<int64_t>(W, n - i * W);
      g.v[i] = m > 0 ? fused_rnn::cpu::load(p + i * W, m)
                     : typename G::Register(typename G::Register::value_type(0));
    }
    return g;
  }
  template <typename S>
  FUSED_RNN_ALWAYS_INLINE void store(const G& g, S* row) const {
    constexpr int64_t W = G::Register::size();
    S* p = row + j;
    for (int i = 0; i < G::kRegisters; ++i) {
      const int64_t m = std::min<int64_t>(W, n - i * W);
      if (m > 0) fused_rnn::cpu::store(g.v[i], p + i * W, m);
    }
  }
};

// Runs body(Units<G, .>) over the units [j_begin, j_end) in steps of one group: whole groups
// with a compile-time size, then the tail.
template <typename G, typename F>
inline FUSED_RNN_ALWAYS_INLINE void for_each_step(int64_t j_begin, int64_t j_end, F&& body) {
  using Whole = std::integral_constant<int64_t, G::kRegisters * G::Register::size()>;
  int64_t j = j_begin;
  for (; j + Whole::value <= j_end; j += Whole::value) body(Units<G, Whole>{j, Whole{}});
  if (j < j_end) body(Units<G, int64_t>{j, j_end - j});
}

inline bool active(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths == nullptr || t < lengths[b];
}

// Rows of inactive (finished or not yet started) sequences: carried state, zero gradients.
template <typename S>
inline void copy_row(S* dst, const S* src, int64_t n) {
  if (dst != src) std::copy(src, src + n, dst);
}
template <typename S>
inline void zero_row(S* dst, int64_t n) {
  std::fill(dst, dst + n, S(0));
}

template <typename S>
void gru_forward_rows(const GruForwardStep<S>& p, int64_t b_begin, int64_t b_end, int64_t j_begin,
                      int64_t j_end) {
  using G = Group<S, 2>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* gi = p.gi + b * p.gi_row;              // [3H]
    const S* gh = p.gh + b * p.gh_row;              // [3H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    S* h = p.h + b * p.h_row;                       // [H]
    S* saved = p.saved ? p.saved + b * p.saved_row : nullptr;  // [4H]
    if (!active(p.lengths, p.t, b)) {
      copy_row(h + j_begin, h_prev + j_begin, j_end - j_begin);
      for (int64_t g = 0; saved && g < 4; ++g) zero_row(saved + g * H + j_begin, j_end - j_begin);
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G gi_r = u.load(gi), gi_z = u.load(gi + H), gi_n = u.load(gi + 2 * H);
      G gh_r = u.load(gh), gh_z = u.load(gh + H), gh_n = u.load(gh + 2 * H);
      if (p.b_ih) {
        gi_r = gi_r + u.load(p.b_ih);
        gi_z = gi_z + u.load(p.b_ih + H);
        gi_n = gi_n + u.load(p.b_ih + 2 * H);
      }
      if (p.b_hh) {
        gh_r = gh_r + u.load(p.b_hh);
        gh_z = gh_z + u.load(p.b_hh + H);
        gh_n = gh_n + u.load(p.b_hh + 2 * H);
      }
      G r, z, nn, hv;
      gru_cell_forward(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, u.load(h_prev), r, z, nn, hv);
      u.store(hv, h);
      if (saved) {
        u.store(r, saved);
        u.store(z, saved + H);
        u.store(nn, saved + 2 * H);
        u.store(gh_n, saved + 3 * H);
      }
    });
  }
}

template <typename S>
void gru_backward_rows(const GruBackwardStep<S>& p, int64_t b_begin, int64_t b_end,
                       int64_t j_begin, int64_t j_end) {
  using G = Group<S, 1>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* grad_h = p.grad_h + b * p.grad_h_row;  // [H]
    S* dh = p.dh + b * H;                           // [H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    const S* saved = p.saved + b * p.saved_row;     // [4H]
    S* d_gi = p.d_gi + b * p.d_gi_row;              // [3H]
    S* d_gh = p.d_gh + b * p.d_gh_row;              // [3H]
    if (!active(p.lengths, p.t, b)) {  // dh passes through; no gate gradient
      for (int64_t g = 0; g < 3; ++g) {
        zero_row(d_gi + g * H + j_begin, j_end - j_begin);
        zero_row(d_gh + g * H + j_begin, j_end - j_begin);
      }
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      const G dh_total = u.load(dh) + u.load(grad_h);
      G d_r, d_z, d_gi_n, d_gh_n, dh_direct;
      gru_cell_backward(dh_total, u.load(h_prev), u.load(saved), u.load(saved + H),
                        u.load(saved + 2 * H), u.load(saved + 3 * H), d_r, d_z, d_gi_n, d_gh_n,
                        dh_direct);
      u.store(d_r, d_gi);
      u.store(d_z, d_gi + H);
      u.store(d_gi_n, d_gi + 2 * H);
      u.store(d_r, d_gh);
      u.store(d_z, d_gh + H);
      u.store(d_gh_n, d_gh + 2 * H);
      u.store(dh_direct, dh);
    });
  }
}

template <typename S>
void lstm_forward_rows(const LstmForwardStep<S>& p, int64_t b_begin, int64_t b_end, int64_t j_begin,
                       int64_t j_end) {
  using G = Group<S, 2>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    S* gates = p.gates + b * p.gates_row;           // [4H]
    const S* c_prev = p.c_prev + b * p.c_prev_row;  // [H]
    S* c = p.c + b * p.c_row;                       // [H]
    S* h = p.h + b * p.h_row;                       // [H]
    const int64_t units = j_end - j_begin;
    if (!active(p.lengths, p.t, b)) {
      for (int64_t g = 0; g < 4; ++g) zero_row(gates + g * H + j_begin, units);
      copy_row(c + j_begin, c_prev + j_begin, units);
      if (p.h_prev) {
        copy_row(h + j_begin, p.h_prev + b * p.h_prev_row + j_begin, units);
      } else {  // projected LSTM: the carried (projected) state is restored after the projection
        zero_row(h + j_begin, units);
      }
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G i = u.load(gates), f = u.load(gates + H), g = u.load(gates + 2 * H),
        o = u.load(gates + 3 * H);
      if (p.bias) {
        i = i + u.load(p.bias);
        f = f + u.load(p.bias + H);
        g = g + u.load(p.bias + 2 * H);
        o = o + u.load(p.bias + 3 * H);
      }
      G cv, hv;
      lstm_cell_forward(i, f, g, o, u.load(c_prev), cv, hv);
      u.store(i, gates);
      u.store(f, gates + H);
      u.store(g, gates + 2 * H);
      u.store(o, gates + 3 * H);
      u.store(cv, c);
      u.store(hv, h);
    });
  }
}

template <typename S>
void lstm_backward_rows(const LstmBackwardStep<S>& p, int64_t b_begin, int64_t b_end,
                        int64_t j_begin, int64_t j_end) {
  using G = Group<S, 1>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* grad_h = p.grad_h + b * p.grad_h_row;  // [H]
    S* dh = p.dh + b * H;                           // [H]
    S* dc = p.dc + b * H;                           // [H]
    const S* gates = p.gates + b * p.gates_row;     // [4H]
    const S* c_prev = p.c_prev + b * p.c_prev_row;  // [H]
    const S* c = p.c + b * p.c_row;                 // [H]
    S* d_gates = p.d_gates + b * p.d_gates_row;     // [4H]
    if (!active(p.lengths, p.t, b)) {  // dh and dc pass through; no gate gradient
      for (int64_t g = 0; g < 4; ++g) zero_row(d_gates + g * H + j_begin, j_end - j_begin);
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G dcv = u.load(dc);
      G d_i, d_f, d_g, d_o;
      lstm_cell_backward(u.load(dh) + u.load(grad_h), dcv, u.load(gates), u.load(gates + H),
                         u.load(gates + 2 * H), u.load(gates + 3 * H), u.load(c_prev),
                         u.load(c), d_i, d_f, d_g, d_o);
      u.store(d_i, d_gates);
      u.store(d_f, d_gates + H);
      u.store(d_g, d_gates + 2 * H);
      u.store(d_o, d_gates + 3 * H);
      u.store(dcv, dc);
      u.store(G(0), dh);  // all of dL/dh_prev goes through W_hh
    });
  }
}

template <bool kRelu, typename S>
void rnn_forward_rows_impl(const RnnForwardStep<S>& p, int64_t b_begin, int64_t b_end,
                           int64_t j_begin, int64_t j_end) {
  using G = Group<S, 4>;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* pre = p.pre + b * p.pre_row;  // [H]
    S* h = p.h + b * p.h_row;              // [H]
    if (!active(p.lengths, p.t, b)) {
      copy_row(h + j_begin, p.h_prev + b * p.h_prev_row + j_begin, j_end - j_begin);
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G x = u.load(pre);
      if (p.bias) x = x + u.load(p.bias);
      u.store(rnn_cell_forward<kRelu>(x), h);
    });
  }
}

template <typename S>
void rnn_forward_rows(const RnnForwardStep<S>& p, int64_t b_begin, int64_t b_end, int64_t j_begin,
                      int64_t j_end) {
  if (p.relu) {
    rnn_forward_rows_impl<true>(p, b_begin, b_end, j_begin, j_end);
  } else {
    rnn_forward_rows_impl<false>(p, b_begin, b_end, j_begin, j_end);
  }
}

template <bool kRelu, typename S>
void rnn_backward_rows_impl(const RnnBackwardStep<S>& p, int64_t b_begin, int64_t b_end,
                            int64_t j_begin, int64_t j_end) {
  using G = Group<S, 4>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* grad_h = p.grad_h + b * p.grad_h_row;  // [H]
    S* dh = p.dh + b * H;                           // [H]
    const S* h = p.h + b * p.h_row;                 // [H]
    S* d_pre = p.d_pre + b * p.d_pre_row;           // [H]
    if (!active(p.lengths, p.t, b)) {  // dh passes through
      zero_row(d_pre + j_begin, j_end - j_begin);
      continue;
    }
    for_each_step<G>(j_begin, j_end, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      u.store(rnn_cell_backward<kRelu>(u.load(dh) + u.load(grad_h), u.load(h)), d_pre);
      u.store(G(0), dh);  // all of dL/dh_prev goes through W_hh
    });
  }
}

template <typename S>
void rnn_backward_rows(const RnnBackwardStep<S>& p, int64_t b_begin, int64_t b_end,
                       int64_t j_begin, int64_t j_end) {
  if (p.relu) {
    rnn_backward_rows_impl<true>(p, b_begin, b_end, j_begin, j_end);
  } else {
    rnn_backward_rows_impl<false>(p, b_begin, b_end, j_begin, j_end);
  }
}

template <typename S>
void gru_textbook_gates_rows(const GruTextbookGatesStep<S>& p, int64_t b_begin, int64_t b_end) {
  using G = Group<S, 2>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* gi = p.gi + b * p.gi_row;              // [3H]
    const S* gh = p.gh + b * p.gh_row;              // [2H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    S* act = p.act + b * p.act_row;                 // [3H]
    S* rh = p.rh + b * H;                           // [H]
    if (!active(p.lengths, p.t, b)) {
      zero_row(act, 3 * H);
      zero_row(rh, H);
      continue;
    }
    for_each_step<G>(0, H, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G gi_r = u.load(gi), gi_z = u.load(gi + H);
      G gh_r = u.load(gh), gh_z = u.load(gh + H);
      if (p.b_ih) {
        gi_r = gi_r + u.load(p.b_ih);
        gi_z = gi_z + u.load(p.b_ih + H);
      }
      if (p.b_hh) {
        gh_r = gh_r + u.load(p.b_hh);
        gh_z = gh_z + u.load(p.b_hh + H);
      }
      G r, z, rhv;
      gru_textbook_gates_forward(gi_r, gi_z, gh_r, gh_z, u.load(h_prev), r, z, rhv);
      u.store(r, act);
      u.store(z, act + H);
      u.store(rhv, rh);
    });
  }
}

template <typename S>
void gru_textbook_state_rows(const GruTextbookStateStep<S>& p, int64_t b_begin, int64_t b_end) {
  using G = Group<S, 2>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* gi_n = p.gi + b * p.gi_row + 2 * H;    // [H]
    const S* gh_n = p.gh_n + b * H;                 // [H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    S* act = p.act + b * p.act_row;                 // [3H]
    S* h = p.h + b * p.h_row;                       // [H]
    if (!active(p.lengths, p.t, b)) {
      copy_row(h, h_prev, H);
      continue;
    }
    for_each_step<G>(0, H, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G x = u.load(gi_n), g = u.load(gh_n);
      if (p.b_ih) x = x + u.load(p.b_ih + 2 * H);
      if (p.b_hh) g = g + u.load(p.b_hh + 2 * H);
      G nn, hv;
      gru_textbook_state_forward(x, g, u.load(act + H), u.load(h_prev), nn, hv);
      u.store(nn, act + 2 * H);
      u.store(hv, h);
    });
  }
}

template <typename S>
void gru_textbook_state_back_rows(const GruTextbookStateBackStep<S>& p, int64_t b_begin,
                                  int64_t b_end) {
  using G = Group<S, 1>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* grad_h = p.grad_h + b * p.grad_h_row;  // [H]
    S* dh = p.dh + b * H;                           // [H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    const S* act = p.act + b * p.act_row;           // [3H]
    S* d_g = p.d_g + b * p.d_g_row;                 // [3H]
    if (!active(p.lengths, p.t, b)) {  // dh passes through
      zero_row(d_g, 3 * H);
      continue;
    }
    for_each_step<G>(0, H, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G d_n, d_z, dh_direct;
      gru_textbook_state_backward(u.load(dh) + u.load(grad_h), u.load(h_prev),
                                  u.load(act + H), u.load(act + 2 * H), d_n, d_z,
                                  dh_direct);
      u.store(d_z, d_g + H);
      u.store(d_n, d_g + 2 * H);
      u.store(dh_direct, dh);
    });
  }
}

template <typename S>
void gru_textbook_gates_back_rows(const GruTextbookGatesBackStep<S>& p, int64_t b_begin,
                                  int64_t b_end) {
  using G = Group<S, 1>;
  const int64_t H = p.hidden;
  for (int64_t b = b_begin; b < b_end; ++b) {
    const S* d_rh = p.d_rh + b * H;                 // [H]
    const S* h_prev = p.h_prev + b * p.h_prev_row;  // [H]
    const S* act = p.act + b * p.act_row;           // [3H]
    S* dh = p.dh + b * H;                           // [H]
    S* d_g = p.d_g + b * p.d_g_row;                 // [3H]
    if (!active(p.lengths, p.t, b)) continue;       // d_g zeroed by the first half
    for_each_step<G>(0, H, [&](auto u) FUSED_RNN_ALWAYS_INLINE {
      G d_r, dh_direct = u.load(dh);
      gru_textbook_gates_backward(u.load(d_rh), u.load(h_prev), u.load(act), d_r,
                                  dh_direct);
      u.store(d_r, d_g);
      u.store(dh_direct, dh);
    });
  }
}

// Sum of the elements of v in a fixed order: AVX512 / AVX2 float's reduce_add (a fixed tree of
// shuffles), else pairwise over the stored elements.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
constexpr bool kVectorReduceAdd = true;
#else
constexpr bool kVectorReduceAdd = false;
#endif
template <typename A>
inline A horizontal_sum(const Vec<A>& v) {
  if constexpr (std::is_same_v<A, float> && kVectorReduceAdd) {
    return v.reduce_add();
  } else {
    constexpr int64_t W = Vec<A>::size();
    alignas(64) A e[W];
    v.store(e);
    for (int64_t width = W / 2; width >= 1; width /= 2) {
      for (int64_t i = 0; i < width; ++i) e[i] += e[i + width];
    }
    return e[0];
  }
}

// One tile of lane_gemm: rows h[0, R) times the NN consecutive weight rows w[0, NN) (row
// stride K): out[r, c] (+)= sum_k h[r, k] * w[c, k]. Each output: Vec-wide partial sums over k
// in order (one fused multiply-add per vector of k), then horizontal_sum.
template <typename S, int R, int NN>
void lane_tile(const S* h, int64_t h_row, int64_t K, const S* w, S* out, int64_t out_row,
               bool accumulate) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  Vec<A> acc[R][NN];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NN; ++c) acc[r][c] = Vec<A>(A(0));
  }
  // whole vectors of k in a loop without a partial-load branch (so that the accumulators stay
  // in registers), then the partial vector at the end, whose loads give zeros past K
  auto step = [&](int64_t k, int64_t n) __attribute__((always_inline)) {
    Vec<A> hv[R];
    for (int r = 0; r < R; ++r) hv[r] = load(h + r * h_row + k, n);
    for (int c = 0; c < NN; ++c) {
      const Vec<A> wv = load(w + c * K + k, n);
      for (int r = 0; r < R; ++r) acc[r][c] = at::vec::fmadd(hv[r], wv, acc[r][c]);
    }
  };
  int64_t k = 0;
  for (; k + W <= K; k += W) step(k, W);
  if (k < K) step(k, K - k);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NN; ++c) {
      const A sum = horizontal_sum(acc[r][c]);
      S* dst = out + r * out_row + c;
      *dst = static_cast<S>(accumulate ? static_cast<A>(*dst) + sum : sum);
    }
  }
}

// Accumulators of a tile: 16 where a vector is 64 bytes (AVX512's 32 registers), else 8.
template <typename S>
constexpr int kTileAccumulators = sizeof(Vec<acc_t<S>>) >= 64 ? 16 : 8;

// Rows h[0, R) times the weight rows w[0, units): tiles of NN outputs, then single ones.
template <typename S, int R>
void lane_rows(const S* h, int64_t h_row, int64_t K, const S* w, int64_t units, S* out,
               int64_t out_row, bool accumulate) {
  constexpr int kNN = std::min(8, kTileAccumulators<S> / R);
  int64_t j = 0;
  for (; j + kNN <= units; j += kNN) {
    lane_tile<S, R, kNN>(h, h_row, K, w + j * K, out + j, out_row, accumulate);
  }
  for (; j < units; ++j) lane_tile<S, R, 1>(h, h_row, K, w + j * K, out + j, out_row, accumulate);
}

// tile(R, b) for the row tiles [b, b + R) of `rows` rows: R = kMaxR, then one tile of the
// 1 to kMaxR - 1 rows left; R comes as std::integral_constant<int, R> (a compile-time height).
template <int R, typename F>
FUSED_RNN_ALWAYS_INLINE inline void last_row_tile(int64_t left, int64_t b, const F& tile) {
  if constexpr (R > 0) {
    if (left == R) {
      tile(std::integral_constant<int, R>{}, b);
    } else {
      last_row_tile<R - 1>(left, b, tile);
    }
  }
}
template <int kMaxR, typename F>
void for_row_tiles(int64_t rows, const F& tile) {
  int64_t b = 0;
  for (; b + kMaxR <= rows; b += kMaxR) tile(std::integral_constant<int, kMaxR>{}, b);
  last_row_tile<kMaxR - 1>(rows - b, b, tile);
}

template <typename S>
void lane_gemm(const S* h, int64_t h_row, int64_t rows, int64_t K, const S* w, int64_t w_gate,
               int64_t gates, int64_t units, S* out, int64_t out_row, int64_t out_gate,
               bool accumulate) {
  for (int64_t g = 0; g < gates; ++g) {
    const S* wg = w + g * w_gate;  // [units, K]
    S* o = out + g * out_gate;
    for_row_tiles<4>(rows, [&](auto R, int64_t b) {
      lane_rows<S, decltype(R)::value>(h + b * h_row, h_row, K, wg, units, o + b * out_row,
                                       out_row, accumulate);
    });
  }
}

// The outer-product kernels (lane_gemm_t, lane_gemm_packed, gemm_packed): tiles of up to
// kOuterRows rows times NV vectors of columns, kOuterAccumulators accumulators at most: 8 rows x
// 3 vectors where a vector is 64 bytes (AVX512's 32 registers: 24 accumulators, 3 weight
// vectors, a broadcast), else 4 x 3 (AVX2's 16: 12 accumulators, 3 weight vectors, a
// broadcast; a tile of R rows keeps its R x NV accumulators and NV weight vectors in registers
// where R > 1, so on 16 registers NV <= 15 / (R + 1)). Measured on one Zen 4 core (AVX512,
// H=256, 128 units x 4 gates, 16 rows): lane_gemm_t 116 GF/s either way at H=256, at H=512 (the
// lane's W_hh beyond its L2) 95 GF/s with 4-row tiles, 109 with 8 (fewer passes over W_hh per
// step). On one Zen 3 core (AVX2, 2-vCPU VM, 2026-12-06; gemm_packed alone, 1 thread, the
// builds alternated in one process; the VM's speed swung ~1.7x between runs, so medians and
// bests of each run): 4 x 2 -> 4 x 3 1.19-1.38x in slow runs ([32, 256] x [256, 1024] 44 -> 57
// GF/s, [128, 512] x [512, 2048] 37 -> 49, [1120, 256] x [256, 1024] 41 -> 47), 0.95-1.07x in
// fast ones (~80 either way, MKL's at::mm 51-78 alongside; a register-only FMA loop 125-137);
// 6 x 2 and 3 x 4 (one register short: spills) no better than 4 x 3 anywhere.
template <typename S>
constexpr int kOuterRows = sizeof(Vec<acc_t<S>>) >= 64 ? 8 : 4;
template <typename S>
constexpr int kOuterAccumulators = sizeof(Vec<acc_t<S>>) >= 64 ? 24 : 12;
template <typename S, int R>
constexpr int kOuterVectors = std::max(
    1, std::min({8, kOuterAccumulators<S> / R,
                 sizeof(Vec<acc_t<S>>) >= 64 || R == 1 ? 8 : 15 / (R + 1)}));

// acc[r][c] = sum over k < K, in order, of a[r * a_row + k * a_k] * b[c][k * b_row + i]
// (element i of vector c), one fused multiply-add per k, from zero, or from the R x NV vectors
// at `resume` (acc[r][c] at resume + (r * NV + c) * W: a sum over earlier k spilled there, so
// that a sum split into chunks of k has the same bits as one pass). a_k is 1 unless kStridedK.
// kTail: the last vector has `tail` columns (its loads give zeros past them), known at compile
// time not to be there otherwise (a partial-load branch in the loop kept the accumulators on the
// stack). kPrefetch > 0: the b rows kPrefetch k ahead are prefetched.
template <typename S, typename Bt, int R, int NV, bool kTail, bool kStridedK = false,
          int kPrefetch = 0>
FUSED_RNN_ALWAYS_INLINE inline void outer_products(const S* a, int64_t a_row, int64_t K,
                                                   const Bt* const (&b)[NV], int64_t b_row,
                                                   int64_t tail, Vec<acc_t<S>> (&acc)[R][NV],
                                                   int64_t a_k = 1,
                                                   const acc_t<S>* resume = nullptr) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NV; ++c) {
      acc[r][c] = resume ? Vec<A>::loadu(resume + (r * NV + c) * W) : Vec<A>(A(0));
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<A> bv[NV];
    if constexpr (kPrefetch > 0) {
      for (int c = 0; c < NV; ++c) __builtin_prefetch(b[c] + (k + kPrefetch) * b_row, 0, 3);
    }
    for (int c = 0; c < NV; ++c) bv[c] = load(b[c] + k * b_row, kTail && c == NV - 1 ? tail : W);
    for (int r = 0; r < R; ++r) {
      const Vec<A> av(static_cast<A>(a[r * a_row + (kStridedK ? k * a_k : k)]));
      for (int c = 0; c < NV; ++c) acc[r][c] = at::vec::fmadd(av, bv[c], acc[r][c]);
    }
  }
}

// One tile of lane_gemm_t: rows d[0, R) times the NV vectors of columns from v0 * W of the
// weight rows w[n] (row stride w_row), n < N: out[r, j] (+)= sum_n d[r, n] * w[n, j].
template <typename S, int R, int NV, bool kTail>
void lane_tile_t(const S* d, int64_t d_row, int64_t N, const S* w, int64_t w_row, int64_t v0,
                 int64_t tail, S* out, int64_t out_row, bool accumulate) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  const S* b[NV];
  for (int c = 0; c < NV; ++c) b[c] = w + (v0 + c) * W;
  Vec<A> acc[R][NV];
  outer_products<S, S, R, NV, kTail>(d, d_row, N, b, w_row, tail, acc);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NV; ++c) {
      const int64_t cnt = kTail && c == NV - 1 ? tail : W;
      S* dst = out + r * out_row + (v0 + c) * W;
      store(accumulate ? load(dst, cnt) + acc[r][c] : acc[r][c], dst, cnt);
    }
  }
}

// for_column_blocks<NV>(vectors, block): block(NVc, v) over the vectors [0, vectors) in blocks of
// NV, then of 2 and 1 (NVc a std::integral_constant<int, NVc>).
template <int NV, typename F>
FUSED_RNN_ALWAYS_INLINE inline void for_column_blocks(int64_t vectors, const F& block) {
  int64_t v = 0;
  for (; v + NV <= vectors; v += NV) block(std::integral_constant<int, NV>{}, v);
  if constexpr (NV > 2) {
    for (; v + 2 <= vectors; v += 2) block(std::integral_constant<int, 2>{}, v);
  }
  for (; v < vectors; ++v) block(std::integral_constant<int, 1>{}, v);
}

// The loop order of the outer-product kernels: tile(R, NV, b, v) for row tiles [b, b + R) and
// column blocks of NV vectors from vector v. Fewer rows than a tile: one row tile, its columns
// in blocks of kOuterVectors<S, R>. Else each column block (up to 3 vectors) runs all row tiles
// one after the other, so that its weights come from memory once per step and from the core's
// cache for the other tiles (one Zen 4 core, 16 rows, H=1024 LSTM: a lane's 512 columns of
// W_hh are 8 MB; lane_gemm_t on them in place 52 GF/s row tile by row tile, 58 column block by
// column block, each n still a page of its own (later runs: 66-79); on strips 112).
template <typename S, typename F>
FUSED_RNN_ALWAYS_INLINE inline void for_outer_tiles(int64_t rows, int64_t vectors,
                                                    const F& tile) {
  constexpr int kR = kOuterRows<S>;
  if (rows < kR) {
    last_row_tile<kR - 1>(rows, 0, [&](auto R, int64_t b) FUSED_RNN_ALWAYS_INLINE {
      for_column_blocks<kOuterVectors<S, decltype(R)::value>>(
          vectors, [&](auto NV, int64_t v) FUSED_RNN_ALWAYS_INLINE { tile(R, NV, b, v); });
    });
    return;
  }
  for_column_blocks<kOuterVectors<S, kR>>(vectors, [&](auto NV, int64_t v) FUSED_RNN_ALWAYS_INLINE {
    for_row_tiles<kR>(rows, [&](auto R, int64_t b) FUSED_RNN_ALWAYS_INLINE { tile(R, NV, b, v); });
  });
}

template <typename S>
void lane_gemm_t(const S* d, int64_t d_row, int64_t rows, int64_t N, const S* w, int64_t w_row,
                 int64_t units, S* out, int64_t out_row, bool accumulate) {
  constexpr int64_t W = Vec<acc_t<S>>::size();
  const int64_t full = units / W, tail = units % W;
  for_outer_tiles<S>(rows, full, [&](auto R, auto NV, int64_t b, int64_t v) {
    lane_tile_t<S, decltype(R)::value, decltype(NV)::value, false>(
        d + b * d_row, d_row, N, w, w_row, v, 0, out + b * out_row, out_row, accumulate);
  });
  // the partial vector of the units last
  if (tail) {
    for_row_tiles<kOuterRows<S>>(rows, [&](auto R, int64_t b) {
      lane_tile_t<S, decltype(R)::value, 1, true>(d + b * d_row, d_row, N, w, w_row, full, tail,
                                                  out + b * out_row, out_row, accumulate);
    });
  }
}


// See RowKernels::lane_pack. Blocks of 16 units x 16 k: AVX512 float transposes whole blocks
// in registers (1.7x faster than through a buffer: H=256, 128 units x 4 gates in 34 us);
// otherwise, and for the blocks at the edges, element by element.
template <typename S>
void lane_pack(const S* w, int64_t w_gate, int64_t gates, int64_t units, int64_t K,
               lane_panel_t<S>* panel) {
  using P = lane_panel_t<S>;
  constexpr int64_t U = kLanePanelUnits;
  const int64_t up = lane_padded_units(units);
  for (int64_t g = 0; g < gates; ++g) {
    for (int64_t j0 = 0; j0 < up; j0 += U) {
      P* strip = panel + lane_strip_offset(g * up + j0, K);  // [K, U]
      for (int64_t k0 = 0; k0 < K; k0 += U) {
        const S* src = w + g * w_gate + j0 * K + k0;  // [U units, U k], row stride K
        P* dst = strip + k0 * U;                      // [U k, U units]
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<S, float>) {
          if (j0 + U <= units && k0 + U <= K) {
            transpose_16x16(src, K, dst, U);
            continue;
          }
        }
#endif
        const int64_t nk = std::min(U, K - k0);
        for (int64_t k = 0; k < nk; ++k) {
          for (int64_t j = 0; j < U; ++j) {
            dst[k * U + j] = j0 + j < units ? static_cast<P>(src[j * K + k]) : P(0);
          }
        }
      }
    }
  }
}

// See RowKernels::lane_pack_columns: strip by strip, row by row (copies of U columns).
template <typename S>
void lane_pack_columns(const S* w, int64_t w_row, int64_t N, int64_t units,
                       lane_panel_t<S>* panel) {
  using P = lane_panel_t<S>;
  constexpr int64_t U = kLanePanelUnits;
  for (int64_t j0 = 0; j0 < units; j0 += U) {
    P* strip = panel + lane_strip_offset(j0, N);  // [N, U]
    const int64_t nj = std::min(U, units - j0);
    for (int64_t n = 0; n < N; ++n) {
      const S* src = w + n * w_row + j0;
      P* dst = strip + n * U;
      if (nj == U) {
        for (int64_t j = 0; j < U; ++j) dst[j] = static_cast<P>(src[j]);
      } else {
        for (int64_t j = 0; j < U; ++j) dst[j] = j < nj ? static_cast<P>(src[j]) : P(0);
      }
    }
  }
}

// One tile of lane_gemm_packed: rows h[0, R) times the NV vectors of panel columns from v0 * W.
template <typename S, int R, int NV>
void lane_tile_packed(const S* h, int64_t h_row, int64_t K, const lane_panel_t<S>* panel,
                      int64_t up, int64_t units, int64_t v0, S* out, int64_t out_row,
                      int64_t out_gate, bool accumulate) {
  using A = acc_t<S>;
  static_assert(std::is_same_v<A, lane_panel_t<S>>, "the panel holds the accumulation type");
  constexpr int64_t W = Vec<A>::size();
  constexpr int64_t U = kLanePanelUnits;
  static_assert(U % W == 0, "a vector never spans two strips or gates");
  const A* b[NV];
  for (int c = 0; c < NV; ++c) {
    const int64_t column = (v0 + c) * W;
    b[c] = panel + lane_strip_offset(column, K) + column % U;
  }
  Vec<A> acc[R][NV];
  outer_products<S, A, R, NV, false>(h, h_row, K, b, U, 0, acc);
  for (int c = 0; c < NV; ++c) {
    const int64_t column = (v0 + c) * W, g = column / up, j = column % up;
    const int64_t cnt = std::min<int64_t>(W, units - j);
    if (cnt <= 0) continue;  // padding only
    for (int r = 0; r < R; ++r) {
      S* dst = out + r * out_row + g * out_gate + j;
      store(accumulate ? load(dst, cnt) + acc[r][c] : acc[r][c], dst, cnt);
    }
  }
}

template <typename S>
void lane_gemm_packed(const S* h, int64_t h_row, int64_t rows, int64_t K,
                      const lane_panel_t<S>* panel, int64_t gates, int64_t units, S* out,
                      int64_t out_row, int64_t out_gate, bool accumulate) {
  constexpr int64_t W = Vec<acc_t<S>>::size();
  const int64_t up = lane_padded_units(units);
  for_outer_tiles<S>(rows, gates * up / W, [&](auto R, auto NV, int64_t b, int64_t v) {
    lane_tile_packed<S, decltype(R)::value, decltype(NV)::value>(
        h + b * h_row, h_row, K, panel, up, units, v, out + b * out_row, out_row, out_gate,
        accumulate);
  });
}

// gemm_packed's blocking (the bits are those of one pass over k: each tile's sums run over k in
// order from zero; between chunks of k they are spilled to memory and resumed, exactly). Measured
// on a 2-vCPU Sapphire Rapids-class Xeon VM (2026-12-06, 2 threads, packing included, GF/s
// before -> after, at::mm alongside; the machine's rate moved 260-400 between runs):
//   a contiguous along k, in chunks of kDirectChunkRows rows (each chunk's rows stay in L2 while
//   every column block runs over them, instead of all rows streaming from memory per column
//   block), not split along k: [4480, 512] x [512, 2048] 210 -> 233 (mm 257), [4480, 256] x
//   [256, 1024] 259-266 -> 298-303 (mm 353), [2240, 1024] x [1024, 256] 272-277 -> 280-292;
//   at K = 2048 276 -> 261 ([4480, 2048] x [2048, 512]) before the prefetch below, level with
//   it (all rows / chunks of 128 / 64 / 32, GF/s: [4480, 2048] x [2048, 512] 283 / 290 / 281 /
//   279, [1120, 2048] x [2048, 512] 288 / 297 / 288 / 281, [4480, 1536] x [1536, 512] 308 /
//   301 / 299 / 308, [2240, 4096] x [4096, 1024] 283 / 289 / 272 / 254), so chunks at any K.
//   Splitting k as well (chunks of 64-256) lost there (input gradients 0.85x).
//   a strided along k (the weight gradients' d_g^T: the 8 rows of a tile are 8 floats of one
//   row of d_g, each k a row 4 G bytes further, a page apart at G = 1024): packed chunk by chunk
//   (kPackedChunkRows x kPackedChunkK) into [tile][k][kOuterRows] order, each chunk used by all
//   column blocks: [1024, 2240] (d_g^T) x [2240, 256] 98-114 -> 250-264 (mm 290-350),
//   [2048, 4480] x [4480, 512] 77-92 -> 239-257 (mm 300-377).
constexpr int64_t kDirectChunkRows = 128;
constexpr int64_t kPackedChunkRows = 64;
constexpr int64_t kPackedChunkK = 128;
// The panel's rows kPrefetchK k ahead prefetched (one line per strip per k). Xeon VM, processes
// alternated, nn.* / fused without -> with: LSTM B=32 H=512 inference 0.89-0.91 -> 0.99-1.02x,
// B=128 H=512 0.75-0.85 -> 0.83-0.86x, GRU B=64 H=512 training 1.14-1.18 -> 1.16-1.22x;
// H=256 level (LSTM B=64 inference, GRU B=32 training). 16 ahead: no better than none.
constexpr int kPrefetchK = 8;

// The lines of a tile's output, rows out_row apart from `out`, NV vectors each (every vector's
// first and last byte: at most two lines), requested before the tile multiplies so that they
// arrive meanwhile. Without it, products whose output was not in the core's cache (the input
// projection's [T*B, G] rows, the gates a step adds to) waited for each line at the tile's
// stores (as the dot kernel's tiles did, bf16_dot_kernels.cpp): float32 LSTM B=128 H=256
// inference 0.85 -> 0.95x nn.LSTM, B=32 training 0.98 -> 1.02x (T=35; the AMD EPYC Zen 5 VM,
// 2026-12-07, processes of the two builds alternated, 4 rounds each).
template <typename S, int R, int NV>
FUSED_RNN_ALWAYS_INLINE inline void prefetch_tile_out(const S* out, int64_t out_row) {
  constexpr int64_t kVectorBytes = sizeof(Vec<acc_t<S>>) / sizeof(acc_t<S>) * sizeof(S);
  for (int r = 0; r < R; ++r) {
    const char* row = reinterpret_cast<const char*>(out + r * out_row);
    for (int c = 0; c < NV; ++c) {
      __builtin_prefetch(row + c * kVectorBytes, 1, 3);
      __builtin_prefetch(row + (c + 1) * kVectorBytes - 1, 1, 3);
    }
  }
}

// One tile of gemm_packed_blocked: rows [0, R) of a (packed: ap is [kn][kOuterRows], else rows
// a_row apart from column k0) times the NV vectors of panel columns from v0 * W over k0 ..
// k0 + kn; resumed from `spill` (R x NV vectors) after the first chunk of k, spilled there before
// the last, written to out (+=) after it.
template <typename S, int R, int NV, bool kPackedA>
FUSED_RNN_ALWAYS_INLINE inline void packed_chunk_tile(const S* ap, int64_t a_row, int64_t k0,
                                                      int64_t kn, int64_t K,
                                                      const lane_panel_t<S>* panel, int64_t cols,
                                                      int64_t v0, acc_t<S>* spill, S* out,
                                                      int64_t out_row, bool accumulate) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  constexpr int64_t U = kLanePanelUnits;
  constexpr int kR = kOuterRows<S>;
  const A* b[NV];
  for (int c = 0; c < NV; ++c) {
    const int64_t column = (v0 + c) * W;
    b[c] = panel + lane_strip_offset(column, K) + column % U + k0 * U;
  }
  if (k0 + kn >= K) prefetch_tile_out<S, R, NV>(out + v0 * W, out_row);
  Vec<A> acc[R][NV];
  outer_products<S, A, R, NV, false, kPackedA, kPrefetchK>(
      ap, kPackedA ? 1 : a_row, kn, b, U, 0, acc, kPackedA ? kR : 1, k0 > 0 ? spill : nullptr);
  if (k0 + kn < K) {
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < NV; ++c) acc[r][c].store(spill + (r * NV + c) * W);
    }
    return;
  }
  for (int c = 0; c < NV; ++c) {
    const int64_t column = (v0 + c) * W;
    const int64_t cnt = std::min<int64_t>(W, cols - column);
    if (cnt <= 0) continue;  // padding only
    for (int r = 0; r < R; ++r) {
      S* dst = out + r * out_row + column;
      store(accumulate ? load(dst, cnt) + acc[r][c] : acc[r][c], dst, cnt);
    }
  }
}

// gemm_packed in chunks of mc rows; in each, chunks of kc of k (kc >= K: one); in each, the
// chunk's tiles in for_outer_tiles' order (column blocks, each over all row tiles of the chunk).
// kPackA: each (rows, k) chunk of a is first copied into [tile][k][kOuterRows] order.
template <typename S, bool kPackA>
void gemm_packed_blocked(const S* a, int64_t a_row, int64_t a_k, int64_t rows, int64_t K,
                         const lane_panel_t<S>* panel, int64_t cols, S* out, int64_t out_row,
                         bool accumulate, int64_t mc, int64_t kc) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  constexpr int kR = kOuterRows<S>;
  const int64_t vectors = lane_padded_units(cols) / W;
  const int64_t max_tiles = (std::min(mc, rows) + kR - 1) / kR;
  // per thread, kept between calls: a's packed chunk, [max_tiles][kc][kR]; the spilled sums,
  // [max_tiles][vectors][kR] vectors
  thread_local std::vector<S> apack;
  thread_local std::vector<A> spill;
  if (kPackA) apack.resize(std::max<size_t>(apack.size(), max_tiles * kR * std::min(K, kc)));
  if (K > kc) spill.resize(std::max<size_t>(spill.size(), max_tiles * vectors * kR * W));
  for (int64_t m0 = 0; m0 < rows; m0 += mc) {
    const int64_t mr = std::min(mc, rows - m0);
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t kn = std::min(kc, K - k0);
      for (int64_t t = 0; kPackA && t * kR < mr; ++t) {  // rows m0 + t * kR + r, k0 + k
        const int64_t rt = std::min<int64_t>(kR, mr - t * kR);
        S* dst = apack.data() + t * kn * kR;
        const S* src = a + (m0 + t * kR) * a_row + k0 * a_k;
        if (a_row == 1 && rt == kR) {  // kR contiguous values per k
          for (int64_t k = 0; k < kn; ++k) {
            for (int r = 0; r < kR; ++r) dst[k * kR + r] = src[k * a_k + r];
          }
        } else {
          for (int64_t r = 0; r < rt; ++r) {
            for (int64_t k = 0; k < kn; ++k) dst[k * kR + r] = src[r * a_row + k * a_k];
          }
        }
      }
      const auto tile = [&](auto R, auto NV, int64_t b, int64_t v) FUSED_RNN_ALWAYS_INLINE {
        const int64_t t = b / kR;
        packed_chunk_tile<S, decltype(R)::value, decltype(NV)::value, kPackA>(
            kPackA ? apack.data() + t * kn * kR : a + (m0 + b) * a_row + k0, a_row, k0, kn, K,
            panel, cols, v, K > kc ? spill.data() + (t * vectors + v) * kR * W : nullptr,
            out + (m0 + b) * out_row, out_row, accumulate);
      };
      for_outer_tiles<S>(mr, vectors, tile);
    }
  }
}

// See RowKernels::gemm_packed.
template <typename S>
void gemm_packed(const S* a, int64_t a_row, int64_t a_k, int64_t rows, int64_t K,
                 const lane_panel_t<S>* panel, int64_t cols, S* out, int64_t out_row,
                 bool accumulate) {
  if (rows <= 0) return;
  if (K == 0) {
    if (!accumulate) {
      for (int64_t r = 0; r < rows; ++r) std::fill(out + r * out_row, out + r * out_row + cols, S(0));
    }
    return;
  }
  if (a_k == 1) {  // rows of a contiguous: read in place, in chunks of rows
    gemm_packed_blocked<S, false>(a, a_row, 1, rows, K, panel, cols, out, out_row, accumulate,
                                  kDirectChunkRows, K);
  } else {  // a strided along k (d_g^T in the weight gradients): packed chunk by chunk
    gemm_packed_blocked<S, true>(a, a_row, a_k, rows, K, panel, cols, out, out_row, accumulate,
                                 kPackedChunkRows, kPackedChunkK);
  }
}

// out[j] = sum of m[r, j] over the rows r, for the columns [c_begin, c_end); m: [rows, *] with
// row stride row_stride. Each column is summed in row order whatever the column range (so the
// result does not depend on how the columns are split over threads): in blocks of 64 rows in
// the vector type, the block sums added in double (float32 over 10^5 rows: no worse than a
// pairwise sum).
template <typename S>
void column_sums(const S* m, int64_t rows, int64_t row_stride, int64_t c_begin, int64_t c_end,
                 S* out) {
  using A = acc_t<S>;
  constexpr int64_t W = Vec<A>::size();
  constexpr int64_t kVecs = 8;    // columns of one pass: kVecs vectors
  constexpr int64_t kBlock = 64;  // rows summed in the vector type before adding in double
  for (int64_t j0 = c_begin; j0 < c_end; j0 += kVecs * W) {
    const int64_t cols = std::min<int64_t>(kVecs * W, c_end - j0);
    double total[kVecs * W] = {};
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
      Vec<A> acc[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) acc[v] = Vec<A>(A(0));
      const int64_t r1 = std::min(rows, r0 + kBlock);
      if (cols == kVecs * W) {  // whole vectors: a fixed-size loop the compiler keeps in registers
        for (int64_t r = r0; r < r1; ++r) {
          const S* row = m + r * row_stride + j0;
          for (int64_t v = 0; v < kVecs; ++v) acc[v] = acc[v] + load(row + v * W, W);
        }
      } else {
        for (int64_t r = r0; r < r1; ++r) {
          const S* row = m + r * row_stride + j0;
          for (int64_t v = 0; v * W < cols; ++v) {
            acc[v] = acc[v] + load(row + v * W, std::min<int64_t>(W, cols - v * W));
          }
        }
      }
      alignas(64) A part[kVecs * W];
      for (int64_t v = 0; v < kVecs; ++v) acc[v].store(part + v * W);
      for (int64_t i = 0; i < cols; ++i) total[i] += static_cast<double>(part[i]);
    }
    for (int64_t i = 0; i < cols; ++i) out[j0 + i] = static_cast<S>(total[i]);
  }
}

template <typename S>
constexpr RowKernels<S> row_kernels() {
  return {&gru_forward_rows<S>, &gru_backward_rows<S>, &lstm_forward_rows<S>,
          &lstm_backward_rows<S>, &rnn_forward_rows<S>, &rnn_backward_rows<S>,
          &gru_textbook_gates_rows<S>, &gru_textbook_state_rows<S>,
          &gru_textbook_state_back_rows<S>, &gru_textbook_gates_back_rows<S>, &column_sums<S>,
          &lane_gemm<S>, &lane_gemm_t<S>, &lane_pack<S>, &lane_pack_columns<S>,
          &lane_gemm_packed<S>, &gemm_packed<S>};
}

}  // namespace
}  // namespace CPU_CAPABILITY

#define FUSED_RNN_STR2(x) #x
#define FUSED_RNN_STR(x) FUSED_RNN_STR2(x)

extern const IsaKernels FUSED_RNN_CAT(kIsaKernels, CPU_CAPABILITY) = {
    FUSED_RNN_STR(CPU_CAPABILITY), row_kernels<float>(), row_kernels<double>(),
    row_kernels<c10::BFloat16>(), row_kernels<c10::Half>(), /*bf16_dot=*/nullptr};

}  // namespace cpu
}  // namespace fused_rnn
