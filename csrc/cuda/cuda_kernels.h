// CUDA step kernels (csrc/cuda/step_kernels.cu): one fused pointwise kernel per time step, on
// the current stream, gate math from gates.h. Host-only declarations: included by g++ code.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../step_params.h"

namespace fused_rnn::cuda {

// For scalar_t = float, double, c10::Half, c10::BFloat16 (half types compute in float).
template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

}  // namespace fused_rnn::cuda
