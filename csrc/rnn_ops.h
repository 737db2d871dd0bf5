// The operators' entry points, shared by every device: argument checks, then the dtype switch of
// the device's Backend, then the time loops of rnn_driver.h with that device's step kernels.
//
// A Backend provides
//   template <typename S> static const StepKernels<S>& kernels();
//   template <typename S> static std::unique_ptr<HiddenGemm<S>> hidden_gemm(w, transpose_w, rows);
//   template <typename F> static auto dispatch(const at::Tensor& w, const char* op, F&& f);
//   static bool may_synchronize();  // may a check read values back now (checks.h)?
// where dispatch calls f(S{}) for the element type S of the weights (= that of a floating-point
// input; token-id input is integer) or raises for unsupported dtypes.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "checks.h"
#include "rnn_driver.h"

namespace fused_rnn {

// The kernels' own ATen calls (GEMMs, sums) must run in the dtype the op was called with, not
// be recast by an autocast region around the call (autocast decisions belong to the op level),
// and must not be recorded by autograd (the op's gradient is its registered formula; its inputs
// may require grad, and grad mode may be on when a backward runs with create_graph=True).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
  at::AutoDispatchBelowADInplaceOrView below_autograd;
};

inline Tensor opt_lengths(const c10::optional<Tensor>& lengths) {
  return lengths.has_value() && lengths->defined() ? lengths->contiguous() : Tensor();
}

// Checks of the GRU backward ops, whose saved activations are [T, B, saved_gates * H].
inline void check_gru_backward_args(const char* op, int64_t saved_gates, const Tensor& grad_output,
                                    const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
                                    const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
                                    const Tensor& saved, const c10::optional<Tensor>& lengths) {
  const int64_t H = check_forward_args(op, 3, input, hx, nullptr, w_ih, w_hh, {}, {});
  const int64_t T = input.size(0), B = input.size(1);
  check_saved(op, "grad_output", grad_output, {T, B, H}, w_hh);
  check_saved(op, "grad_hy", grad_hy, {B, H}, w_hh);
  check_saved(op, "output", output, {T, B, H}, w_hh);
  check_saved(op, "saved", saved, {T, B, saved_gates * H}, w_hh);
  check_lengths(op, lengths, input);
}

template <typename Backend>
struct RnnOps {
  // The arguments of a forward operator (check_forward_args), the values of token-id input
  // where the device may synchronise (Backend::may_synchronize), and the lengths.
  static void check_forward(const char* op, int64_t gates, const Tensor& input, const Tensor& hx,
                            const Tensor* cx, const Tensor& w_ih, const Tensor& w_hh,
                            const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
                            const c10::optional<Tensor>& lengths, const Tensor* w_hr = nullptr) {
    check_forward_args(op, gates, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
    if (is_token_input(input) && Backend::may_synchronize()) {
      check_token_ids(op, input, w_ih.size(1));
    }
    check_lengths(op, lengths, input);
  }

  // input: [T, B, I], hx: [B, H], w_ih: [3H, I], w_hh: [3H, H], b_ih, b_hh: [3H] or None,
  // lengths: [B] or None
  static std::tuple<Tensor, Tensor, Tensor> gru_forward(
      const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
      const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
      const c10::optional<Tensor>& lengths, bool reverse, bool save_activations) {
    constexpr const char* op = "fused_rnn::gru_forward";
    const NoAutocast no_autocast;
    check_forward(op, 3, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return gru_forward_impl<S>(Backend::template kernels<S>(), &Backend::template hidden_gemm<S>,
                                 input, hx, w_ih, w_hh, opt_contiguous(b_ih),
                                 opt_contiguous(b_hh), opt_lengths(lengths), reverse,
                                 save_activations);
    });
  }

  // grad_output: [T, B, H], grad_hy: [B, H], output: [T, B, H], saved: [T, B, 4H];
  // the rest as in gru_forward.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
      const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, const Tensor& saved,
      const c10::optional<Tensor>& lengths, bool reverse, bool compute_input_grad) {
    constexpr const char* op = "fused_rnn::gru_backward";
    const NoAutocast no_autocast;
    check_gru_backward_args(op, 4, grad_output, grad_hy, input, hx, w_ih, w_hh, output, saved,
                            lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return gru_backward_impl<S>(Backend::template kernels<S>(),
                                  &Backend::template hidden_gemm<S>, grad_output, grad_hy, input,
                                  hx, w_ih, w_hh, output, saved, opt_lengths(lengths), reverse,
                                  compute_input_grad);
    });
  }

  // input: [T, B, I], hx, cx: [B, H], w_ih: [4H, I], w_hh: [4H, H], b_ih, b_hh: [4H] or None
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
      const c10::optional<Tensor>& lengths, bool reverse, bool save_activations) {
    constexpr const char* op = "fused_rnn::lstm_forward";
    const NoAutocast no_autocast;
    check_forward(op, 4, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return lstm_forward_impl<S>(Backend::template kernels<S>(),
                                  &Backend::template hidden_gemm<S>, input, hx, cx, w_ih, w_hh,
                                  opt_contiguous(b_ih), opt_contiguous(b_hh), opt_lengths(lengths),
                                  reverse, save_activations);
    });
  }

  // grad_output: [T, B, H], grad_hy, grad_cy: [B, H], output: [T, B, H],
  // saved_gates: [T, B, 4H], saved_cells: [T, B, H]; the rest as in lstm_forward.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward(
      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& output, const Tensor& saved_gates,
      const Tensor& saved_cells, const c10::optional<Tensor>& lengths, bool reverse,
      bool compute_input_grad) {
    constexpr const char* op = "fused_rnn::lstm_backward";
    const NoAutocast no_autocast;
    const int64_t H = check_forward_args(op, 4, input, hx, &cx, w_ih, w_hh, {}, {});
    const int64_t T = input.size(0), B = input.size(1);
    check_saved(op, "grad_output", grad_output, {T, B, H}, w_hh);
    check_saved(op, "grad_hy", grad_hy, {B, H}, w_hh);
    check_saved(op, "grad_cy", grad_cy, {B, H}, w_hh);
    check_saved(op, "output", output, {T, B, H}, w_hh);
    check_saved(op, "saved_gates", saved_gates, {T, B, 4 * H}, w_hh);
    check_saved(op, "saved_cells", saved_cells, {T, B, H}, w_hh);
    check_lengths(op, lengths, input);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return lstm_backward_impl<S>(Backend::template kernels<S>(),
                                   &Backend::template hidden_gemm<S>, grad_output, grad_hy,
                                   grad_cy, input, hx, cx, w_ih, w_hh, output, saved_gates,
                                   saved_cells, opt_lengths(lengths), reverse, compute_input_grad);
    });
  }

  // input: [T, B, I], hx: [B, H], w_ih: [H, I], w_hh: [H, H], b_ih, b_hh: [H] or None
  static std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const Tensor& hx,
                                                const Tensor& w_ih, const Tensor& w_hh,
                                                const c10::optional<Tensor>& b_ih,
                                                const c10::optional<Tensor>& b_hh,
                                                const c10::optional<Tensor>& lengths, bool relu,
                                                bool reverse) {
    constexpr const char* op = "fused_rnn::rnn_forward";
    const NoAutocast no_autocast;
    check_forward(op, 1, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return rnn_forward_impl<S>(Backend::template kernels<S>(), &Backend::template hidden_gemm<S>,
                                 input, hx, w_ih, w_hh, opt_contiguous(b_ih),
                                 opt_contiguous(b_hh), opt_lengths(lengths), relu, reverse);
    });
  }

  // grad_output: [T, B, H], grad_hy: [B, H], output: [T, B, H]; the rest as in rnn_forward.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
      const Tensor& w_ih, const Tensor& w_hh, const Tensor& output,
      const c10::optional<Tensor>& lengths, bool relu, bool reverse, bool compute_input_grad) {
    constexpr const char* op = "fused_rnn::rnn_backward";
    const NoAutocast no_autocast;
    const int64_t H = check_forward_args(op, 1, input, hx, nullptr, w_ih, w_hh, {}, {});
    const int64_t T = input.size(0), B = input.size(1);
    check_saved(op, "grad_output", grad_output, {T, B, H}, w_hh);
    check_saved(op, "grad_hy", grad_hy, {B, H}, w_hh);
    check_saved(op, "output", output, {T, B, H}, w_hh);
    check_lengths(op, lengths, input);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return rnn_backward_impl<S>(Backend::template kernels<S>(),
                                  &Backend::template hidden_gemm<S>, grad_output, grad_hy, input,
                                  hx, w_ih, w_hh, output, opt_lengths(lengths), relu, reverse,
                                  compute_input_grad);
    });
  }

  // GRU, textbook form (reset before the hidden matmul); arguments as gru_forward,
  // saved: [T, B, 3H] (r, z, n).
  static std::tuple<Tensor, Tensor, Tensor> gru_textbook_forward(
      const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
      const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
      const c10::optional<Tensor>& lengths, bool reverse, bool save_activations) {
    constexpr const char* op = "fused_rnn::gru_textbook_forward";
    const NoAutocast no_autocast;
    check_forward(op, 3, input, hx, nullptr, w_ih, w_hh, b_ih, b_hh, lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return gru_textbook_forward_impl<S>(
          Backend::template kernels<S>(), &Backend::template hidden_gemm<S>, input, hx, w_ih,
          w_hh, opt_contiguous(b_ih), opt_contiguous(b_hh), opt_lengths(lengths), reverse,
          save_activations);
    });
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_textbook_backward(
      const Tensor& grad_output, const Tensor& grad_hy, const Tensor& input, const Tensor& hx,
      const Tensor& w_ih, const Tensor& w_hh, const Tensor& output, const Tensor& saved,
      const c10::optional<Tensor>& lengths, bool reverse, bool compute_input_grad) {
    constexpr const char* op = "fused_rnn::gru_textbook_backward";
    const NoAutocast no_autocast;
    check_gru_backward_args(op, 3, grad_output, grad_hy, input, hx, w_ih, w_hh, output, saved,
                            lengths);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return gru_textbook_backward_impl<S>(
          Backend::template kernels<S>(), &Backend::template hidden_gemm<S>, grad_output, grad_hy,
          input, hx, w_ih, w_hh, output, saved, opt_lengths(lengths), reverse, compute_input_grad);
    });
  }

  // LSTM with projection (proj_size P): hx: [B, P], cx: [B, H], w_ih: [4H, I], w_hh: [4H, P],
  // w_hr: [P, H]; saved_hidden: [T, B, H] (o * tanh(c), before the projection).
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_proj_forward(
      const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& w_hr, const c10::optional<Tensor>& b_ih,
      const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& lengths, bool reverse,
      bool save_activations) {
    constexpr const char* op = "fused_rnn::lstm_proj_forward";
    const NoAutocast no_autocast;
    check_forward(op, 4, input, hx, &cx, w_ih, w_hh, b_ih, b_hh, lengths, &w_hr);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return lstm_proj_forward_impl<S>(Backend::template kernels<S>(),
                                       &Backend::template hidden_gemm<S>, input, hx, cx, w_ih,
                                       w_hh, w_hr.contiguous(), opt_contiguous(b_ih),
                                       opt_contiguous(b_hh), opt_lengths(lengths), reverse,
                                       save_activations);
    });
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
  lstm_proj_backward(const Tensor& grad_output, const Tensor& grad_hy, const Tensor& grad_cy,
                     const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                     const Tensor& w_hh, const Tensor& w_hr, const Tensor& output,
                     const Tensor& saved_gates, const Tensor& saved_cells,
                     const Tensor& saved_hidden, const c10::optional<Tensor>& lengths,
                     bool reverse, bool compute_input_grad) {
    constexpr const char* op = "fused_rnn::lstm_proj_backward";
    const NoAutocast no_autocast;
    const int64_t H = check_forward_args(op, 4, input, hx, &cx, w_ih, w_hh, {}, {}, &w_hr);
    const int64_t T = input.size(0), B = input.size(1), P = w_hr.size(0);
    check_saved(op, "grad_output", grad_output, {T, B, P}, w_hh);
    check_saved(op, "grad_hy", grad_hy, {B, P}, w_hh);
    check_saved(op, "grad_cy", grad_cy, {B, H}, w_hh);
    check_saved(op, "output", output, {T, B, P}, w_hh);
    check_saved(op, "saved_gates", saved_gates, {T, B, 4 * H}, w_hh);
    check_saved(op, "saved_cells", saved_cells, {T, B, H}, w_hh);
    check_saved(op, "saved_hidden", saved_hidden, {T, B, H}, w_hh);
    check_lengths(op, lengths, input);
    return Backend::dispatch(w_hh, op, [&](auto tag) {
      using S = decltype(tag);
      return lstm_proj_backward_impl<S>(
          Backend::template kernels<S>(), &Backend::template hidden_gemm<S>, grad_output, grad_hy,
          grad_cy, input, hx, cx, w_ih, w_hh, w_hr.contiguous(), output, saved_gates, saved_cells,
          saved_hidden, opt_lengths(lengths), reverse, compute_input_grad);
    });
  }
};

}  // namespace fused_rnn
