// The persistent kernels (persistent_kernels.cuh) for c10::BFloat16 storage: one translation unit per
// storage type, so that the build compiles them in parallel.
#include "persistent_kernels.cuh"

namespace fused_rnn::cuda {
template bool recurrence_forward<c10::BFloat16>(const RecurrenceForward<c10::BFloat16>&);
template bool recurrence_backward<c10::BFloat16>(const RecurrenceBackward<c10::BFloat16>&);
}  // namespace fused_rnn::cuda
