// Argument checks shared by every operator and device: each failure names what was expected
// and what was given (shape, dtype, device).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <sstream>
#include <string>

namespace fused_rnn {

inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "]";
  return os.str();
}

// `t` must have exactly `expected` as shape.
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ", meaning, " = ",
              shape_str(expected), ", got ", shape_str(t.sizes()));
}

// `t` must share dtype and device with `ref` (the input of the call).
inline void check_same(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have dtype ",
              ref.scalar_type(), " (the dtype of input), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on device ", ref.device(),
              " (the device of input), got ", t.device());
}

// Checks of a one-layer, one-direction forward with `gates` gates (GRU 3, LSTM 4).
// Returns the hidden size, taken from w_hh: [gates*H, H].
inline int64_t check_forward_args(const char* op, int64_t gates, const at::Tensor& input,
                                  const at::Tensor& hx, const at::Tensor* cx,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const c10::optional<at::Tensor>& b_ih,
                                  const c10::optional<at::Tensor>& b_hh) {
  TORCH_CHECK(input.dim() == 3, op, ": expected input to be 3-D [seq_len, batch, input_size], got ",
              input.dim(), "-D tensor of shape ", shape_str(input.sizes()));
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == gates * w_hh.size(1), op,
              ": expected w_hh of shape [", gates, "*hidden_size, hidden_size], got ",
              shape_str(w_hh.sizes()));
  const int64_t B = input.size(1), I = input.size(2), H = w_hh.size(1);
  check_shape(op, "w_ih", w_ih, {gates * H, I}, "[gates*hidden_size, input_size]");
  check_shape(op, "hx", hx, {B, H}, "[batch, hidden_size]");
  if (cx) check_shape(op, "cx", *cx, {B, H}, "[batch, hidden_size]");
  if (b_ih) check_shape(op, "b_ih", *b_ih, {gates * H}, "[gates*hidden_size]");
  if (b_hh) check_shape(op, "b_hh", *b_hh, {gates * H}, "[gates*hidden_size]");
  check_same(op, "hx", hx, input);
  if (cx) check_same(op, "cx", *cx, input);
  check_same(op, "w_ih", w_ih, input);
  check_same(op, "w_hh", w_hh, input);
  if (b_ih) check_same(op, "b_ih", *b_ih, input);
  if (b_hh) check_same(op, "b_hh", *b_hh, input);
  return H;
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
    TORCH_CHECK(lo >= 0 && hi <= T, op, ": expected lengths in [0, seq_len=", T, "], got values in [",
                lo, ", ", hi, "]");
  }
}

// A tensor saved by the forward must have the shape the forward gave it.
inline void check_saved(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const at::Tensor& ref) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", name, " of shape ",
              shape_str(expected), ", got ", shape_str(t.sizes()),
              (t.numel() == 0 ? " (was the forward called with save_activations=False?)" : ""));
  check_same(op, name, t, ref);
}

}  // namespace fused_rnn
