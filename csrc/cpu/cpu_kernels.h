// CPU side of the step kernels: picks the instruction-set build of csrc/cpu/row_kernels.cpp at
// run time and spreads the batch rows of a step over the intra-op threads.
#pragma once

#include <string>
#include <vector>

#include "../step_params.h"

namespace fused_rnn::cpu {

template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

// Name of the instruction-set build in use ("DEFAULT", "AVX2", "AVX512").
std::string active_isa();
// The builds compiled into this binary that this CPU can run, best last.
std::vector<std::string> available_isas();
// Choose a build by name (case-insensitive); errors if it is not available here.
void set_isa(const std::string& name);

}  // namespace fused_rnn::cpu
