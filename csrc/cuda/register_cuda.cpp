// CUDA implementations of the fused_rnn operators (general path): the same time loops as the
// CPU (rnn_driver.h), per-step GEMMs through ATen (cuBLAS), step kernels from step_kernels.cu.
// TF32: the GEMMs follow torch.backends.cuda.matmul.allow_tf32 (PyTorch's default: off).
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../rnn_ops.h"
#include "cuda_kernels.h"

namespace fused_rnn {
namespace {

struct CudaBackend {
  // false while the current stream is being captured into a CUDA graph (no synchronisation
  // allowed there)
  static bool may_synchronize() {
    return c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None;
  }
  template <typename S>
  static const StepKernels<S>& kernels() {
    return cuda::step_kernels<S>();
  }
  template <typename S>
  static std::unique_ptr<HiddenGemm<S>> hidden_gemm(const at::Tensor& w, bool transpose_w,
                                                    int64_t /*rows*/, int64_t /*steps*/) {
    return std::make_unique<AtenHiddenGemm<S>>(transpose_w ? w.t() : w);  // cuBLAS transposes
  }
  template <typename F>
  static auto dispatch(const at::Tensor& w, const char* op, F&& f) {  // w: the weights
    const c10::cuda::CUDAGuard guard(w.device());
    switch (w.scalar_type()) {
      case at::kFloat: return f(float{});
      case at::kDouble: return f(double{});
      case at::kHalf: return f(c10::Half{});
      case at::kBFloat16: return f(c10::BFloat16{});
      default:
        TORCH_CHECK(false, op, ": the CUDA kernels support float32, float64, float16 and ",
                    "bfloat16, got dtype ", w.scalar_type());
    }
  }
};

using CudaOps = RnnOps<CudaBackend>;

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("gru_forward", &CudaOps::gru_forward);
  m.impl("gru_backward", &CudaOps::gru_backward);
  m.impl("lstm_forward", &CudaOps::lstm_forward);
  m.impl("lstm_backward", &CudaOps::lstm_backward);
  m.impl("lstm_proj_forward", &CudaOps::lstm_proj_forward);
  m.impl("lstm_proj_backward", &CudaOps::lstm_proj_backward);
  m.impl("rnn_forward", &CudaOps::rnn_forward);
  m.impl("rnn_backward", &CudaOps::rnn_backward);
  m.impl("gru_textbook_forward", &CudaOps::gru_textbook_forward);
  m.impl("gru_textbook_backward", &CudaOps::gru_textbook_backward);
}

}  // namespace fused_rnn
