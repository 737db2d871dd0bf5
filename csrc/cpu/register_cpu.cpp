// CPU implementations of the fused_rnn operators.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../rnn_ops.h"
#include "cpu_kernels.h"

namespace fused_rnn {
namespace {

struct CpuBackend {
  static bool may_synchronize() { return true; }
  template <typename S>
  static const StepKernels<S>& kernels() {
    return cpu::step_kernels<S>();
  }
  template <typename S>
  static std::unique_ptr<HiddenGemm<S>> hidden_gemm(const at::Tensor& w, bool transpose_w,
                                                    int64_t rows, int64_t steps) {
    return cpu::hidden_gemm<S>(w, transpose_w, rows, steps);
  }
  template <typename F>
  static auto dispatch(const at::Tensor& w, const char* op, F&& f) {  // w: the weights
    switch (w.scalar_type()) {
      case at::kFloat: return f(float{});
      case at::kDouble: return f(double{});
      case at::kBFloat16: return f(c10::BFloat16{});
      case at::kHalf: return f(c10::Half{});
      default:
        TORCH_CHECK(false, op, ": the CPU kernels support float32, float64, bfloat16 and ",
                    "float16, got dtype ", w.scalar_type());
    }
  }
};

using CpuOps = RnnOps<CpuBackend>;

// CPU autocast, as nn.*: nn.LSTM and nn.RNN run in the autocast dtype (bfloat16 by default),
// nn.GRU stays in float32 (so gru_forward has no autocast kernel). Floating-point arguments are
// cast (differentiably), then the op runs below autocast.
at::Tensor autocast_cast(const at::Tensor& t) {
  return t.is_floating_point() ? t.to(at::autocast::get_autocast_dtype(at::kCPU)) : t;
}
c10::optional<at::Tensor> autocast_cast(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(autocast_cast(*t)) : t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_autocast(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
    bool reverse, bool save_activations) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_rnn::lstm_forward", "")
                             .typed<decltype(lstm_forward_autocast)>();
  return op.call(autocast_cast(input), autocast_cast(hx), autocast_cast(cx), autocast_cast(w_ih),
                 autocast_cast(w_hh), autocast_cast(b_ih), autocast_cast(b_hh), lengths, reverse,
                 save_activations);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_proj_forward_autocast(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& cx,
                           const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& w_hr,
                           const c10::optional<at::Tensor>& b_ih,
                           const c10::optional<at::Tensor>& b_hh,
                           const c10::optional<at::Tensor>& lengths, bool reverse,
                           bool save_activations) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_rnn::lstm_proj_forward", "")
                             .typed<decltype(lstm_proj_forward_autocast)>();
  return op.call(autocast_cast(input), autocast_cast(hx), autocast_cast(cx), autocast_cast(w_ih),
                 autocast_cast(w_hh), autocast_cast(w_hr), autocast_cast(b_ih),
                 autocast_cast(b_hh), lengths, reverse, save_activations);
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_autocast(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& lengths, bool relu, bool reverse) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fused_rnn::rnn_forward", "")
                             .typed<decltype(rnn_forward_autocast)>();
  return op.call(autocast_cast(input), autocast_cast(hx), autocast_cast(w_ih),
                 autocast_cast(w_hh), autocast_cast(b_ih), autocast_cast(b_hh), lengths, relu,
                 reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("gru_forward", &CpuOps::gru_forward);
  m.impl("gru_backward", &CpuOps::gru_backward);
  m.impl("lstm_forward", &CpuOps::lstm_forward);
  m.impl("lstm_backward", &CpuOps::lstm_backward);
  m.impl("lstm_proj_forward", &CpuOps::lstm_proj_forward);
  m.impl("lstm_proj_backward", &CpuOps::lstm_proj_backward);
  m.impl("rnn_forward", &CpuOps::rnn_forward);
  m.impl("rnn_backward", &CpuOps::rnn_backward);
  m.impl("gru_textbook_forward", &CpuOps::gru_textbook_forward);
  m.impl("gru_textbook_backward", &CpuOps::gru_textbook_backward);
}

TORCH_LIBRARY_IMPL(fused_rnn, AutocastCPU, m) {
  m.impl("lstm_forward", &lstm_forward_autocast);
  m.impl("lstm_proj_forward", &lstm_proj_forward_autocast);
  m.impl("rnn_forward", &rnn_forward_autocast);
}

}  // namespace fused_rnn
