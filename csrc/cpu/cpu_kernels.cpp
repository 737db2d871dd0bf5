#include "cpu_kernels.h"

#include <ATen/Version.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "row_kernels.h"

namespace fused_rnn::cpu {
namespace {

// Whether the CPU has AVX512_BF16 (cpuid leaf 7, sub-leaf 1, EAX bit 5).
bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;
#else
  return false;
#endif
}

#if defined(FUSED_RNN_CPU_AVX512) && defined(FUSED_RNN_CPU_AVX512_BF16)
// AVX512's row kernels with the bfloat16 products on the dot-product instruction.
const IsaKernels& avx512_bf16_build() {
  static const IsaKernels build = [] {
    IsaKernels k = kIsaKernelsAVX512;
    k.name = "AVX512_BF16";
    k.bf16_dot = &kBf16DotKernels;
    return k;
  }();
  return build;
}
#endif

// Builds in this binary, best last, kept to those the CPU (and ATEN_CPU_CAPABILITY) allows.
std::vector<const IsaKernels*> usable_builds() {
  const std::string cap = at::get_cpu_capability();  // what ATen itself uses: "AVX512", "AVX2", ...
  std::vector<const IsaKernels*> builds{&kIsaKernelsDEFAULT};
#if defined(FUSED_RNN_CPU_AVX2)
  if (cap == "AVX2" || cap == "AVX512") builds.push_back(&kIsaKernelsAVX2);
#endif
#if defined(FUSED_RNN_CPU_AVX512)
  if (cap == "AVX512") builds.push_back(&kIsaKernelsAVX512);
#if defined(FUSED_RNN_CPU_AVX512_BF16)
  if (cap == "AVX512" && cpu_has_avx512_bf16()) builds.push_back(&avx512_bf16_build());
#endif
#endif
  return builds;
}

std::atomic<const IsaKernels*>& active() {
  static std::atomic<const IsaKernels*> kernels{usable_builds().back()};
  return kernels;
}

}  // namespace

bool intel_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool intel = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::strcmp(vendor, "GenuineIntel") == 0;
  }();
  return intel;
#else
  return false;
#endif
}

const Bf16DotKernels* bf16_dot_kernels() {
  return active().load(std::memory_order_relaxed)->bf16_dot;
}

template <>
const RowKernels<float>& row_kernels<float>() {
  return active().load(std::memory_order_relaxed)->f32;
}
template <>
const RowKernels<double>& row_kernels<double>() {
  return active().load(std::memory_order_relaxed)->f64;
}
template <>
const RowKernels<c10::BFloat16>& row_kernels<c10::BFloat16>() {
  return active().load(std::memory_order_relaxed)->bf16;
}
template <>
const RowKernels<c10::Half>& row_kernels<c10::Half>() {
  return active().load(std::memory_order_relaxed)->f16;
}

namespace {

// Work below about this many elements per thread is not worth waking another thread for.
constexpr int64_t kMinElementsPerTask = 4096;

// body(b0, b1) over the batch rows of a step, spread over the threads.
template <typename Params, typename F>
void for_rows(const Params& p, const F& body) {
  if (p.batch == 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinElementsPerTask / std::max<int64_t>(1, p.hidden));
  at::parallel_for(0, p.batch, grain, body);
}

template <typename Params>
void run_rows(void (*fn)(const Params&, int64_t, int64_t), const Params& p) {
  for_rows(p, [&](int64_t b0, int64_t b1) { fn(p, b0, b1); });
}

// The GRU / LSTM / RNN kernels, which also take a range of hidden units: all of them here.
template <typename Params>
void run_rows(void (*fn)(const Params&, int64_t, int64_t, int64_t, int64_t), const Params& p) {
  for_rows(p, [&](int64_t b0, int64_t b1) { fn(p, b0, b1, 0, p.hidden); });
}

template <typename S>
void gru_forward(const GruForwardStep<S>& p) { run_rows(row_kernels<S>().gru_forward, p); }
template <typename S>
void gru_backward(const GruBackwardStep<S>& p) { run_rows(row_kernels<S>().gru_backward, p); }
template <typename S>
void lstm_forward(const LstmForwardStep<S>& p) { run_rows(row_kernels<S>().lstm_forward, p); }
template <typename S>
void lstm_backward(const LstmBackwardStep<S>& p) { run_rows(row_kernels<S>().lstm_backward, p); }
template <typename S>
void rnn_forward(const RnnForwardStep<S>& p) { run_rows(row_kernels<S>().rnn_forward, p); }
template <typename S>
void rnn_backward(const RnnBackwardStep<S>& p) { run_rows(row_kernels<S>().rnn_backward, p); }
template <typename S>
void gru_textbook_gates(const GruTextbookGatesStep<S>& p) {
  run_rows(row_kernels<S>().gru_textbook_gates, p);
}
template <typename S>
void gru_textbook_state(const GruTextbookStateStep<S>& p) {
  run_rows(row_kernels<S>().gru_textbook_state, p);
}
template <typename S>
void gru_textbook_state_back(const GruTextbookStateBackStep<S>& p) {
  run_rows(row_kernels<S>().gru_textbook_state_back, p);
}
template <typename S>
void gru_textbook_gates_back(const GruTextbookGatesBackStep<S>& p) {
  run_rows(row_kernels<S>().gru_textbook_gates_back, p);
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

}  // namespace

template <typename scalar_t>
const StepKernels<scalar_t>& step_kernels() {
  static const StepKernels<scalar_t> kernels{&gru_forward<scalar_t>, &gru_backward<scalar_t>,
                                             &lstm_forward<scalar_t>, &lstm_backward<scalar_t>,
                                             &rnn_forward<scalar_t>, &rnn_backward<scalar_t>,
                                             &gru_textbook_gates<scalar_t>,
                                             &gru_textbook_state<scalar_t>,
                                             &gru_textbook_state_back<scalar_t>,
                                             &gru_textbook_gates_back<scalar_t>,
                                             &recurrence_forward<scalar_t>,
                                             &recurrence_backward<scalar_t>};
  return kernels;
}
template const StepKernels<float>& step_kernels<float>();
template const StepKernels<double>& step_kernels<double>();
template const StepKernels<c10::BFloat16>& step_kernels<c10::BFloat16>();
template const StepKernels<c10::Half>& step_kernels<c10::Half>();

template <typename S>
void column_sums_parallel(const at::Tensor& m, at::Tensor& out) {
  const RowKernels<S>& k = row_kernels<S>();
  const S* base = m.data_ptr<S>();
  S* dst = out.data_ptr<S>();
  const int64_t rows = m.size(0), stride = m.stride(0);
  // column ranges only: every column is still summed in row order by one thread
  at::parallel_for(0, m.size(1), 128, [&](int64_t c0, int64_t c1) {
    k.column_sums(base, rows, stride, c0, c1, dst);
  });
}

at::Tensor bias_grad(const at::Tensor& d_g2d_) {
  const at::Tensor d_g2d = d_g2d_.stride(1) == 1 ? d_g2d_ : d_g2d_.contiguous();  // [N, G]
  at::Tensor out = at::empty({d_g2d.size(1)}, d_g2d.options());                     // [G]
  if (out.numel() == 0) return out;
  switch (d_g2d.scalar_type()) {
    case at::kFloat: column_sums_parallel<float>(d_g2d, out); break;
    case at::kDouble: column_sums_parallel<double>(d_g2d, out); break;
    case at::kBFloat16: column_sums_parallel<c10::BFloat16>(d_g2d, out); break;
    case at::kHalf: column_sums_parallel<c10::Half>(d_g2d, out); break;
    default: TORCH_CHECK(false, "fused_rnn: bias_grad: unsupported dtype ", d_g2d.scalar_type());
  }
  return out;
}

std::string active_isa() { return active().load()->name; }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const IsaKernels* k : usable_builds()) names.emplace_back(k->name);
  return names;
}

void set_isa(const std::string& name) {
  std::string wanted = upper(name);
  std::string have;
  for (const IsaKernels* k : usable_builds()) {
    if (wanted == k->name) {
      active().store(k);
      return;
    }
    have += (have.empty() ? "" : ", ") + std::string(k->name);
  }
  TORCH_CHECK(false, "fused_rnn: CPU kernel build '", name, "' is not available here; available: ",
              have);
}

}  // namespace fused_rnn::cpu
