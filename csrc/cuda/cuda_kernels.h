// CUDA kernels: the general path's step kernels (csrc/cuda/step_kernels.cu, one fused pointwise
// kernel per time step) and the persistent kernels; gate math from gates.h.
// Host-only declarations: included by g++ code.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#include "../step_params.h"

namespace fused_rnn::cuda {

// For scalar_t = float, double, c10::Half, c10::BFloat16 (half types compute in float).
template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels();

// The persistent kernels (csrc/cuda/persistent_kernels.cuh, one translation unit per storage
// type: persistent_<type>.cu): the whole recurrence in one launch. false: not run (general path
// chosen, or the shapes do not suit them).
template <typename scalar_t>
bool recurrence_forward(const RecurrenceForward<scalar_t>& p);
template <typename scalar_t>
bool recurrence_backward(const RecurrenceBackward<scalar_t>& p);

// The phase clock of the last persistent launch of one direction run with
// FUSED_RNN_PERSISTENT_PROFILE=1 (empty: none): cycles of staging, product, pointwise, step
// barrier, the whole loop; the loop in ns; then T, B, H, blocks, units per block, staged rows,
// the SM clock rate in kHz, products on tensor cores (1) or CUDA cores (0), staging by loads (0),
// cp.async (1) or shared within clusters (2), blocks per cluster (0: one grid, grid or counter
// barrier), batch rows per cluster, rows exchanged through distributed shared memory (1) or
// global memory (0), blocks per cluster sharing the staging (0: none; in grid modes the launch's
// cluster size), rows exchanged as tagged words without a step barrier (1) or not (0), blocks
// per cluster splitting the reduction (0: none; else the launch's cluster size).
std::vector<int64_t> persistent_profile(bool backward);

}  // namespace fused_rnn::cuda
