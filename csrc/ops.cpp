// The fused_rnn operator schemas (one TORCH_LIBRARY block; devices add TORCH_LIBRARY_IMPL) and
// the small Python module fused_rnn._C.
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

#include "cpu/cpu_kernels.h"
#include "path_choice.h"
#include "phase_clock.h"
#if defined(FUSED_RNN_WITH_CUDA)
#include "cuda/cuda_kernels.h"
#endif

namespace fused_rnn {

CudaPath parse_cuda_path(const std::string& name) {
  if (name == "auto") return CudaPath::kAuto;
  if (name == "persistent") return CudaPath::kPersistent;
  if (name == "general") return CudaPath::kGeneral;
  TORCH_CHECK(false, "fused_rnn: CUDA path must be 'auto', 'persistent' or 'general', got '",
              name, "'");
}

const char* cuda_path_name(CudaPath path) {
  switch (path) {
    case CudaPath::kPersistent: return "persistent";
    case CudaPath::kGeneral: return "general";
    default: return "auto";
  }
}

namespace {
std::atomic<int>& cuda_path_setting() {
  static std::atomic<int> setting{[] {
    const char* env = std::getenv("FUSED_RNN_CUDA_PATH");
    return static_cast<int>(env && *env ? parse_cuda_path(env) : CudaPath::kAuto);
  }()};
  return setting;
}
}  // namespace

CudaPath cuda_path() { return static_cast<CudaPath>(cuda_path_setting().load()); }
void set_cuda_path(CudaPath path) { cuda_path_setting().store(static_cast<int>(path)); }

}  // namespace fused_rnn

TORCH_LIBRARY(fused_rnn, m) {
  // One layer, one direction each; input: [T, B, I]. `lengths` (int64 [B] on input's device, or
  // None) makes each sequence stop at its length: its state is carried past the end, its
  // outputs there are zero (as pad_packed_sequence gives). `reverse` runs the last step first.
  //
  // GRU. save_activations=True keeps what gru_backward needs in `saved`: [T, B, 4H]
  // (r, z, n, W_hn h + b_hn); False gives an empty tensor there.
  m.def(
      "gru_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool reverse, bool save_activations) -> (Tensor output, Tensor h_n, "
      "Tensor saved)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
      "Tensor w_hh, Tensor output, Tensor saved, Tensor? lengths, bool reverse, "
      "bool compute_input_grad) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
      {at::Tag::pt2_compliant_tag});
  // GRU, textbook form: n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn), reset gate before
  // the hidden matmul (the gated-RNN lesson's cell). saved: [T, B, 3H] (r, z, n).
  m.def(
      "gru_textbook_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths, bool reverse, bool save_activations) -> (Tensor output, "
      "Tensor h_n, Tensor saved)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "gru_textbook_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor output, Tensor saved, Tensor? lengths, bool reverse, "
      "bool compute_input_grad) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
      {at::Tag::pt2_compliant_tag});
  // LSTM. saved_gates: [T, B, 4H] activations i, f, g, o; saved_cells: [T, B, H] cell states.
  m.def(
      "lstm_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? lengths, bool reverse, bool save_activations) -> (Tensor output, "
      "Tensor h_n, Tensor c_n, Tensor saved_gates, Tensor saved_cells)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, Tensor hx, "
      "Tensor cx, Tensor w_ih, Tensor w_hh, Tensor output, Tensor saved_gates, "
      "Tensor saved_cells, Tensor? lengths, bool reverse, bool compute_input_grad) -> "
      "(Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh)",
      {at::Tag::pt2_compliant_tag});
  // LSTM with projection (nn.LSTM's proj_size P): h = (o * tanh(c)) W_hr^T; hx: [B, P],
  // w_hh: [4H, P], w_hr: [P, H]; saved_hidden: [T, B, H] o * tanh(c) before the projection.
  m.def(
      "lstm_proj_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
      "Tensor w_hr, Tensor? b_ih, Tensor? b_hh, Tensor? lengths, bool reverse, "
      "bool save_activations) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor saved_gates, "
      "Tensor saved_cells, Tensor saved_hidden)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "lstm_proj_backward(Tensor grad_output, Tensor grad_hy, Tensor grad_cy, Tensor input, "
      "Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor w_hr, Tensor output, "
      "Tensor saved_gates, Tensor saved_cells, Tensor saved_hidden, Tensor? lengths, "
      "bool reverse, bool compute_input_grad) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_w_hr, Tensor grad_b_ih, "
      "Tensor grad_b_hh)",
      {at::Tag::pt2_compliant_tag});
  // Elman RNN, h = tanh or relu(x W_ih^T + b_ih + h W_hh^T + b_hh); the backward needs only the
  // output.
  m.def(
      "rnn_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? lengths, bool relu, bool reverse) -> (Tensor output, Tensor h_n)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "rnn_backward(Tensor grad_output, Tensor grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
      "Tensor w_hh, Tensor output, Tensor? lengths, bool relu, bool reverse, "
      "bool compute_input_grad) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, "
      "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)",
      {at::Tag::pt2_compliant_tag});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_rnn C++/CUDA kernels; the operators live in torch.ops.fused_rnn";
  m.def("cpu_isa", &fused_rnn::cpu::active_isa,
        "Instruction-set build of the CPU kernels in use (DEFAULT, AVX2, AVX512, AVX512_BF16).");
  m.def("available_cpu_isas", &fused_rnn::cpu::available_isas,
        "Instruction-set builds compiled in that this CPU can run, best last.");
  m.def("set_cpu_isa", &fused_rnn::cpu::set_isa, "Use another instruction-set build.");
  m.def(
      "_bf16_dot_mm",
      [](const at::Tensor& a, const at::Tensor& b) {
        // a: [M, K], b: [K, N], bfloat16 CPU tensors (any strides) -> [M, N]
        const fused_rnn::cpu::Bf16DotKernels* dot = fused_rnn::cpu::bf16_dot_kernels();
        TORCH_CHECK(dot != nullptr, "fused_rnn: the CPU build in use (",
                    fused_rnn::cpu::active_isa(), ") has no bfloat16 dot products");
        TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.dim() == 2 && b.dim() == 2 &&
                        a.size(1) == b.size(0),
                    "fused_rnn: _bf16_dot_mm takes CPU matrices [M, K] and [K, N]; got ",
                    a.sizes(), " and ", b.sizes());
        return fused_rnn::cpu::bf16_dot_mm(*dot, a, b);
      },
      "Test hook: a @ b on the bfloat16 dot-product kernels of the AVX512_BF16 build.");
  m.def("cpu_gemm_backend", &fused_rnn::cpu::gemm_backend,
        "Per-step GEMM of the CPU kernels: 'own-packed' (float32, the library's own kernel; "
        "default off Intel CPUs), 'mkl-packed' (float32 with MKL; default on Intel CPUs) or "
        "'aten'.");
  m.def("set_cpu_gemm_backend", &fused_rnn::cpu::set_gemm_backend,
        "Choose 'own-packed', 'mkl-packed' or 'aten' for the per-step GEMMs (testing, "
        "benchmarking).");
  m.def("cpu_schedule", &fused_rnn::cpu::cpu_schedule,
        "How the CPU runs GRU / LSTM / RNN recurrences: 'auto', 'per-step', 'row-blocks' or "
        "'lanes'.");
  m.def("set_cpu_schedule", &fused_rnn::cpu::set_cpu_schedule,
        "Choose the CPU schedule: 'auto', 'per-step', 'row-blocks' or 'lanes' (testing, "
        "benchmarking).");
  m.def(
      "_cpu_row_blocks",
      [](int64_t batch, int64_t hidden, int64_t gates, bool float32, int64_t steps,
         bool bfloat16) {
        const at::ScalarType dtype =
            float32 ? at::kFloat : bfloat16 ? at::kBFloat16 : at::kDouble;
        return fused_rnn::cpu::row_blocks(batch, hidden, gates, dtype, steps);
      },
      pybind11::arg("batch"), pybind11::arg("hidden"), pybind11::arg("gates"),
      pybind11::arg("float32"), pybind11::arg("steps") = 1000, pybind11::arg("bfloat16") = false,
      "First batch rows of the row blocks the CPU would run a recurrence of `steps` steps in "
      "now (and batch at the end) in float32, else bfloat16 or another dtype; empty: per-step "
      "(tests).");
  m.def(
      "_cpu_lanes",
      [](int64_t batch, int64_t hidden, bool float32, int64_t steps, bool bfloat16) {
        const at::ScalarType dtype =
            float32 ? at::kFloat : bfloat16 ? at::kBFloat16 : at::kDouble;
        return fused_rnn::cpu::lanes(batch, hidden, dtype, steps);
      },
      pybind11::arg("batch"), pybind11::arg("hidden"), pybind11::arg("float32"),
      pybind11::arg("steps") = 1000, pybind11::arg("bfloat16") = false,
      "First hidden units of the lanes the CPU would run a recurrence of `steps` steps in now "
      "(and hidden at the end) in float32, else bfloat16 or another dtype; empty: not in lanes "
      "(tests).");
  m.def("_cpu_lane_packing",
        [](int64_t batch, int64_t steps, int64_t hidden, int64_t gates, int64_t units) {
          return std::make_pair(fused_rnn::cpu::lane_forward_packs(batch, steps),
                                fused_rnn::cpu::lane_backward_packs(batch, steps, hidden, gates,
                                                                     units));
        },
        pybind11::arg("batch"), pybind11::arg("steps"), pybind11::arg("hidden"),
        pybind11::arg("gates"), pybind11::arg("units"),
        "(forward, backward): whether lanes of `units` units pack their weights in a recurrence "
        "of this size (tests).");
  m.def("_cpu_l2_cache_bytes", &fused_rnn::cpu::l2_cache_bytes,
        "A core's L2 cache in bytes as auto's row-block rule takes it (tests).");
  m.def("_cpu_intel", &fused_rnn::cpu::intel_cpu,
        "Whether the CPU is an Intel one (auto's lane limits and the packed products depend on "
        "it; tests).");
  m.def("_cpu_packed_mm",
        [](const at::Tensor& a, const at::Tensor& b, std::optional<at::Tensor> out) {
          if (!out) return fused_rnn::cpu::packed_mm(a, b);
          at::Tensor o = *out;
          fused_rnn::cpu::packed_mm_into(o, a, b, /*accumulate=*/true);
          return o;
        },
        pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("out") = pybind11::none(),
        "a @ b (float32) on the CPU's packed product kernel, or out += a @ b (tests).");
  m.def("_packed_chunk_rows", &fused_rnn::cpu::packed_chunk_rows,
        "CPU one-shot products of fewer rows than this pack their right operand chunk by chunk "
        "(the same bits as whole panels).");
  m.def("_set_packed_chunk_rows", &fused_rnn::cpu::set_packed_chunk_rows, pybind11::arg("rows"),
        "Set _packed_chunk_rows (tests, benchmarks; 0: whole panels always).");
  m.def("_min_prepared_rows", &fused_rnn::cpu::min_prepared_rows,
        "CPU calls with at least this many rows over all steps (T * B) prepare the recurrent "
        "weight once (MKL packing or a transposed copy); smaller ones run on it as it is.");
  m.def("_set_min_prepared_rows", &fused_rnn::cpu::set_min_prepared_rows,
        pybind11::arg("rows"), "Set _min_prepared_rows (tests, benchmarks).");
  m.def("_set_phase_clock", &fused_rnn::phase_clock::set_enabled, pybind11::arg("enabled"),
        "Switch the CPU layers' phase clock on or off (benchmarks/cpu_profile.py).");
  m.def("_phase_clock", &fused_rnn::phase_clock::read,
        "Phase -> (marks, total microseconds) booked by the CPU layers since the last reset.");
  m.def("_reset_phase_clock", &fused_rnn::phase_clock::reset, "Clear the phase clock's totals.");
  m.def("cuda_path", [] { return std::string(fused_rnn::cuda_path_name(fused_rnn::cuda_path())); },
        "CUDA path of the GRU / LSTM / RNN recurrences: 'auto', 'persistent' or 'general'.");
  m.def("set_cuda_path",
        [](const std::string& name) { fused_rnn::set_cuda_path(fused_rnn::parse_cuda_path(name)); },
        "Choose the CUDA path: 'auto' (persistent kernels where they suit the shapes), "
        "'persistent' (always; raises where they cannot run) or 'general'.");
#if defined(FUSED_RNN_WITH_CUDA)
  m.def("_persistent_profile", &fused_rnn::cuda::persistent_profile, pybind11::arg("backward"),
        "Phase clock of the last persistent-kernel launch run with "
        "FUSED_RNN_PERSISTENT_PROFILE=1 (benchmarks/persistent_sweep.py).");
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
}
