// Plain-old-data descriptions of one time step of each fused cell, shared by the CPU loops and
// the CUDA kernels. Every pointer addresses the rows of one time step; `*_row` is the distance in
// elements between two consecutive batch rows. The feature dimension is always contiguous.
//
// Variable lengths: `lengths` (nullptr: every sequence has all T steps) gives each batch row's
// length; at time index `t`, rows with t >= lengths[b] are inactive: they carry their state
// unchanged (h = h_prev, c = c_prev) and get zero gate gradients, their dh / dc pass through.
#pragma once

#include <cstdint>

namespace fused_rnn {

template <typename scalar_t>
struct GruForwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* gi;      int64_t gi_row;      // gi: [B, 3H]  x_t W_ih^T (gates r, z, n), no bias
  const scalar_t* gh;      int64_t gh_row;      // gh: [B, 3H]  h_prev W_hh^T, no bias
  const scalar_t* b_ih;                         // b_ih: [3H], or nullptr when the layer has no bias
  const scalar_t* b_hh;                         // b_hh: [3H], or nullptr when the layer has no bias
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  scalar_t* h;             int64_t h_row;       // h: [B, H]  this step's output
  scalar_t* saved;         int64_t saved_row;   // saved: [B, 4H]  r, z, n, gh_n; nullptr: inference
  int64_t t;                                    // time index of this step
  const int64_t* lengths;                       // lengths: [B] or nullptr
};

template <typename scalar_t>
struct GruBackwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* grad_h;  int64_t grad_h_row;  // grad_h: [B, H]  dL/d(output at this step)
  scalar_t* dh;                                 // dh: [B, H] contiguous; in: dL/dh from later
                                                //   steps; out: the part of dL/dh_prev not via W_hh
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  const scalar_t* saved;   int64_t saved_row;   // saved: [B, 4H]  r, z, n, gh_n of the forward
  scalar_t* d_gi;          int64_t d_gi_row;    // d_gi: [B, 3H]  dL/d(gi)
  scalar_t* d_gh;          int64_t d_gh_row;    // d_gh: [B, 3H]  dL/d(gh + b_hh)
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct LstmForwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  scalar_t* gates;         int64_t gates_row;   // gates: [B, 4H]  in: x_t W_ih^T + h_prev W_hh^T
                                                //   (gates i, f, g, o, no bias); out: activations
  const scalar_t* bias;                         // bias: [4H] b_ih + b_hh, or nullptr (no bias)
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]; nullptr (projected LSTM):
                                                //   inactive rows get h = 0 here
  const scalar_t* c_prev;  int64_t c_prev_row;  // c_prev: [B, H]
  scalar_t* c;             int64_t c_row;       // c: [B, H]
  scalar_t* h;             int64_t h_row;       // h: [B, H]
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct LstmBackwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* grad_h;  int64_t grad_h_row;  // grad_h: [B, H]  dL/d(output at this step)
  scalar_t* dh;                                 // dh: [B, H] contiguous; in: dL/dh from later
                                                //   steps; out: the part of dL/dh_prev not via W_hh
  scalar_t* dc;                                 // dc: [B, H] contiguous; in: dL/dc from later
                                                //   steps; out: dL/dc_prev
  const scalar_t* gates;   int64_t gates_row;   // gates: [B, 4H]  saved activations i, f, g, o
  const scalar_t* c_prev;  int64_t c_prev_row;  // c_prev: [B, H]
  const scalar_t* c;       int64_t c_row;       // c: [B, H]
  scalar_t* d_gates;       int64_t d_gates_row; // d_gates: [B, 4H]  dL/d(pre-activations)
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct RnnForwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* pre;     int64_t pre_row;     // pre: [B, H]  x_t W_ih^T + h_prev W_hh^T, no bias
  const scalar_t* bias;                         // bias: [H] b_ih + b_hh, or nullptr (no bias)
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  scalar_t* h;             int64_t h_row;       // h: [B, H]
  bool relu;                                    // nonlinearity: relu (true) or tanh
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct RnnBackwardStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* grad_h;  int64_t grad_h_row;  // grad_h: [B, H]  dL/d(output at this step)
  scalar_t* dh;                                 // dh: [B, H] contiguous; in: dL/dh from later
                                                //   steps; out: the part of dL/dh_prev not via W_hh
  const scalar_t* h;       int64_t h_row;       // h: [B, H]  this step's output
  scalar_t* d_pre;         int64_t d_pre_row;   // d_pre: [B, H]  dL/d(pre-activation)
  bool relu;
  int64_t t;
  const int64_t* lengths;
};

// GRU, textbook form: a step is two halves around the second GEMM (see gates.h).
template <typename scalar_t>
struct GruTextbookGatesStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* gi;      int64_t gi_row;      // gi: [B, 3H]  x_t W_ih^T, no bias
  const scalar_t* gh;      int64_t gh_row;      // gh: [B, 2H]  h_prev W_h(r,z)^T, no bias
  const scalar_t* b_ih;                         // b_ih: [3H] or nullptr
  const scalar_t* b_hh;                         // b_hh: [3H] or nullptr
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  scalar_t* act;           int64_t act_row;     // act: [B, 3H]  writes r, z
  scalar_t* rh;                                 // rh: [B, H] contiguous, r * h_prev
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct GruTextbookStateStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* gi;      int64_t gi_row;      // gi: [B, 3H]  x_t W_ih^T, no bias
  const scalar_t* gh_n;                         // gh_n: [B, H] contiguous, (r*h_prev) W_hn^T
  const scalar_t* b_ih;                         // b_ih: [3H] or nullptr
  const scalar_t* b_hh;                         // b_hh: [3H] or nullptr
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  scalar_t* act;           int64_t act_row;     // act: [B, 3H]  reads z, writes n
  scalar_t* h;             int64_t h_row;       // h: [B, H]
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct GruTextbookStateBackStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* grad_h;  int64_t grad_h_row;  // grad_h: [B, H]
  scalar_t* dh;                                 // dh: [B, H] contiguous; in: dL/dh from later
                                                //   steps; out: dh * z (inactive rows: as is)
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  const scalar_t* act;     int64_t act_row;     // act: [B, 3H]  r, z, n of the forward
  scalar_t* d_g;           int64_t d_g_row;     // d_g: [B, 3H]  writes d_z, d_n (d_r: 2nd half)
  int64_t t;
  const int64_t* lengths;
};

template <typename scalar_t>
struct GruTextbookGatesBackStep {
  int64_t batch;   // B
  int64_t hidden;  // H
  const scalar_t* d_rh;                         // d_rh: [B, H] contiguous, d_n W_hn
  const scalar_t* h_prev;  int64_t h_prev_row;  // h_prev: [B, H]
  const scalar_t* act;     int64_t act_row;     // act: [B, 3H]  r, z, n of the forward
  scalar_t* dh;                                 // dh: [B, H] contiguous, += d_rh * r
  scalar_t* d_g;           int64_t d_g_row;     // d_g: [B, 3H]  writes d_r
  int64_t t;
  const int64_t* lengths;
};

// A whole recurrence of one layer and direction (GRU, LSTM or Elman RNN), for devices that run
// all T steps in one kernel (the CUDA persistent kernels). Sequence tensors are given as a base
// pointer plus the distances in elements between steps (`*_step`) and batch rows (`*_row`).
enum class Cell : int { kGru = 0, kLstm = 1, kRnnTanh = 2, kRnnRelu = 3 };

// Gate blocks of a cell's weights (W_ih, W_hh: [gates_of(cell) * H, *]).
constexpr int gates_of(Cell cell) {
  return cell == Cell::kGru ? 3 : cell == Cell::kLstm ? 4 : 1;
}

// Time index of processing step s of T (a reversed direction runs from the last step).
constexpr int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }

template <typename scalar_t>
struct RecurrenceForward {
  Cell cell;
  int64_t steps, batch, hidden;  // T, B, H
  bool reverse;
  const int64_t* lengths;        // lengths: [B] or nullptr
  const scalar_t* w_hh;          // w_hh: [G*H, H] contiguous (G = 3 GRU, 4 LSTM, 1 RNN)
  scalar_t* x; int64_t x_step, x_row;  // x: [T, B, G*H]  x_t W_ih^T (LSTM: overwritten with
                                       //   the gate activations, as the per-step loop does)
  const scalar_t* b_ih;          // GRU: b_ih [3H]; LSTM / RNN: b_ih + b_hh [G*H]; or nullptr
  const scalar_t* b_hh;          // GRU: b_hh [3H] or nullptr; unused otherwise
  const scalar_t* h0;            // h0: [B, H] contiguous
  const scalar_t* c0;            // c0: [B, H] contiguous (LSTM)
  scalar_t* out; int64_t out_step, out_row;  // out: [T, B, H]
  scalar_t* saved;               // GRU: [T, B, 4H] contiguous (r, z, n, gh_n) or nullptr
  scalar_t* cells;               // LSTM: [T, B, H] contiguous when cells_per_step, else [2, B, H]
  bool cells_per_step;
};

template <typename scalar_t>
struct RecurrenceBackward {
  Cell cell;
  int64_t steps, batch, hidden;  // T, B, H
  bool reverse;
  const int64_t* lengths;        // lengths: [B] or nullptr
  const scalar_t* w_hh;          // w_hh: [G*H, H] contiguous
  const scalar_t* grad_out; int64_t go_step, go_row;  // grad_out: [T, B, H]
  scalar_t* dh;                  // dh: [B, H] contiguous; in: dL/dh_T; out: dL/dh0
  scalar_t* dc;                  // dc: [B, H] contiguous (LSTM); in: dL/dc_T; out: dL/dc0
  scalar_t* d_x; int64_t dx_step, dx_row;  // d_x: [T, B, G*H]  GRU: d_gi; LSTM: d_gates; RNN: d_pre
  scalar_t* d_h; int64_t dh_step, dh_row;  // d_h: [T, B, 3H]  GRU: d_gh (LSTM / RNN: = d_x)
  const scalar_t* h_prev; int64_t hp_step, hp_row;  // GRU: h_prevs [T, B, H]
  const scalar_t* saved;         // GRU: [T, B, 4H] contiguous
  const scalar_t* gates; int64_t g_step, g_row;  // LSTM: activations [T, B, 4H]
  const scalar_t* cells;         // LSTM: [T, B, H] contiguous
  const scalar_t* c0;            // LSTM: [B, H] contiguous
  const scalar_t* out; int64_t out_step, out_row;  // RNN: h [T, B, H]
};

// The pointwise part of one step on one device, for one dtype.
template <typename scalar_t>
struct StepKernels {
  void (*gru_forward)(const GruForwardStep<scalar_t>&);
  void (*gru_backward)(const GruBackwardStep<scalar_t>&);
  void (*lstm_forward)(const LstmForwardStep<scalar_t>&);
  void (*lstm_backward)(const LstmBackwardStep<scalar_t>&);
  void (*rnn_forward)(const RnnForwardStep<scalar_t>&);
  void (*rnn_backward)(const RnnBackwardStep<scalar_t>&);
  void (*gru_textbook_gates)(const GruTextbookGatesStep<scalar_t>&);
  void (*gru_textbook_state)(const GruTextbookStateStep<scalar_t>&);
  void (*gru_textbook_state_back)(const GruTextbookStateBackStep<scalar_t>&);
  void (*gru_textbook_gates_back)(const GruTextbookGatesBackStep<scalar_t>&);
  // Whole recurrences in one kernel (CUDA persistent path). nullptr, or false returned (the
  // shapes do not suit it, or the general path was chosen): the caller runs the step loop.
  bool (*recurrence_forward)(const RecurrenceForward<scalar_t>&) = nullptr;
  bool (*recurrence_backward)(const RecurrenceBackward<scalar_t>&) = nullptr;
};

}  // namespace fused_rnn
