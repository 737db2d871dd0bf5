// The persistent CUDA kernels (csrc/cuda/persistent_kernels.cuh) run on the host under
// tests/cuda_host_emulation.h, as a small torch extension that tests/test_persistent_emulation.py
// builds: the same plan (choose_plan, with the FUSED_RNN_PERSISTENT_* settings of the
// environment and a device of `sms` multiprocessors, `smem` bytes of shared memory per block
// (0: the H200's 227 KB), sm_90)
// and the same kernels as on a GPU, on float32 / bfloat16 / float16 CPU tensors laid out as the
// driver lays them out (csrc/step_params.h). Returns what ran: [blocks per cluster, tensor cores,
// exchange through distributed shared memory, blocks, blocks sharing the staging, tagged
// exchange, blocks splitting the reduction].
#include <torch/extension.h>

#include "cuda_host_emulation.h"
#include "../csrc/cuda/persistent_kernels.cuh"

namespace {
using namespace fused_rnn;
using namespace fused_rnn::cuda;

template <typename S>
S* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<S*>(t.data_ptr()) : nullptr;
}

template <typename S, typename Params, template <Cell, int, typename, bool> class Pick>
std::vector<int64_t> run(const Params& p, bool backward, int64_t sms, int64_t smem, bool tf32) {
  const DeviceLimits d{static_cast<int>(sms), static_cast<size_t>(smem > 0 ? smem : 232448), true,
                       9};
  const Tuning tune = tuning();
  Plan plan;
  TORCH_CHECK(choose_plan<S>(gates_of(p.cell), p.batch, p.hidden, backward, d, tune, tf32, plan),
              "no plan fits");
  launch_for_cell<S, Params, Pick>(p.cell, p, plan, d, tune, backward);
  return {plan.cluster, plan.mma, plan.dsmem, plan.blocks, plan.share, plan.tagged, plan.split};
}

// f(S{}) for the storage type `type`.
template <typename F>
std::vector<int64_t> dispatch(at::ScalarType type, F f) {
  switch (type) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "float32, bfloat16 or float16 expected, got ", type);
  }
}

// x: [T, B, G*H] (x_t W_ih^T; LSTM: replaced by the activations), h0 / c0: [B, H],
// w_hh: [G*H, H], b_ih / b_hh: [G*H] (LSTM / RNN: b_ih + b_hh in b_ih), out: [T, B, H],
// saved: GRU [T, B, 4H], cells: LSTM [T, B, H], lengths: [B] int64 or empty
std::vector<int64_t> forward(int64_t cell, at::Tensor x, at::Tensor h0, at::Tensor c0,
                             at::Tensor w_hh, at::Tensor b_ih, at::Tensor b_hh, at::Tensor out,
                             at::Tensor saved, at::Tensor cells, at::Tensor lengths, bool reverse,
                             int64_t sms, int64_t smem, bool tf32) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1), GH = x.size(2);
  return dispatch(x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const RecurrenceForward<S> p{static_cast<Cell>(cell), T, B, H, reverse,
                                 lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr,
                                 ptr<S>(w_hh), ptr<S>(x), B * GH, GH, ptr<S>(b_ih), ptr<S>(b_hh),
                                 ptr<S>(h0), ptr<S>(c0), ptr<S>(out), B * H, H, ptr<S>(saved),
                                 ptr<S>(cells), true};
    return run<S, RecurrenceForward<S>, ForwardKernel>(p, false, sms, smem, tf32);
  });
}

// grad_out / h_prev / out: [T, B, H], dh / dc: [B, H] (in: from after the last step, out: of the
// initial states), d_x: [T, B, G*H], d_h: GRU [T, B, 3H] (LSTM / RNN: d_x), saved: GRU
// [T, B, 4H], gates: LSTM activations [T, B, 4H], cells: LSTM [T, B, H]
std::vector<int64_t> backward(int64_t cell, at::Tensor w_hh, at::Tensor grad_out, at::Tensor dh,
                              at::Tensor dc, at::Tensor d_x, at::Tensor d_h, at::Tensor h_prev,
                              at::Tensor saved, at::Tensor gates, at::Tensor cells,
                              at::Tensor c0, at::Tensor out, at::Tensor lengths, bool reverse,
                              int64_t sms, int64_t smem, bool tf32) {
  const int64_t T = grad_out.size(0), B = grad_out.size(1), H = grad_out.size(2);
  const int64_t GH = d_x.size(2);
  return dispatch(grad_out.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const RecurrenceBackward<S> p{
        static_cast<Cell>(cell), T, B, H, reverse,
        lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr, ptr<S>(w_hh), ptr<S>(grad_out),
        B * H, H, ptr<S>(dh), ptr<S>(dc), ptr<S>(d_x), B * GH, GH, ptr<S>(d_h),
        B * d_h.size(2), d_h.size(2), ptr<S>(h_prev), B * H, H, ptr<S>(saved), ptr<S>(gates),
        B * 4 * H, 4 * H, ptr<S>(cells), ptr<S>(c0), ptr<S>(out), B * H, H};
    return run<S, RecurrenceBackward<S>, BackwardKernel>(p, true, sms, smem, tf32);
  });
}
// The plan of one call (choose_plan under the FUSED_RNN_PERSISTENT_* settings of the
// environment) on an sm_90 device of `sms` multiprocessors with `smem` bytes of shared memory per
// block: [fits, units per block, staged rows per pass, blocks, tensor cores, blocks per cluster,
// batch rows per cluster, exchange through distributed shared memory, shared memory bytes,
// blocks sharing the staging, tagged exchange, blocks splitting the reduction].
std::vector<int64_t> plan(int64_t gates, int64_t B, int64_t H, bool backward, at::ScalarType type,
                          int64_t sms, int64_t smem, bool tf32) {
  const DeviceLimits d{static_cast<int>(sms), static_cast<size_t>(smem), true, 9};
  const Tuning tune = tuning();
  return dispatch(type, [&](auto tag) -> std::vector<int64_t> {
    Plan pl;
    const bool fits =
        choose_plan<decltype(tag)>(static_cast<int>(gates), B, H, backward, d, tune, tf32, pl);
    return {fits,       pl.units,   pl.staged_rows, pl.blocks,
            pl.mma,     pl.cluster, pl.group_rows,  pl.dsmem,
            static_cast<int64_t>(pl.smem), pl.share, pl.tagged, pl.split};
  });
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_schedule", [](int64_t seed) { emu::set_schedule(static_cast<uint64_t>(seed)); },
        "0: threads in index order, cp.async at once; else random orders and cp.async times");
  m.def("set_laggards", [](bool every_launch) { emu::set_laggards(every_launch); },
        "random schedules: a laggard block in every launch (else in every other one, drawn)");
  m.def("plan", &plan);
  m.def("forward", &forward);
  m.def("backward", &backward);
}
