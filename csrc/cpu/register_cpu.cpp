// CPU implementations of the fused_rnn operators.
#include <torch/library.h>

#include "../rnn_ops.h"
#include "cpu_kernels.h"

namespace fused_rnn {
namespace {

struct CpuBackend {
  template <typename S>
  static const StepKernels<S>& kernels() {
    return cpu::step_kernels<S>();
  }
  template <typename S>
  static std::unique_ptr<HiddenGemm<S>> hidden_gemm(const at::Tensor& w, bool transpose_w,
                                                    int64_t rows) {
    return cpu::hidden_gemm<S>(w, transpose_w, rows);
  }
  template <typename F>
  static auto dispatch(const at::Tensor& w, const char* op, F&& f) {  // w: the weights
    switch (w.scalar_type()) {
      case at::kFloat: return f(float{});
      case at::kDouble: return f(double{});
      default:
        TORCH_CHECK(false, op, ": the CPU kernels support float32 and float64, got dtype ",
                    w.scalar_type());
    }
  }
};

using CpuOps = RnnOps<CpuBackend>;

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) {
  m.impl("gru_forward", &CpuOps::gru_forward);
  m.impl("gru_backward", &CpuOps::gru_backward);
  m.impl("lstm_forward", &CpuOps::lstm_forward);
  m.impl("lstm_backward", &CpuOps::lstm_backward);
  m.impl("rnn_forward", &CpuOps::rnn_forward);
  m.impl("rnn_backward", &CpuOps::rnn_backward);
}

}  // namespace fused_rnn
