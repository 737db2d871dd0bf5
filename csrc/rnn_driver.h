// The time loops of every fused layer, written once for every device: the input projection of
// all steps as one GEMM, per step one hidden GEMM into a preallocated buffer followed by one
// pointwise step kernel (StepKernels: the CPU loops or the CUDA kernels), and after the backward
// loop the weight gradients of the whole sequence as single large GEMMs.
//
// A device may instead run the whole recurrence of a GRU / LSTM / RNN in one kernel
// (StepKernels::recurrence_forward / recurrence_backward: the CUDA persistent kernels); the
// input projection before and the weight-gradient GEMMs after stay the same.
//
// One call = one layer, one direction. `reverse` runs the steps from the last to the first.
// Sequence tensors are [T, B, F] views in one of two memory layouts, following the input:
// seq-major ([T, B, F] contiguous) or batch-major ([B, T, F] contiguous), so batch_first costs
// no copy. Outputs and gradients of sequences come back in the input's layout.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "checks.h"
#include "hidden_gemm.h"
#include "phase_clock.h"
#include "step_params.h"

namespace fused_rnn {

using at::Tensor;

struct SeqLayout {
  bool batch_major;

  static SeqLayout of(const Tensor& x) {  // x: [T, B, F]
    return {!x.is_contiguous() && x.transpose(0, 1).is_contiguous()};
  }
  // x: [T, B, F] in this layout (copied into seq-major when it is in neither).
  Tensor normalize(const Tensor& x) const { return batch_major ? x : x.contiguous(); }
  Tensor empty(int64_t T, int64_t B, int64_t F, const at::TensorOptions& opts) const {
    return batch_major ? at::empty({B, T, F}, opts).transpose(0, 1) : at::empty({T, B, F}, opts);
  }
  // [T*B, F] view of x: [T, B, F] (in this layout) in memory order.
  Tensor rows(const Tensor& x) const {
    return batch_major ? x.transpose(0, 1).reshape({-1, x.size(2)}) : x.reshape({-1, x.size(2)});
  }
  // Inverse of rows(): x2d: [T*B, F] -> [T, B, F].
  Tensor unrows(const Tensor& x2d, int64_t T, int64_t B) const {
    return batch_major ? x2d.view({B, T, x2d.size(1)}).transpose(0, 1)
                       : x2d.view({T, B, x2d.size(1)});
  }
};

template <typename S>
inline S* ptr(const Tensor& t) { return t.data_ptr<S>(); }
template <typename S>
inline const S* opt_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; }


// Token-id input x: [T, B] (layout `lay`) as int64 [T*B] in memory order.
inline Tensor token_rows(const SeqLayout& lay, const Tensor& x) {
  const Tensor ids = lay.batch_major ? x.transpose(0, 1).reshape({-1}) : x.reshape({-1});
  return ids.scalar_type() == at::kLong ? ids : ids.to(at::kLong);
}

namespace cpu {
// Whether a float32 product of `rows` rows against a transposed weight runs as (W x^T)^T
// (csrc/cpu/cpu_gemm.cpp, with the measurements).
bool swapped_product(int64_t rows);
// a: [M, K] times b: [K, N] -> [M, N] in fixed tiles, one single-threaded BLAS call each:
// bit-identical whatever the thread count (csrc/cpu/cpu_gemm.cpp).
Tensor mm(const Tensor& a, const Tensor& b);
// The float32 products of at least packed_products(M) rows on the library's own kernel, as
// bit-identical (csrc/cpu/packed_products.cpp).
bool packed_products(int64_t rows);
Tensor packed_mm(const Tensor& a, const Tensor& b);
// dW: [G, K] = d_g2d^T rows on the CPU, bit-identical whatever the thread count
// (csrc/cpu/cpu_gemm.cpp); add_weight_grad adds d_g2d^T rows into dw likewise.
Tensor weight_grad(const Tensor& d_g2d, const Tensor& rows);
void add_weight_grad(Tensor& dw, const Tensor& d_g2d, const Tensor& rows);
// db: [G] = d_g2d summed over its rows, likewise (csrc/cpu/cpu_kernels.cpp).
Tensor bias_grad(const Tensor& d_g2d);
// The bfloat16 products on AVX512_BF16's dot products where the build in use has them (else
// null), and a: [M, K] times b: [K, N] on them, likewise bit-identical (csrc/cpu/bf16_dot.h).
struct Bf16DotKernels;
const Bf16DotKernels* bf16_dot_kernels();
Tensor bf16_dot_mm(const Bf16DotKernels& dot, const Tensor& a, const Tensor& b);
}  // namespace cpu

// float16 and bfloat16 on the CPU: every product runs in float32 on float32 copies of its
// operands (exact), its result rounded to the half type once (cpu::hidden_gemm likewise for the
// per-step products), on the float32 kernels (the own packed kernel from 16 rows). Measured on
// the development VM (AMD EPYC Zen 4, 2 threads, torch 2.14.1, 2026-12-07): ATen's float16
// GEMMs ran ~40x slower than float32 ones ([1120, 256] x [256, 768] 157 ms vs 3.8 ms; no
// float16 BLAS there); bfloat16 layers against ATen's bfloat16 GEMMs in the fixed tiles,
// T=35 H=256, 7 interleaved rounds, via float32 / bfloat16 time: inference LSTM B=32 0.52,
// B=128 0.63, GRU B=32 0.65, RNN B=32 0.57; training LSTM B=32 0.97, B=128 0.96, GRU B=32 0.83,
// B=128 0.96, H=512 1.01, RNN B=128 0.77 (benchmarks/cpu_notes.md).
// Where the CPU has AVX512_BF16 (the build "AVX512_BF16"), bfloat16 products run on its dot
// products instead (cpu_bf16_dot; cpu::hidden_gemm likewise), from the bfloat16 operands, sums
// in float32, rounded once.
inline bool cpu_via_float(const Tensor& t) {
  return t.is_cpu() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

// The dot-product kernels for a bfloat16 CPU product, or null.
inline const cpu::Bf16DotKernels* cpu_bf16_dot(const Tensor& t) {
  return t.is_cpu() && t.scalar_type() == at::kBFloat16 ? cpu::bf16_dot_kernels() : nullptr;
}

// a: [M, K] times b: [K, N] on the CPU, bit-identical whatever the thread count: float32 from
// 16 rows on the library's own kernel (cpu::packed_mm), else in fixed BLAS tiles (cpu::mm).
inline Tensor cpu_product(const Tensor& a, const Tensor& b) {
  if (const cpu::Bf16DotKernels* dot = cpu_bf16_dot(a)) return cpu::bf16_dot_mm(*dot, a, b);
  if (cpu_via_float(a)) {
    return cpu_product(a.to(at::kFloat), b.to(at::kFloat)).to(a.scalar_type());
  }
  if (a.scalar_type() == at::kFloat && cpu::packed_products(a.size(0))) {
    return cpu::packed_mm(a, b);
  }
  return cpu::mm(a, b);
}

// rows: [N, K], w: [G, K] -> rows W^T: [N, G] contiguous. CPU: cpu_product, below its packed
// rows as (W x^T)^T for the row counts of swapped_product.
inline Tensor project_rows(const Tensor& rows, const Tensor& w) {
  if (!rows.is_cpu()) return at::mm(rows, w.t());
  if (const cpu::Bf16DotKernels* dot = cpu_bf16_dot(rows)) return cpu::bf16_dot_mm(*dot, rows, w.t());
  if (cpu_via_float(rows)) {
    return project_rows(rows.to(at::kFloat), w.to(at::kFloat)).to(rows.scalar_type());
  }
  if (rows.scalar_type() == at::kFloat && !cpu::packed_products(rows.size(0)) &&
      cpu::swapped_product(rows.size(0))) {
    return cpu::mm(w, rows.t()).t().contiguous();
  }
  return cpu_product(rows, w.t());
}

// gi: [T, B, G] = x W^T for all steps at once; x: [T, B, I] in `lay`, w: [G, I]. Biases are
// added by the step kernels (addmm would first copy the broadcast bias into all T*B rows).
// Token ids x: [T, B] stand for one-hot rows: gi[t, b] = w[:, x[t, b]], gathered, no one-hot.
inline Tensor input_projection(const SeqLayout& lay, const Tensor& x, const Tensor& w) {
  if (is_token_input(x)) {
    return lay.unrows(w.t().index_select(0, token_rows(lay, x)), x.size(0), x.size(1));
  }
  return lay.unrows(project_rows(lay.rows(x), w), x.size(0), x.size(1));
}

// dW: [G, K] = d_g2d^T rows over all steps at once; d_g2d: [N, G], rows: [N, K], N = T*B.
// On the CPU BLAS libraries split such a long reduction (N) over threads, which makes the result
// depend on the thread count: cpu::weight_grad avoids that. Other devices: one GEMM
// (deterministic for given shapes).
inline Tensor weight_grad(const Tensor& d_g2d, const Tensor& rows) {
  if (const cpu::Bf16DotKernels* dot = cpu_bf16_dot(d_g2d)) {
    return cpu::bf16_dot_mm(*dot, d_g2d.t(), rows);
  }
  if (cpu_via_float(d_g2d)) {
    return cpu::weight_grad(d_g2d.to(at::kFloat), rows.to(at::kFloat)).to(d_g2d.scalar_type());
  }
  return d_g2d.is_cpu() ? cpu::weight_grad(d_g2d, rows) : at::mm(d_g2d.t(), rows);
}

// db: [G] = d_g2d: [N, G] summed over all steps and batch rows. CPU: columns spread over the
// threads, rows summed in order (ATen's sum over dim 0 ran on one thread: 0.48 ms of a 10 ms
// GRU backward at T=35, B=32, H=256; this one ~0.3 ms). Other devices: ATen's sum.
inline Tensor bias_grad(const Tensor& d_g2d) {
  return d_g2d.is_cpu() ? cpu::bias_grad(d_g2d) : d_g2d.sum(0);
}

// dL/dW_ih: [G, I] = d_g^T x over all steps; d_g2d: [T*B, G] in `lay`'s row order.
// Token ids: the columns of the ids seen get their rows of d_g added (no one-hot). CPU:
// index_add (serial over the ids: deterministic). CUDA: index_add adds with atomics, in an
// order that changes from run to run (seen on the H200, run 5: the LSTM token-input gradient
// of one thread differed from the sequential run's in the last bits); index_put_ with
// accumulate sorts the ids and sums each id's rows in that order instead.
inline Tensor input_weight_grad(const SeqLayout& lay, const Tensor& x, const Tensor& d_g2d,
                                const Tensor& w_ih) {
  if (is_token_input(x)) {
    if (x.is_cpu()) {
      return at::zeros_like(w_ih, at::MemoryFormat::Contiguous)
          .index_add_(1, token_rows(lay, x), d_g2d.t());
    }
    Tensor dw_t = at::zeros({w_ih.size(1), w_ih.size(0)}, w_ih.options());  // dw_t: [I, G]
    dw_t.index_put_({token_rows(lay, x)}, d_g2d, /*accumulate=*/true);
    return dw_t.t().contiguous();
  }
  return weight_grad(d_g2d, lay.rows(x));
}

// dL/dx: [T, B, I] = d_g W_ih (not for token ids, which have no gradient), or [0].
inline Tensor input_grad(const SeqLayout& lay, const Tensor& x, const Tensor& d_g2d,
                         const Tensor& w_ih, bool compute) {
  TORCH_CHECK(!(compute && is_token_input(x)),
              "fused_rnn: token-id input has no gradient (compute_input_grad must be False)");
  if (!compute) return at::empty({0}, w_ih.options());
  return lay.unrows(d_g2d.is_cpu() ? cpu_product(d_g2d, w_ih) : at::mm(d_g2d, w_ih), x.size(0),
                    x.size(1));
}

// Tensor with unit stride in its last dimension (gradients may arrive expanded or strided).
inline Tensor inner_contiguous(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// h_prevs: [T, B, H] (in `lay`), the state each step started from: h0, then the outputs
// (before padding was zeroed). With lengths, a reversed sequence starts at its own last step
// t = len-1 from h0; steps after its end (t >= len) are never used.
inline Tensor previous_states(const SeqLayout& lay, const Tensor& output, const Tensor& h0,
                              bool reverse, const Tensor& lengths) {
  const int64_t T = output.size(0);
  Tensor h_prevs = lay.empty(T, output.size(1), output.size(2), output.options());
  if (T == 0) return h_prevs;
  if (!reverse) {
    h_prevs.select(0, 0).copy_(h0);
    h_prevs.narrow(0, 1, T - 1).copy_(output.narrow(0, 0, T - 1));
  } else {
    h_prevs.select(0, T - 1).copy_(h0);
    h_prevs.narrow(0, 0, T - 1).copy_(output.narrow(0, 1, T - 1));
    if (lengths.defined()) {  // [T, B, 1]: the step t = len-1 starts from h0
      const Tensor starts = (at::arange(T, lengths.options()).unsqueeze(1) ==
                             (lengths - 1).unsqueeze(0)).unsqueeze(2);
      h_prevs.copy_(at::where(starts, h0.unsqueeze(0), h_prevs));
    }
  }
  return h_prevs;
}

// dW_hh: [G, K] = sum over the steps of d_g[t]^T h_prev[t], h_prev[t] the state step t started
// from (previous_states); d_g2d: [T*B, G] in lay's row order, output: [T, B, K], h0: [B, K].
// On the CPU, for seq-major sequences (not a reversed one with lengths, whose sequences start
// at different steps), h_prevs is not built: past the first step processed its rows are the
// output's rows one step away, so the GEMM reads them there and h0 for the first step (a
// [T, B, K] copy less; ~80 us of a 6 ms RNN training step at T=35, B=32, H=256, and its memory).
inline Tensor recurrent_weight_grad(const SeqLayout& lay, const Tensor& d_g2d,
                                    const Tensor& output, const Tensor& h0, bool reverse,
                                    const Tensor& lengths) {
  const int64_t T = output.size(0), B = output.size(1);
  if (!d_g2d.is_cpu() || lay.batch_major || (reverse && lengths.defined()) || T < 2 ||
      cpu_via_float(d_g2d)) {
    return weight_grad(
        d_g2d, lay.rows(previous_states(lay, inner_contiguous(output), h0, reverse, lengths)));
  }
  const Tensor out2d = lay.rows(inner_contiguous(output));  // out2d: [T*B, K]
  const int64_t n = (T - 1) * B;  // rows of the steps that start from an output
  // forward: steps 1..T-1 start from outputs 0..T-2; reverse: steps 0..T-2 from outputs 1..T-1
  Tensor dw = cpu::weight_grad(d_g2d.narrow(0, reverse ? 0 : B, n),
                               out2d.narrow(0, reverse ? B : 0, n));  // dw: [G, K]
  cpu::add_weight_grad(dw, d_g2d.narrow(0, reverse ? n : 0, B), h0);
  return dw;
}

// Zero the outputs of steps past each sequence's length (as pad_packed_sequence does).
inline void zero_padding(Tensor& output, const Tensor& lengths) {
  if (!lengths.defined() || output.numel() == 0) return;
  const Tensor pad = (at::arange(output.size(0), lengths.options()).unsqueeze(1) >=
                      lengths.unsqueeze(0)).unsqueeze(2);  // [T, B, 1]
  output.masked_fill_(pad, 0);
}

inline const int64_t* lengths_ptr(const Tensor& lengths) {
  return lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
}

// Gradients of a cell whose pre-activation gradients d_g2d: [T*B, G] (lay's row order) are the
// same for the input and the hidden projection (LSTM, RNN): returns grad_input ([T, B, I] or
// [0]), grad_w_ih: [G, I], grad_w_hh: [G, H_state] (the states each step started from: h0:
// [B, H_state], then output: [T, B, H_state]; see recurrent_weight_grad), and the equal
// grad_b_ih, grad_b_hh: [G].
// `clock` gets the phases' marks.
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> shared_gate_grads(
    const SeqLayout& lay, const Tensor& input, const Tensor& d_g2d, const Tensor& output,
    const Tensor& h0, bool reverse, const Tensor& lengths, const Tensor& w_ih,
    bool compute_input_grad, PhaseClock& clock) {
  Tensor grad_w_ih = input_weight_grad(lay, input, d_g2d, w_ih);
  Tensor grad_w_hh = recurrent_weight_grad(lay, d_g2d, output, h0, reverse, lengths);
  clock.lap("backward: weight gradients");
  Tensor grad_b = bias_grad(d_g2d);
  clock.lap("backward: bias gradients");
  Tensor grad_input = input_grad(lay, input, d_g2d, w_ih, compute_input_grad);
  clock.lap("backward: input gradient");
  return {grad_input, grad_w_ih, grad_w_hh, grad_b, grad_b.clone()};
}

// h_n: [B, H], the state after the last processed step (carried past the end of a sequence).
inline Tensor last_state(const Tensor& output, const Tensor& h0, bool reverse) {
  const int64_t T = output.size(0);
  return (T > 0 ? output.select(0, reverse ? 0 : T - 1) : h0).clone(at::MemoryFormat::Contiguous);
}

// b_ih + b_hh (either may be missing); undefined when the layer has no bias.
inline Tensor combined_bias(const Tensor& b_ih, const Tensor& b_hh) {
  if (b_ih.defined() && b_hh.defined()) return b_ih + b_hh;
  return b_ih.defined() ? b_ih : b_hh;
}

inline Tensor opt_contiguous(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

// Rows of one time step of a sequence tensor x: [T, B, F] (unit inner stride).
template <typename S>
struct StepRows {
  S* base;
  int64_t step_stride, row;  // elements between steps / between batch rows
  StepRows(const Tensor& x) : base(x.data_ptr<S>()), step_stride(x.stride(0)), row(x.stride(1)) {}
  S* at(int64_t t) const { return base + t * step_stride; }
};

// ---------------------------------------------------------------------------------------------
// GRU
// ---------------------------------------------------------------------------------------------

// Returns output: [T, B, H], h_n: [B, H], saved: [T, B, 4H] (r, z, n, gh_n) or [0].
template <typename S>
std::tuple<Tensor, Tensor, Tensor> gru_forward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& input_,
    const Tensor& hx_, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
    const Tensor& b_hh, const Tensor& lengths, bool reverse, bool save) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor hx = hx_.contiguous();                        // hx: [B, H]
  const Tensor gi = input_projection(lay, input, w_ih);      // gi: [T, B, 3H]
  clock.lap("forward: input projection");
  Tensor output = lay.empty(T, B, H, opts);                  // output: [T, B, H]
  Tensor saved = at::empty({save ? T : 0, B, 4 * H}, opts);  // saved: [T, B, 4H]
  const StepRows<S> gi_s(gi), out_s(output);
  const Tensor w = k.recurrence_forward ? w_hh.contiguous() : w_hh;  // w: [3H, H]
  const bool whole = k.recurrence_forward &&
      k.recurrence_forward({Cell::kGru, T, B, H, reverse, lengths_ptr(lengths), ptr<S>(w),
                            gi_s.base, gi_s.step_stride, gi_s.row, opt_ptr<S>(b_ih),
                            opt_ptr<S>(b_hh), ptr<S>(hx), nullptr, out_s.base, out_s.step_stride,
                            out_s.row, save ? ptr<S>(saved) : nullptr, nullptr, false});
  Tensor gh = at::empty({whole ? 0 : B, 3 * H}, opts);  // gh: [B, 3H] (step loop only)
  // gh = h_prev W_hh^T
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/true, B, T);
  for (int64_t s = 0; s < (whole ? 0 : T); ++s) {
    const int64_t t = time_of(s, T, reverse);
    const S* h_prev = s == 0 ? ptr<S>(hx) : out_s.at(time_of(s - 1, T, reverse));  // [B, H]
    const int64_t h_prev_row = s == 0 ? H : out_s.row;
    hidden->run(h_prev, h_prev_row, ptr<S>(gh), 3 * H, B, /*accumulate=*/false);
    k.gru_forward({B, H, gi_s.at(t), gi_s.row, ptr<S>(gh), 3 * H, opt_ptr<S>(b_ih),
                   opt_ptr<S>(b_hh), h_prev, h_prev_row, out_s.at(t), out_s.row,
                   save ? ptr<S>(saved) + t * B * 4 * H : nullptr, 4 * H, t,
                   lengths_ptr(lengths)});
  }
  clock.lap("forward: recurrence");
  Tensor h_n = last_state(output, hx, reverse);
  zero_padding(output, lengths);
  if (!save) saved = at::empty({0}, opts);
  clock.lap("forward: other");
  return {output, h_n, saved};
}

// Returns grad_input: [T, B, I] (or [0] if not asked for), grad_hx: [B, H],
// grad_w_ih: [3H, I], grad_w_hh: [3H, H], grad_b_ih: [3H], grad_b_hh: [3H].
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& grad_output_,
    const Tensor& grad_hy, const Tensor& input_, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const Tensor& saved_, const Tensor& lengths,
    bool reverse, bool compute_input_grad) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);                 // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor grad_output = inner_contiguous(grad_output_);  // grad_output: [T, B, H]
  const Tensor saved = saved_.contiguous();                   // saved: [T, B, 4H]
  const Tensor h0 = hx.contiguous();                          // h0: [B, H]
  const Tensor h_prevs = previous_states(lay, inner_contiguous(output), h0, reverse, lengths);
  Tensor d_gi = lay.empty(T, B, 3 * H, opts);                 // d_gi: [T, B, 3H]
  Tensor d_gh = lay.empty(T, B, 3 * H, opts);                 // d_gh: [T, B, 3H]
  Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);    // dh: [B, H]
  clock.lap("backward: setup");
  const StepRows<S> go_s(grad_output), hp_s(h_prevs), d_gi_s(d_gi), d_gh_s(d_gh);
  const Tensor w = k.recurrence_backward ? w_hh.contiguous() : w_hh;  // w: [3H, H]
  const bool whole = k.recurrence_backward &&
      k.recurrence_backward({Cell::kGru, T, B, H, reverse, lengths_ptr(lengths), ptr<S>(w),
                             go_s.base, go_s.step_stride, go_s.row, ptr<S>(dh), nullptr,
                             d_gi_s.base, d_gi_s.step_stride, d_gi_s.row, d_gh_s.base,
                             d_gh_s.step_stride, d_gh_s.row, hp_s.base, hp_s.step_stride,
                             hp_s.row, ptr<S>(saved), nullptr, 0, 0, nullptr, nullptr, nullptr,
                             0, 0});
  // dh += d_gh W_hh
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/false, B, T);
  for (int64_t s = whole ? -1 : T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    k.gru_backward({B, H, go_s.at(t), go_s.row, ptr<S>(dh), hp_s.at(t), hp_s.row,
                    ptr<S>(saved) + t * B * 4 * H, 4 * H, d_gi_s.at(t), d_gi_s.row,
                    d_gh_s.at(t), d_gh_s.row, t, lengths_ptr(lengths)});
    hidden->run(d_gh_s.at(t), d_gh_s.row, ptr<S>(dh), H, B, /*accumulate=*/true);
  }
  clock.lap("backward: recurrence");
  const Tensor d_gi2d = lay.rows(d_gi), d_gh2d = lay.rows(d_gh);  // [T*B, 3H]
  Tensor grad_w_ih = input_weight_grad(lay, input, d_gi2d, w_ih);
  Tensor grad_w_hh = weight_grad(d_gh2d, lay.rows(h_prevs));
  clock.lap("backward: weight gradients");
  Tensor grad_b_ih = bias_grad(d_gi2d);
  // the r and z columns of d_gh are those of d_gi (the step kernels write both): only the
  // n part of b_hh's gradient needs a reduction of its own
  Tensor grad_b_hh =
      at::cat({grad_b_ih.narrow(0, 0, 2 * H), bias_grad(d_gh2d.narrow(1, 2 * H, H))});
  clock.lap("backward: bias gradients");
  Tensor grad_input = input_grad(lay, input, d_gi2d, w_ih, compute_input_grad);
  clock.lap("backward: input gradient");
  return {grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// ---------------------------------------------------------------------------------------------
// LSTM
// ---------------------------------------------------------------------------------------------

// Returns output: [T, B, H], h_n: [B, H], c_n: [B, H],
// saved_gates: [T, B, 4H] (activations i, f, g, o) or [0], saved_cells: [T, B, H] or [0].
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& input_,
    const Tensor& hx_, const Tensor& cx_, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& b_ih, const Tensor& b_hh, const Tensor& lengths, bool reverse, bool save) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor hx = hx_.contiguous(), cx = cx_.contiguous();  // hx, cx: [B, H]
  const Tensor bias = combined_bias(b_ih, b_hh);               // bias: [4H] or undefined
  // gates: [T, B, 4H]; step t adds h_{t-1} W_hh^T in place, then the step kernel adds the bias
  // and turns it into activations, which are what the backward needs.
  Tensor gates = input_projection(lay, input, w_ih);
  clock.lap("forward: input projection");
  Tensor output = lay.empty(T, B, H, opts);  // output: [T, B, H]
  // cells: [T, B, H] when saving, else two alternating [B, H] buffers.
  Tensor cells = at::empty({save ? T : std::min<int64_t>(T, 2), B, H}, opts);
  const StepRows<S> g_s(gates), out_s(output), c_s(cells);
  const Tensor w = k.recurrence_forward ? w_hh.contiguous() : w_hh;  // w: [4H, H]
  const bool whole = k.recurrence_forward &&
      k.recurrence_forward({Cell::kLstm, T, B, H, reverse, lengths_ptr(lengths), ptr<S>(w),
                            g_s.base, g_s.step_stride, g_s.row, opt_ptr<S>(bias), nullptr,
                            ptr<S>(hx), ptr<S>(cx), out_s.base, out_s.step_stride, out_s.row,
                            nullptr, ptr<S>(cells), save});
  // gates += h_prev W_hh^T
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/true, B, T);
  auto cell_of = [&](int64_t s) { return c_s.at(save ? time_of(s, T, reverse) : s % 2); };
  for (int64_t s = 0; s < (whole ? 0 : T); ++s) {
    const int64_t t = time_of(s, T, reverse);
    const S* h_prev = s == 0 ? ptr<S>(hx) : out_s.at(time_of(s - 1, T, reverse));  // [B, H]
    const int64_t h_prev_row = s == 0 ? H : out_s.row;
    hidden->run(h_prev, h_prev_row, g_s.at(t), g_s.row, B, /*accumulate=*/true);
    k.lstm_forward({B, H, g_s.at(t), g_s.row, opt_ptr<S>(bias), h_prev, h_prev_row,
                    s == 0 ? ptr<S>(cx) : cell_of(s - 1), H, cell_of(s), H, out_s.at(t),
                    out_s.row, t, lengths_ptr(lengths)});
  }
  clock.lap("forward: recurrence");
  Tensor h_n = last_state(output, hx, reverse);
  Tensor c_n = T > 0 ? cells.select(0, save ? time_of(T - 1, T, reverse) : (T - 1) % 2).clone()
                     : cx.clone(at::MemoryFormat::Contiguous);
  zero_padding(output, lengths);
  clock.lap("forward: other");
  if (!save) return {output, h_n, c_n, at::empty({0}, opts), at::empty({0}, opts)};
  return {output, h_n, c_n, gates, cells};
}

// Returns grad_input: [T, B, I] (or [0] if not asked for), grad_hx: [B, H], grad_cx: [B, H],
// grad_w_ih: [4H, I], grad_w_hh: [4H, H], grad_b_ih: [4H], grad_b_hh: [4H].
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& grad_output_,
    const Tensor& grad_hy, const Tensor& grad_cy, const Tensor& input_, const Tensor& hx,
    const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
    const Tensor& gates_, const Tensor& cells_, const Tensor& lengths, bool reverse,
    bool compute_input_grad) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor grad_output = inner_contiguous(grad_output_);  // grad_output: [T, B, H]
  const Tensor gates = inner_contiguous(gates_);              // gates: [T, B, 4H]
  const Tensor cells = cells_.contiguous();                   // cells: [T, B, H]
  const Tensor h0 = hx.contiguous(), c0 = cx.contiguous();    // h0, c0: [B, H]
  Tensor d_gates = lay.empty(T, B, 4 * H, opts);              // d_gates: [T, B, 4H]
  Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);    // dh: [B, H]
  Tensor dc = grad_cy.clone(at::MemoryFormat::Contiguous);    // dc: [B, H]
  clock.lap("backward: setup");
  const StepRows<S> go_s(grad_output), g_s(gates), c_s(cells), dg_s(d_gates);
  const Tensor w = k.recurrence_backward ? w_hh.contiguous() : w_hh;  // w: [4H, H]
  const bool whole = k.recurrence_backward &&
      k.recurrence_backward({Cell::kLstm, T, B, H, reverse, lengths_ptr(lengths), ptr<S>(w),
                             go_s.base, go_s.step_stride, go_s.row, ptr<S>(dh), ptr<S>(dc),
                             dg_s.base, dg_s.step_stride, dg_s.row, dg_s.base, dg_s.step_stride,
                             dg_s.row, nullptr, 0, 0, nullptr, g_s.base, g_s.step_stride,
                             g_s.row, ptr<S>(cells), ptr<S>(c0), nullptr, 0, 0});
  // dh += d_gates W_hh
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/false, B, T);
  for (int64_t s = whole ? -1 : T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    const S* c_prev = s == 0 ? ptr<S>(c0) : c_s.at(time_of(s - 1, T, reverse));  // [B, H]
    k.lstm_backward({B, H, go_s.at(t), go_s.row, ptr<S>(dh), ptr<S>(dc), g_s.at(t), g_s.row,
                     c_prev, H, c_s.at(t), H, dg_s.at(t), dg_s.row, t, lengths_ptr(lengths)});
    hidden->run(dg_s.at(t), dg_s.row, ptr<S>(dh), H, B, /*accumulate=*/true);
  }
  clock.lap("backward: recurrence");
  const Tensor d_gates2d = lay.rows(d_gates);  // [T*B, 4H]
  auto [grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh] = shared_gate_grads(
      lay, input, d_gates2d, output, h0, reverse, lengths, w_ih, compute_input_grad, clock);
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// LSTM with a projection (nn.LSTM's proj_size = P): h = (o * tanh(c)) W_hr^T, h: [B, P].
// A third GEMM per step projects the step kernel's o * tanh(c) (kept for the backward: dW_hr).
// With lengths, rows of finished sequences get their carried h back after the projection.

// [T, B] bool: step t of sequence b is within its length (undefined without lengths).
inline Tensor active_steps(const Tensor& lengths, int64_t T) {
  if (!lengths.defined()) return Tensor();
  return at::arange(T, lengths.options()).unsqueeze(1) < lengths.unsqueeze(0);
}

// Returns output: [T, B, P], h_n: [B, P], c_n: [B, H], saved_gates: [T, B, 4H],
// saved_cells: [T, B, H], saved_hidden: [T, B, H] (o * tanh(c)); the saved ones [0] if not saved.
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_forward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& input_,
    const Tensor& hx_, const Tensor& cx_, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& w_hr, const Tensor& b_ih, const Tensor& b_hh, const Tensor& lengths,
    bool reverse, bool save) {
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), P = w_hr.size(0), H = w_hr.size(1);
  const auto opts = w_hh.options();
  const Tensor hx = hx_.contiguous(), cx = cx_.contiguous();  // hx: [B, P], cx: [B, H]
  const Tensor bias = combined_bias(b_ih, b_hh);               // bias: [4H] or undefined
  Tensor gates = input_projection(lay, input, w_ih);           // gates: [T, B, 4H]
  Tensor output = lay.empty(T, B, P, opts);                    // output: [T, B, P]
  Tensor cells = at::empty({save ? T : std::min<int64_t>(T, 2), B, H}, opts);
  Tensor hidden_full = at::empty({save ? T : 1, B, H}, opts);  // o * tanh(c): [T, B, H]
  const auto hidden = make_gemm(w_hh, /*transpose_w=*/true, B, T);  // gates += h_prev W_hh^T
  const auto proj = make_gemm(w_hr, /*transpose_w=*/true, B, T);    // h = hidden_full W_hr^T
  const Tensor active = active_steps(lengths, T);                // [T, B] or undefined
  const StepRows<S> g_s(gates), out_s(output), c_s(cells);
  auto cell_of = [&](int64_t s) { return c_s.at(save ? time_of(s, T, reverse) : s % 2); };
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = time_of(s, T, reverse);
    const S* h_prev = s == 0 ? ptr<S>(hx) : out_s.at(time_of(s - 1, T, reverse));  // [B, P]
    const int64_t h_prev_row = s == 0 ? P : out_s.row;
    S* hf = ptr<S>(hidden_full) + (save ? t : 0) * B * H;  // [B, H]
    hidden->run(h_prev, h_prev_row, g_s.at(t), g_s.row, B, /*accumulate=*/true);
    k.lstm_forward({B, H, g_s.at(t), g_s.row, opt_ptr<S>(bias), nullptr, 0,
                    s == 0 ? ptr<S>(cx) : cell_of(s - 1), H, cell_of(s), H, hf, H, t,
                    lengths_ptr(lengths)});
    proj->run(hf, H, out_s.at(t), out_s.row, B, /*accumulate=*/false);
    if (active.defined()) {  // finished sequences keep their state
      Tensor out_t = output.select(0, t);
      const Tensor prev = s == 0 ? hx : output.select(0, time_of(s - 1, T, reverse));
      out_t.copy_(at::where(active.select(0, t).unsqueeze(1), out_t, prev));
    }
  }
  Tensor h_n = last_state(output, hx, reverse);
  Tensor c_n = T > 0 ? cells.select(0, save ? time_of(T - 1, T, reverse) : (T - 1) % 2).clone()
                     : cx.clone(at::MemoryFormat::Contiguous);
  zero_padding(output, lengths);
  if (!save) {
    const Tensor none = at::empty({0}, opts);
    return {output, h_n, c_n, none, none, none};
  }
  return {output, h_n, c_n, gates, cells, hidden_full};
}

// Returns grad_input: [T, B, I] (or [0]), grad_hx: [B, P], grad_cx: [B, H],
// grad_w_ih: [4H, I], grad_w_hh: [4H, P], grad_w_hr: [P, H], grad_b_ih, grad_b_hh: [4H].
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
lstm_proj_backward_impl(const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm,
                        const Tensor& grad_output_, const Tensor& grad_hy, const Tensor& grad_cy,
                        const Tensor& input_, const Tensor& hx, const Tensor& cx,
                        const Tensor& w_ih, const Tensor& w_hh, const Tensor& w_hr,
                        const Tensor& output, const Tensor& gates_, const Tensor& cells_,
                        const Tensor& hidden_full_, const Tensor& lengths, bool reverse,
                        bool compute_input_grad) {
  PhaseClock clock(false);  // not profiled (the phases interleave with the projection's)
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), P = w_hr.size(0), H = w_hr.size(1);
  const auto opts = w_hh.options();
  const Tensor grad_output = inner_contiguous(grad_output_);  // grad_output: [T, B, P]
  const Tensor gates = inner_contiguous(gates_);              // gates: [T, B, 4H]
  const Tensor cells = cells_.contiguous();                   // cells: [T, B, H]
  const Tensor hidden_full = hidden_full_.contiguous();       // hidden_full: [T, B, H]
  const Tensor h0 = hx.contiguous(), c0 = cx.contiguous();    // h0: [B, P], c0: [B, H]
  Tensor d_gates = lay.empty(T, B, 4 * H, opts);              // d_gates: [T, B, 4H]
  Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);    // dh: [B, P]
  Tensor dc = grad_cy.clone(at::MemoryFormat::Contiguous);    // dc: [B, H]
  Tensor dh_total = at::empty({T, B, P}, opts);               // dL/dh per step: [T, B, P]
  Tensor d_hfull = at::empty({B, H}, opts);                   // d_hfull: [B, H]
  Tensor scratch = at::zeros({B, H}, opts);                   // the kernel's (zero) dh input
  const auto proj_back = make_gemm(w_hr, /*transpose_w=*/false, B, T);  // d_hfull = dh W_hr
  const auto hidden = make_gemm(w_hh, /*transpose_w=*/false, B, T);     // dh = d_gates W_hh
  const Tensor active = active_steps(lengths, T);
  const StepRows<S> g_s(gates), c_s(cells), dg_s(d_gates);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    Tensor dt = dh_total.select(0, t);
    at::add_out(dt, dh, grad_output.select(0, t));
    if (active.defined()) dt.copy_(at::where(active.select(0, t).unsqueeze(1), dt, dh));
    proj_back->run(ptr<S>(dt), P, ptr<S>(d_hfull), H, B, /*accumulate=*/false);
    const S* c_prev = s == 0 ? ptr<S>(c0) : c_s.at(time_of(s - 1, T, reverse));  // [B, H]
    k.lstm_backward({B, H, ptr<S>(d_hfull), H, ptr<S>(scratch), ptr<S>(dc), g_s.at(t), g_s.row,
                     c_prev, H, c_s.at(t), H, dg_s.at(t), dg_s.row, t, lengths_ptr(lengths)});
    hidden->run(dg_s.at(t), dg_s.row, ptr<S>(dh), P, B, /*accumulate=*/false);
    if (active.defined()) dh.copy_(at::where(active.select(0, t).unsqueeze(1), dh, dt));
  }
  const Tensor d_gates2d = lay.rows(d_gates);  // [T*B, 4H]
  auto [grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh] = shared_gate_grads(
      lay, input, d_gates2d, output, h0, reverse, lengths, w_ih, compute_input_grad, clock);
  Tensor grad_w_hr = weight_grad(dh_total.view({T * B, P}), hidden_full.view({T * B, H}));
  return {grad_input, dh, dc, grad_w_ih, grad_w_hh, grad_w_hr, grad_b_ih, grad_b_hh};
}

// ---------------------------------------------------------------------------------------------
// Elman RNN (tanh or relu)
// ---------------------------------------------------------------------------------------------

// Returns output: [T, B, H], h_n: [B, H]. The backward needs only the output.
template <typename S>
std::tuple<Tensor, Tensor> rnn_forward_impl(const StepKernels<S>& k,
                                            HiddenGemmFactory<S> make_gemm, const Tensor& input_,
                                            const Tensor& hx_, const Tensor& w_ih,
                                            const Tensor& w_hh, const Tensor& b_ih,
                                            const Tensor& b_hh, const Tensor& lengths, bool relu,
                                            bool reverse) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const Tensor hx = hx_.contiguous();                    // hx: [B, H]
  const Tensor bias = combined_bias(b_ih, b_hh);          // bias: [H] or undefined
  Tensor pre = input_projection(lay, input, w_ih);        // pre: [T, B, H], += h W_hh^T per step
  clock.lap("forward: input projection");
  Tensor output = lay.empty(T, B, H, w_hh.options());     // output: [T, B, H]
  const StepRows<S> pre_s(pre), out_s(output);
  const Tensor w = k.recurrence_forward ? w_hh.contiguous() : w_hh;  // w: [H, H]
  const bool whole = k.recurrence_forward &&
      k.recurrence_forward({relu ? Cell::kRnnRelu : Cell::kRnnTanh, T, B, H, reverse,
                            lengths_ptr(lengths), ptr<S>(w), pre_s.base, pre_s.step_stride,
                            pre_s.row, opt_ptr<S>(bias), nullptr, ptr<S>(hx), nullptr,
                            out_s.base, out_s.step_stride, out_s.row, nullptr, nullptr, false});
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/true, B, T);
  for (int64_t s = 0; s < (whole ? 0 : T); ++s) {
    const int64_t t = time_of(s, T, reverse);
    const S* h_prev = s == 0 ? ptr<S>(hx) : out_s.at(time_of(s - 1, T, reverse));  // [B, H]
    const int64_t h_prev_row = s == 0 ? H : out_s.row;
    hidden->run(h_prev, h_prev_row, pre_s.at(t), pre_s.row, B, /*accumulate=*/true);
    k.rnn_forward({B, H, pre_s.at(t), pre_s.row, opt_ptr<S>(bias), h_prev, h_prev_row,
                   out_s.at(t), out_s.row, relu, t, lengths_ptr(lengths)});
  }
  clock.lap("forward: recurrence");
  Tensor h_n = last_state(output, hx, reverse);
  zero_padding(output, lengths);
  clock.lap("forward: other");
  return {output, h_n};
}

// Returns grad_input: [T, B, I] (or [0]), grad_hx: [B, H], grad_w_ih: [H, I],
// grad_w_hh: [H, H], grad_b_ih: [H], grad_b_hh: [H].
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& grad_output_,
    const Tensor& grad_hy, const Tensor& input_, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output_, const Tensor& lengths, bool relu, bool reverse,
    bool compute_input_grad) {
  PhaseClock clock(input_.is_cpu());
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor grad_output = inner_contiguous(grad_output_);  // grad_output: [T, B, H]
  const Tensor output = inner_contiguous(output_);            // output: [T, B, H]
  const Tensor h0 = hx.contiguous();                          // h0: [B, H]
  Tensor d_pre = lay.empty(T, B, H, opts);                    // d_pre: [T, B, H]
  Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);    // dh: [B, H]
  clock.lap("backward: setup");
  const StepRows<S> go_s(grad_output), out_s(output), dp_s(d_pre);
  const Tensor w = k.recurrence_backward ? w_hh.contiguous() : w_hh;  // w: [H, H]
  const bool whole = k.recurrence_backward &&
      k.recurrence_backward({relu ? Cell::kRnnRelu : Cell::kRnnTanh, T, B, H, reverse,
                             lengths_ptr(lengths), ptr<S>(w), go_s.base, go_s.step_stride,
                             go_s.row, ptr<S>(dh), nullptr, dp_s.base, dp_s.step_stride,
                             dp_s.row, dp_s.base, dp_s.step_stride, dp_s.row, nullptr, 0, 0,
                             nullptr, nullptr, 0, 0, nullptr, nullptr, out_s.base,
                             out_s.step_stride, out_s.row});
  // dh += d_pre W_hh
  const auto hidden = whole ? nullptr : make_gemm(w_hh, /*transpose_w=*/false, B, T);
  for (int64_t s = whole ? -1 : T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    k.rnn_backward({B, H, go_s.at(t), go_s.row, ptr<S>(dh), out_s.at(t), out_s.row,
                    dp_s.at(t), dp_s.row, relu, t, lengths_ptr(lengths)});
    hidden->run(dp_s.at(t), dp_s.row, ptr<S>(dh), H, B, /*accumulate=*/true);
  }
  clock.lap("backward: recurrence");
  const Tensor d_pre2d = lay.rows(d_pre);  // [T*B, H]
  auto [grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh] = shared_gate_grads(
      lay, input, d_pre2d, output, h0, reverse, lengths, w_ih, compute_input_grad, clock);
  return {grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// ---------------------------------------------------------------------------------------------
// GRU, textbook form: n = tanh(x W_in^T + b_in + (r * h_prev) W_hn^T + b_hn). Two hidden GEMMs
// per step (W_h(r,z), then W_hn on r * h_prev) around two step kernels.
// ---------------------------------------------------------------------------------------------

// Returns output: [T, B, H], h_n: [B, H], saved: [T, B, 3H] (r, z, n) or [0].
template <typename S>
std::tuple<Tensor, Tensor, Tensor> gru_textbook_forward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& input_,
    const Tensor& hx_, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih,
    const Tensor& b_hh, const Tensor& lengths, bool reverse, bool save) {
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);  // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor hx = hx_.contiguous();                        // hx: [B, H]
  const Tensor gi = input_projection(lay, input, w_ih);      // gi: [T, B, 3H]
  Tensor output = lay.empty(T, B, H, opts);                  // output: [T, B, H]
  Tensor saved = at::empty({save ? T : 1, B, 3 * H}, opts);  // saved: [T, B, 3H] (or scratch)
  Tensor gh_rz = at::empty({B, 2 * H}, opts);                // gh_rz: [B, 2H]
  Tensor rh = at::empty({B, H}, opts);                       // rh: [B, H]
  Tensor gh_n = at::empty({B, H}, opts);                     // gh_n: [B, H]
  const auto hidden_rz = make_gemm(w_hh.narrow(0, 0, 2 * H), /*transpose_w=*/true, B, T);
  const auto hidden_n = make_gemm(w_hh.narrow(0, 2 * H, H), /*transpose_w=*/true, B, T);
  const StepRows<S> gi_s(gi), out_s(output);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = time_of(s, T, reverse);
    const S* h_prev = s == 0 ? ptr<S>(hx) : out_s.at(time_of(s - 1, T, reverse));  // [B, H]
    const int64_t h_prev_row = s == 0 ? H : out_s.row;
    S* act = ptr<S>(saved) + (save ? t : 0) * B * 3 * H;  // [B, 3H]
    hidden_rz->run(h_prev, h_prev_row, ptr<S>(gh_rz), 2 * H, B, /*accumulate=*/false);
    k.gru_textbook_gates({B, H, gi_s.at(t), gi_s.row, ptr<S>(gh_rz), 2 * H, opt_ptr<S>(b_ih),
                          opt_ptr<S>(b_hh), h_prev, h_prev_row, act, 3 * H, ptr<S>(rh), t,
                          lengths_ptr(lengths)});
    hidden_n->run(ptr<S>(rh), H, ptr<S>(gh_n), H, B, /*accumulate=*/false);
    k.gru_textbook_state({B, H, gi_s.at(t), gi_s.row, ptr<S>(gh_n), opt_ptr<S>(b_ih),
                          opt_ptr<S>(b_hh), h_prev, h_prev_row, act, 3 * H, out_s.at(t),
                          out_s.row, t, lengths_ptr(lengths)});
  }
  Tensor h_n = last_state(output, hx, reverse);
  zero_padding(output, lengths);
  if (!save) saved = at::empty({0}, opts);
  return {output, h_n, saved};
}

// Returns grad_input: [T, B, I] (or [0]), grad_hx: [B, H], grad_w_ih: [3H, I],
// grad_w_hh: [3H, H], grad_b_ih: [3H], grad_b_hh: [3H] (equal: every bias enters a
// pre-activation directly).
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_textbook_backward_impl(
    const StepKernels<S>& k, HiddenGemmFactory<S> make_gemm, const Tensor& grad_output_,
    const Tensor& grad_hy, const Tensor& input_, const Tensor& hx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const Tensor& saved_, const Tensor& lengths,
    bool reverse, bool compute_input_grad) {
  const SeqLayout lay = SeqLayout::of(input_);
  const Tensor input = lay.normalize(input_);                 // input: [T, B, I]
  const int64_t T = input.size(0), B = input.size(1), H = w_hh.size(1);
  const auto opts = w_hh.options();
  const Tensor grad_output = inner_contiguous(grad_output_);  // grad_output: [T, B, H]
  const Tensor saved = saved_.contiguous();                   // saved: [T, B, 3H] r, z, n
  const Tensor h0 = hx.contiguous();                          // h0: [B, H]
  const Tensor h_prevs = previous_states(lay, inner_contiguous(output), h0, reverse, lengths);
  Tensor d_g = lay.empty(T, B, 3 * H, opts);                  // d_g: [T, B, 3H] (= d_gi = d_gh)
  Tensor dh = grad_hy.clone(at::MemoryFormat::Contiguous);    // dh: [B, H]
  Tensor d_rh = at::empty({B, H}, opts);                      // d_rh: [B, H]
  const auto hidden_n = make_gemm(w_hh.narrow(0, 2 * H, H), /*transpose_w=*/false, B, T);
  const auto hidden_rz = make_gemm(w_hh.narrow(0, 0, 2 * H), /*transpose_w=*/false, B, T);
  const StepRows<S> go_s(grad_output), hp_s(h_prevs), d_g_s(d_g);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = time_of(s, T, reverse);
    const S* act = ptr<S>(saved) + t * B * 3 * H;  // [B, 3H]
    k.gru_textbook_state_back({B, H, go_s.at(t), go_s.row, ptr<S>(dh), hp_s.at(t), hp_s.row, act,
                               3 * H, d_g_s.at(t), d_g_s.row, t, lengths_ptr(lengths)});
    hidden_n->run(d_g_s.at(t) + 2 * H, d_g_s.row, ptr<S>(d_rh), H, B, /*accumulate=*/false);
    k.gru_textbook_gates_back({B, H, ptr<S>(d_rh), hp_s.at(t), hp_s.row, act, 3 * H, ptr<S>(dh),
                               d_g_s.at(t), d_g_s.row, t, lengths_ptr(lengths)});
    hidden_rz->run(d_g_s.at(t), d_g_s.row, ptr<S>(dh), H, B, /*accumulate=*/true);
  }
  const Tensor d_g2d = lay.rows(d_g);  // [T*B, 3H]
  // r * h_prev of every step (the input of the W_hn GEMM), rows in d_g2d's order.
  const Tensor rh_all = lay.rows(saved.narrow(2, 0, H) * h_prevs);
  Tensor grad_w_hh = at::cat({weight_grad(d_g2d.narrow(1, 0, 2 * H), lay.rows(h_prevs)),
                              weight_grad(d_g2d.narrow(1, 2 * H, H), rh_all)});
  Tensor grad_w_ih = input_weight_grad(lay, input, d_g2d, w_ih);
  Tensor grad_b_ih = bias_grad(d_g2d);
  Tensor grad_b_hh = grad_b_ih.clone();
  Tensor grad_input = input_grad(lay, input, d_g2d, w_ih, compute_input_grad);
  return {grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

}  // namespace fused_rnn
