// The launch records of the persistent kernels (FUSED_RNN_PERSISTENT_PROFILE=1): the last one of
// each direction, written by any of the persistent_<type>.cu translation units, read by
// fused_rnn._C._persistent_profile. Host only.
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda_kernels.h"

namespace fused_rnn::cuda {
namespace {
std::mutex profile_mutex;
std::vector<int64_t> last_profile[2];  // forward 0, backward 1
}  // namespace

void record_profile(bool backward, std::vector<int64_t> record) {
  const std::lock_guard<std::mutex> lock(profile_mutex);
  last_profile[backward] = std::move(record);
}

std::vector<int64_t> persistent_profile(bool backward) {
  const std::lock_guard<std::mutex> lock(profile_mutex);
  return last_profile[backward];
}

}  // namespace fused_rnn::cuda
