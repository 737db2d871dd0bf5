// The persistent kernels (persistent_kernels.cuh) for float storage: one translation unit per
// storage type, so that the build compiles them in parallel.
#include "persistent_kernels.cuh"

namespace fused_rnn::cuda {
template bool recurrence_forward<float>(const RecurrenceForward<float>&);
template bool recurrence_backward<float>(const RecurrenceBackward<float>&);
}  // namespace fused_rnn::cuda
