// Wall-clock time of the phases of the CPU layers (input projection, recurrence, weight
// gradients, ...), summed over calls while switched on: what benchmarks/cpu_profile.py reports
// to show where a training step's time goes next to its GEMM floor. Off by default; when off a
// phase mark costs one branch. CPU only: CUDA work is asynchronous, so a host clock would time
// kernel launches (the CUDA kernels have their own phase clock, FUSED_RNN_PERSISTENT_PROFILE).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <utility>

namespace fused_rnn {

namespace phase_clock {
bool enabled();
void set_enabled(bool on);
void add(const char* phase, double microseconds);
// phase -> (marks, total microseconds) since the last reset; reset clears.
std::map<std::string, std::pair<long long, double>> read();
void reset();
}  // namespace phase_clock

// Marks the end of successive phases of one operator call: lap("name") books the time since
// the previous mark (or construction) to "name". Active only for CPU calls while enabled.
class PhaseClock {
 public:
  explicit PhaseClock(bool cpu) : active_(cpu && phase_clock::enabled()) {
    if (active_) last_ = std::chrono::steady_clock::now();
  }
  void lap(const char* phase) {
    if (!active_) return;
    const auto now = std::chrono::steady_clock::now();
    phase_clock::add(phase, std::chrono::duration<double, std::micro>(now - last_).count());
    last_ = now;
  }

 private:
  bool active_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace fused_rnn
