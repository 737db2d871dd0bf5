// The registry of csrc/phase_clock.h.
#include "../phase_clock.h"

#include <atomic>
#include <mutex>

namespace fused_rnn::phase_clock {
namespace {
std::atomic<bool> on{false};
std::mutex mutex;
std::map<std::string, std::pair<long long, double>>& totals() {
  static std::map<std::string, std::pair<long long, double>> t;
  return t;
}
}  // namespace

bool enabled() { return on.load(std::memory_order_relaxed); }
void set_enabled(bool value) { on.store(value); }

void add(const char* phase, double microseconds) {
  const std::lock_guard<std::mutex> lock(mutex);
  auto& entry = totals()[phase];
  entry.first += 1;
  entry.second += microseconds;
}

std::map<std::string, std::pair<long long, double>> read() {
  const std::lock_guard<std::mutex> lock(mutex);
  return totals();
}

void reset() {
  const std::lock_guard<std::mutex> lock(mutex);
  totals().clear();
}

}  // namespace fused_rnn::phase_clock
