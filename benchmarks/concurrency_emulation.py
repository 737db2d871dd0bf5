"""Would running two pieces of a layer's work at the same time, one per thread, beat running
each on both threads? Two emulations (benchmarks/cpu_notes.md, "Tried, not kept"), with ATen's
GEMMs and a spin for the pointwise kernel, so that they need no change to the operators:

  overlap: a GRU / LSTM / RNN backward recurrence (per step dh += d_g W_hh) on one thread while
           the other computes the weight- and input-gradient GEMMs of the 256-row pieces whose
           steps are done; the pieces left when the recurrence ends run on both threads.
  bidir:   the two directions of a bidirectional layer (per step h W_hh^T) at the same time,
           one per thread, against one after the other on both threads.

    python benchmarks/concurrency_emulation.py            # T=35 B=32 H=256, GRU, LSTM, RNN
Needs OpenMP (builds a small extension with torch.utils.cpp_extension.load_inline).
"""
import argparse
import statistics

import torch
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>
#include <omp.h>
#include <atomic>
#include <chrono>
#include <thread>
using at::Tensor;

static void spin(int64_t us) {  // the pointwise kernel's time
  const auto s0 = std::chrono::steady_clock::now();
  using us_t = std::chrono::duration<double, std::micro>;
  while (us_t(std::chrono::steady_clock::now() - s0).count() < us) {}
}
static double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// dg: [T*B, G*H] gate gradients, w: [G*H, H] W_hh, xs: [T*B, I] inputs, hp: [T*B, H] previous
// states, w_ih: [G*H, I]. Returns the milliseconds of the whole backward.
double overlap(Tensor dg, Tensor w, Tensor xs, Tensor hp, Tensor w_ih, int64_t T, int64_t B,
               bool concurrent, int64_t spin_us) {
  Tensor dh = at::zeros({B, w.size(1)});                             // dh: [B, H]
  const int64_t N = T * B, piece = 256, pieces = (N + piece - 1) / piece;
  Tensor dw = at::zeros({w.size(0), hp.size(1)});                    // dw: [G*H, H]
  Tensor dw_ih = at::zeros({w_ih.size(0), xs.size(1)});              // dw_ih: [G*H, I]
  Tensor dx = at::empty({N, w_ih.size(1)});                          // dx: [T*B, I]
  auto step = [&](int64_t t) { dh.addmm_(dg.narrow(0, t * B, B), w); spin(spin_us); };
  auto do_piece = [&](int64_t k) {
    const int64_t r0 = k * piece, n = std::min(piece, N - r0);
    dw.addmm_(dg.narrow(0, r0, n).t(), hp.narrow(0, r0, n));
    dw_ih.addmm_(dg.narrow(0, r0, n).t(), xs.narrow(0, r0, n));
    dx.narrow(0, r0, n).copy_(at::mm(dg.narrow(0, r0, n), w_ih));
  };
  const auto t0 = std::chrono::steady_clock::now();
  if (!concurrent) {
    for (int64_t t = T - 1; t >= 0; --t) step(t);
    for (int64_t k = pieces - 1; k >= 0; --k) do_piece(k);
    return ms_since(t0);
  }
  std::atomic<int64_t> done{0}, next{pieces - 1};
#pragma omp parallel num_threads(2)
  {
    if (omp_get_thread_num() == 0) {
      for (int64_t t = T - 1; t >= 0; --t) { step(t); done.store(T - t); }
    } else {
      for (int64_t k = next.load(); k >= 0; k = next.load()) {
        const int64_t first_step = k * piece / B;  // the piece is ready once this step is done
        while (done.load() < T - first_step && done.load() < T) std::this_thread::yield();
        if (done.load() == T) break;  // the rest on both threads
        next.store(k - 1);
        do_piece(k);
      }
    }
  }
  for (int64_t k = next.load(); k >= 0; --k) do_piece(k);
  return ms_since(t0);
}

// h0, h1: [B, H] the two directions' states, w0, w1: [G*H, H]. Milliseconds for T steps each.
double bidir(Tensor h0, Tensor h1, Tensor w0, Tensor w1, int64_t T, bool concurrent,
             int64_t spin_us) {
  Tensor g0 = at::empty({h0.size(0), w0.size(0)}), g1 = at::empty({h1.size(0), w1.size(0)});
  Tensor wt0 = w0.t().contiguous(), wt1 = w1.t().contiguous();  // [H, G*H]
  auto run = [&](Tensor& h, Tensor& wt, Tensor& g) {
    for (int64_t t = 0; t < T; ++t) { at::mm_out(g, h, wt); spin(spin_us); }
  };
  const auto t0 = std::chrono::steady_clock::now();
  if (!concurrent) {
    run(h0, wt0, g0);
    run(h1, wt1, g1);
  } else {
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 0) run(h0, wt0, g0); else run(h1, wt1, g1);
    }
  }
  return ms_since(t0);
}
"""

GATES = {"GRU": 3, "LSTM": 4, "RNN": 1}
# The pointwise kernel's time per step on the whole batch with 2 threads (each thread its half
# of the rows): forward / backward, microseconds (benchmarks/cpu_notes.md, in-layer split).
POINTWISE_US = {"GRU": (12, 10), "LSTM": (15, 10), "RNN": (3, 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=35)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    ext = load_inline("fused_rnn_concurrency_emulation", cpp_sources=[SOURCE],
                      functions=["overlap", "bidir"], extra_cflags=["-O3", "-fopenmp"],
                      extra_ldflags=["-fopenmp"])
    torch.set_num_threads(2)
    T, B, H = args.T, args.B, args.H
    for cell, g in GATES.items():
        fwd_us, bwd_us = POINTWISE_US[cell]
        dg, w = torch.randn(T * B, g * H), torch.randn(g * H, H)  # dg: [T*B, G*H], w: [G*H, H]
        xs, hp = torch.randn(T * B, H), torch.randn(T * B, H)     # xs, hp: [T*B, H]
        w_ih = torch.randn(g * H, H)                              # w_ih: [G*H, I=H]
        h0, h1, w1 = torch.randn(B, H), torch.randn(B, H), torch.randn(g * H, H)
        times = {k: [] for k in ("overlap 0", "overlap 1", "bidir 0", "bidir 1")}
        for _ in range(args.rounds):  # interleaved
            for conc in (False, True):
                # one thread does the whole batch's pointwise work: twice the 2-thread time
                times[f"overlap {int(conc)}"].append(
                    ext.overlap(dg, w, xs, hp, w_ih, T, B, conc, bwd_us * (2 if conc else 1)))
                times[f"bidir {int(conc)}"].append(
                    ext.bidir(h0, h1, w, w1, T, conc, fwd_us * (2 if conc else 1)))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{cell} T={T} B={B} H={H}: backward with weight gradients {med['overlap 0']:.2f} ms"
              f" -> overlapped {med['overlap 1']:.2f} ms"
              f" ({med['overlap 0'] / med['overlap 1']:.2f}x);"
              f" two directions {med['bidir 0']:.2f} ms -> at once {med['bidir 1']:.2f} ms"
              f" ({med['bidir 0'] / med['bidir 1']:.2f}x)")


if __name__ == "__main__":
    main()
