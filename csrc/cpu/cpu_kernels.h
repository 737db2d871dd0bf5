// CPU side of the step kernels: picks the instruction-set build of csrc/cpu/row_kernels.cpp at
// run time and spreads the batch rows of a step over the intra-op threads.
#pragma once

#include <string>
#include <vector>

#include "../hidden_gemm.h"
#include "../step_params.h"

namespace fused_rnn::cpu {

template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

// The per-step hidden GEMM (see hidden_gemm.h): MKL's packed GEMM for float where torch has
// MKL, else ATen's mm on a contiguous op(W).
template <typename scalar_t>
std::unique_ptr<HiddenGemm<scalar_t>> hidden_gemm(const at::Tensor& w, bool transpose_w,
                                                  int64_t rows);
std::string gemm_backend();                     // "mkl-packed" or "aten"
void set_gemm_backend(const std::string& name);  // for tests and benchmarks

// Name of the instruction-set build in use ("DEFAULT", "AVX2", "AVX512").
std::string active_isa();
// The builds compiled into this binary that this CPU can run, best last.
std::vector<std::string> available_isas();
// Choose a build by name (case-insensitive); errors if it is not available here.
void set_isa(const std::string& name);

}  // namespace fused_rnn::cpu
