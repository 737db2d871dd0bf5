// Which CUDA path runs the GRU / LSTM / RNN recurrences (process-wide setting):
//   kAuto        the persistent kernels where the shapes suit them, else the general path
//   kPersistent  the persistent kernels for every GRU / LSTM / RNN call; a shape they cannot
//                take (weights too large for the chip) raises instead of falling back
//   kGeneral     the general path only (per step: cuBLAS GEMM + one pointwise kernel)
// The GRU textbook form and the projected LSTM have no persistent kernel: the general path
// always. Set from Python (fused_rnn.set_cuda_path) or by FUSED_RNN_CUDA_PATH=auto|persistent|
// general in the environment at import. Host-only; no torch headers.
#pragma once

#include <string>

namespace fused_rnn {

enum class CudaPath : int { kAuto = 0, kPersistent = 1, kGeneral = 2 };

CudaPath cuda_path();
void set_cuda_path(CudaPath path);
CudaPath parse_cuda_path(const std::string& name);  // raises on an unknown name
const char* cuda_path_name(CudaPath path);

}  // namespace fused_rnn
