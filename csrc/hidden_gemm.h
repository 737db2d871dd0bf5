// The per-step hidden GEMM of one call: out: [B, N] (+)= h: [B, K] op(W), where W is the same
// for every step of the call, so a device may prepare it once (the CPU packs it for MKL).
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fused_rnn {

template <typename S>
struct HiddenGemm {
  virtual ~HiddenGemm() = default;
  // h: [rows, K] with row stride h_row, out: [rows, N] with row stride out_row (both unit inner
  // stride); accumulate: out += h op(W), else out = h op(W). Raw pointers: no tensor per step.
  virtual void run(const S* h, int64_t h_row, S* out, int64_t out_row, int64_t rows,
                   bool accumulate) const = 0;
};

// w: [N, K] when transpose_w (op(W) = w^T, the forward's h W_hh^T), else w: [K, N];
// rows: the B of the calls to come; steps: how many calls will come (T), so that a device can
// weigh preparing W once against running each call on W as it is.
template <typename S>
using HiddenGemmFactory = std::unique_ptr<HiddenGemm<S>> (*)(const at::Tensor& w,
                                                             bool transpose_w, int64_t rows,
                                                             int64_t steps);

// Any device: ATen's mm on op(W) given as `w_op`: [K, N].
template <typename S>
struct AtenHiddenGemm final : HiddenGemm<S> {
  at::Tensor w_op;  // [K, N]
  explicit AtenHiddenGemm(at::Tensor w_op_) : w_op(std::move(w_op_)) {}
  void run(const S* h, int64_t h_row, S* out, int64_t out_row, int64_t rows,
           bool accumulate) const override {
    if (rows == 0) return;  // an empty batch: nothing to compute (and h, out may be null)
    const int64_t K = w_op.size(0), N = w_op.size(1);
    // The device is given: from_blob would otherwise ask the driver where each pointer lives
    // (cudaPointerGetAttributes, every step).
    const at::Tensor h_t = at::for_blob(const_cast<S*>(h), {rows, K})
                               .strides({h_row, 1})
                               .options(w_op.options())
                               .target_device(w_op.device())
                               .make_tensor();
    at::Tensor out_t = at::for_blob(out, {rows, N})
                           .strides({out_row, 1})
                           .options(w_op.options())
                           .target_device(w_op.device())
                           .make_tensor();
    if (accumulate) {
      at::addmm_out(out_t, out_t, h_t, w_op);
    } else {
      at::mm_out(out_t, h_t, w_op);
    }
  }
};

}  // namespace fused_rnn
