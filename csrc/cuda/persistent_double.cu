// The persistent kernels (persistent_kernels.cuh) for double storage: one translation unit per
// storage type, so that the build compiles them in parallel.
#include "persistent_kernels.cuh"

namespace fused_rnn::cuda {
template bool recurrence_forward<double>(const RecurrenceForward<double>&);
template bool recurrence_backward<double>(const RecurrenceBackward<double>&);
}  // namespace fused_rnn::cuda
