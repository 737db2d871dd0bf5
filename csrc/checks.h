// Argument checks shared by every operator and device: each failure names what was expected
// and what was given (shape, dtype, device).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <string>

namespace fused_rnn {

// Integers in messages go through std::to_string, never an ostream: on the lent GPU box
// (toolchain /opt/gcc) the extension got its own copy of std::ostream::_M_insert<long>, which
// crashed (SIGSEGV, cuda-gdb backtrace in benchmarks/results/gpu_check_2026-11-28_h200_run5.md)
// whenever a message printed an integer, so the error became a crash.
inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string shape_str(at::IntArrayRef sizes) {  // "[2, 3]"
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + num(sizes[i]);
  return s + "]";
}

// `t` must have exactly `expected` as shape.
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ", meaning, " = ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

// `t` must share dtype and device with `ref` (the input of the call, or for token-id input
// the weights).
inline void check_same(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& ref, const char* ref_name = "input") {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have dtype ",
              ref.scalar_type(), " (the dtype of ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on device ", ref.device(),
              " (the device of ", ref_name, "), got ", t.device());
}

// Checks of a one-layer, one-direction forward with `gates` gates (GRU 3, LSTM 4).
// Returns the hidden size, taken from w_hh: [gates*H, H].
// Integer input holds token ids: [T, B], standing for one-hot rows of width input_size.
inline bool is_token_input(const at::Tensor& input) {
  return at::isIntegralType(input.scalar_type(), /*includeBool=*/false);
}

// Checks of a one-layer, one-direction forward with `gates` gates (GRU 3, LSTM 4, RNN 1).
// input: [T, B, I] floating point, or [T, B] token ids in [0, I). Without projection the
// hidden size H comes from w_hh: [gates*H, H]; with an LSTM projection w_hr: [P, H], the state
// h has size P: w_hh: [4H, P], hx: [B, P], cx: [B, H]. Returns H.
inline int64_t check_forward_args(const char* op, int64_t gates, const at::Tensor& input,
                                  const at::Tensor& hx, const at::Tensor* cx,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const c10::optional<at::Tensor>& b_ih,
                                  const c10::optional<at::Tensor>& b_hh,
                                  const at::Tensor* w_hr = nullptr) {
  const bool tokens = is_token_input(input);
  if (tokens) {
    TORCH_CHECK(input.dim() == 2, op, ": expected token-id input to be 2-D [seq_len, batch], got ",
                num(input.dim()), "-D tensor of shape ", shape_str(input.sizes()));
  } else {
    TORCH_CHECK(input.dim() == 3, op,
                ": expected input to be 3-D [seq_len, batch, input_size], got ", num(input.dim()),
                "-D tensor of shape ", shape_str(input.sizes()));
  }
  int64_t H, P;
  if (w_hr) {
    TORCH_CHECK(w_hr->dim() == 2, op, ": expected w_hr of shape [proj_size, hidden_size], got ",
                shape_str(w_hr->sizes()));
    P = w_hr->size(0);
    H = w_hr->size(1);
    check_shape(op, "w_hh", w_hh, {gates * H, P}, "[4*hidden_size, proj_size]");
  } else {
    TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * w_hh.size(1), op,
                ": expected w_hh of shape [", num(gates), "*hidden_size, hidden_size], got ",
                shape_str(w_hh.sizes()));
    H = P = w_hh.size(1);
  }
  TORCH_CHECK(w_ih.dim() == 2, op, ": expected w_ih to be 2-D, got shape ",
              shape_str(w_ih.sizes()));
  const int64_t B = input.size(1), I = tokens ? w_ih.size(1) : input.size(2);
  check_shape(op, "w_ih", w_ih, {gates * H, I}, "[gates*hidden_size, input_size]");
  // dtype and device every floating-point argument must share: input's, or for token ids w_hh's
  const at::Tensor& ref = tokens ? w_hh : input;
  const char* ref_name = tokens ? "w_hh" : "input";
  check_shape(op, "hx", hx, {B, P}, w_hr ? "[batch, proj_size]" : "[batch, hidden_size]");
  if (cx) check_shape(op, "cx", *cx, {B, H}, "[batch, hidden_size]");
  if (b_ih) check_shape(op, "b_ih", *b_ih, {gates * H}, "[gates*hidden_size]");
  if (b_hh) check_shape(op, "b_hh", *b_hh, {gates * H}, "[gates*hidden_size]");
  if (tokens) {
    TORCH_CHECK(input.device() == ref.device(), op, ": expected input on device ", ref.device(),
                " (the device of the weights), got ", input.device());
    // the values of the ids: check_token_ids, called by the forward operators
  } else {
    check_same(op, "w_hh", w_hh, input);
  }
  check_same(op, "hx", hx, ref, ref_name);
  if (cx) check_same(op, "cx", *cx, ref, ref_name);
  check_same(op, "w_ih", w_ih, ref, ref_name);
  if (w_hr) check_same(op, "w_hr", *w_hr, ref, ref_name);
  if (b_ih) check_same(op, "b_ih", *b_ih, ref, ref_name);
  if (b_hh) check_same(op, "b_hh", *b_hh, ref, ref_name);
  return H;
}

// Token ids: every value in [0, input_size). On a GPU this reads two numbers back (a
// synchronisation), so the forward operators call it where the device can wait (not while a
// CUDA graph is being captured); an id out of range would otherwise end in a device-side
// assert, which leaves the CUDA context unusable.
inline void check_token_ids(const char* op, const at::Tensor& input, int64_t input_size) {
  if (input.numel() == 0) return;
  const at::Tensor bounds = at::stack({input.min(), input.max()}).cpu();  // [2]
  const int64_t lo = bounds[0].item<int64_t>(), hi = bounds[1].item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < input_size, op, ": expected token ids in [0, input_size=",
              num(input_size), "), got values in [", num(lo), ", ", num(hi), "]");
}

// lengths: int64 [B] on input's device with values in [0, T] (values checked on the CPU only:
// on a GPU that would cost a synchronisation; the modules check them before moving them).
inline void check_lengths(const char* op, const c10::optional<at::Tensor>& lengths,
                          const at::Tensor& input) {
  if (!lengths.has_value() || !lengths->defined()) return;
  const at::Tensor& l = *lengths;
  const int64_t T = input.size(0), B = input.size(1);
  check_shape(op, "lengths", l, {B}, "[batch]");
  TORCH_CHECK(l.scalar_type() == at::kLong, op, ": expected lengths of dtype Long, got ",
              l.scalar_type());
  TORCH_CHECK(l.device() == input.device(), op, ": expected lengths on device ", input.device(),
              " (the device of input), got ", l.device());
  if (l.is_cpu() && B > 0) {
    const int64_t lo = l.min().item<int64_t>(), hi = l.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi <= T, op, ": expected lengths in [0, seq_len=", num(T),
                "], got values in [", num(lo), ", ", num(hi), "]");
  }
}

// A tensor saved by the forward must have the shape the forward gave it.
// ref: w_hh (which every floating-point tensor of a call matches in dtype and device).
inline void check_saved(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const at::Tensor& ref) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ",
              shape_str(expected), ", got ", shape_str(t.sizes()),
              (t.numel() == 0 ? " (was the forward called with save_activations=False?)" : ""));
  check_same(op, name, t, ref, "w_hh");
}

}  // namespace fused_rnn
