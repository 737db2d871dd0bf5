// The persistent CUDA kernels (csrc/cuda/persistent_kernels.cuh) run on the host under
// tests/cuda_host_emulation.h, as a small torch extension that tests/test_persistent_emulation.py
// builds: the same plan (choose_plan, with the FUSED_RNN_PERSISTENT_* settings of the
// environment and a device of `sms` multiprocessors, 227 KB of shared memory per block, sm_90)
// and the same kernels as on a GPU, on float32 CPU tensors laid out as the driver lays them out
// (csrc/step_params.h). Returns what ran: [blocks per cluster, tensor cores, exchange through
// distributed shared memory, blocks].
#include <torch/extension.h>

#include "cuda_host_emulation.h"
#include "../csrc/cuda/persistent_kernels.cuh"

namespace {
using namespace fused_rnn;
using namespace fused_rnn::cuda;

float* ptr(const at::Tensor& t) { return t.defined() && t.numel() ? t.data_ptr<float>() : nullptr; }

template <typename Params, template <Cell, int, typename, bool> class Pick>
std::vector<int64_t> run(const Params& p, bool backward, int64_t sms, bool tf32) {
  const DeviceLimits d{static_cast<int>(sms), 232448, true, 9};
  const Tuning tune = tuning();
  Plan plan;
  TORCH_CHECK(choose_plan<float>(gates_of(p.cell), p.batch, p.hidden, backward, d, tune, tf32,
                                 plan),
              "no plan fits");
  launch_for_cell<float, Params, Pick>(p.cell, p, plan, d, tune, backward);
  return {plan.cluster, plan.mma, plan.dsmem, plan.blocks};
}

// x: [T, B, G*H] (x_t W_ih^T; LSTM: replaced by the activations), h0 / c0: [B, H],
// w_hh: [G*H, H], b_ih / b_hh: [G*H] (LSTM / RNN: b_ih + b_hh in b_ih), out: [T, B, H],
// saved: GRU [T, B, 4H], cells: LSTM [T, B, H], lengths: [B] int64 or empty
std::vector<int64_t> forward(int64_t cell, at::Tensor x, at::Tensor h0, at::Tensor c0,
                             at::Tensor w_hh, at::Tensor b_ih, at::Tensor b_hh, at::Tensor out,
                             at::Tensor saved, at::Tensor cells, at::Tensor lengths, bool reverse,
                             int64_t sms, bool tf32) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1), GH = x.size(2);
  const RecurrenceForward<float> p{static_cast<Cell>(cell), T, B, H, reverse,
                                   lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr,
                                   ptr(w_hh), ptr(x), B * GH, GH, ptr(b_ih), ptr(b_hh), ptr(h0),
                                   ptr(c0), ptr(out), B * H, H, ptr(saved), ptr(cells), true};
  return run<RecurrenceForward<float>, ForwardKernel>(p, false, sms, tf32);
}

// grad_out / h_prev / out: [T, B, H], dh / dc: [B, H] (in: from after the last step, out: of the
// initial states), d_x: [T, B, G*H], d_h: GRU [T, B, 3H] (LSTM / RNN: d_x), saved: GRU
// [T, B, 4H], gates: LSTM activations [T, B, 4H], cells: LSTM [T, B, H]
std::vector<int64_t> backward(int64_t cell, at::Tensor w_hh, at::Tensor grad_out, at::Tensor dh,
                              at::Tensor dc, at::Tensor d_x, at::Tensor d_h, at::Tensor h_prev,
                              at::Tensor saved, at::Tensor gates, at::Tensor cells,
                              at::Tensor c0, at::Tensor out, at::Tensor lengths, bool reverse,
                              int64_t sms, bool tf32) {
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  const int64_t GH = d_x.size(2);
  const RecurrenceBackward<float> p{
      static_cast<Cell>(cell), T, B, H, reverse,
      lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr, ptr(w_hh), ptr(grad_out), B * H,
      H, ptr(dh), ptr(dc), ptr(d_x), B * GH, GH, ptr(d_h), B * d_h.size(2), d_h.size(2),
      ptr(h_prev), B * H, H, ptr(saved), ptr(gates), B * 4 * H, 4 * H, ptr(cells), ptr(c0),
      ptr(out), B * H, H};
  return run<RecurrenceBackward<float>, BackwardKernel>(p, true, sms, tf32);
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
