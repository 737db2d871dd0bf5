// The persistent kernels (persistent_kernels.cuh) for c10::Half storage: one translation unit per
// storage type, so that the build compiles them in parallel.
#include "persistent_kernels.cuh"

namespace fused_rnn::cuda {
template bool recurrence_forward<c10::Half>(const RecurrenceForward<c10::Half>&);
template bool recurrence_backward<c10::Half>(const RecurrenceBackward<c10::Half>&);
}  // namespace fused_rnn::cuda
