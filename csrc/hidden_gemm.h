// The per-step hidden GEMM of one call: out: [B, N] (+)= h: [B, K] op(W), where W is the same
// for every step of the call, so a device may prepare it once (the CPU packs it for MKL).
#pragma once

#include <ATen/ATen.h>

#include <memory>

namespace fused_rnn {

template <typename S>
struct HiddenGemm {
  virtual ~HiddenGemm() = default;
  // h: [B, K] (unit inner stride), out: [B, N] (unit inner stride); accumulate: out += ...
  virtual void run(const at::Tensor& h, const at::Tensor& out, bool accumulate) const = 0;
};

// w: [N, K] when transpose_w (op(W) = w^T, the forward's h W_hh^T), else w: [K, N];
// rows: the B of the calls to come.
template <typename S>
using HiddenGemmFactory = std::unique_ptr<HiddenGemm<S>> (*)(const at::Tensor& w,
                                                             bool transpose_w, int64_t rows);

// Any device: ATen's mm on op(W) given as `w_op`: [K, N].
template <typename S>
struct AtenHiddenGemm final : HiddenGemm<S> {
  at::Tensor w_op;
  explicit AtenHiddenGemm(at::Tensor w_op_) : w_op(std::move(w_op_)) {}
  void run(const at::Tensor& h, const at::Tensor& out, bool accumulate) const override {
    at::Tensor o = out;
    if (accumulate) {
      at::addmm_out(o, out, h, w_op);
    } else {
      at::mm_out(o, h, w_op);
    }
  }
};

}  // namespace fused_rnn
