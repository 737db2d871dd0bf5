"""The per-step GEMM back ends of the CPU schedules against each other and nn.*: the library's
own kernel on W packed into strips ("own-packed", the default off Intel CPUs) and MKL's packed
API ("mkl-packed"), each point's three callables timed interleaved (bench.py's
interleaved_medians), T=35, I=H, 2 threads, at points where auto runs per-step or row blocks.

    python benchmarks/cpu_gemm_backends.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import interleaved_medians, make_fn  # noqa: E402

import fused_rnn  # noqa: E402

POINTS = [("LSTM", 32, 128, "row-blocks"), ("RNN", 32, 128, "row-blocks"),
          ("LSTM", 128, 128, "row-blocks"), ("GRU", 128, 128, "per-step"),
          ("LSTM", 256, 256, "per-step"), ("GRU", 64, 64, "per-step")]


def main():
    torch.set_num_threads(2)
    saved = fused_rnn._C.cpu_gemm_backend(), fused_rnn.cpu_schedule()
    try:
        for cell, B, H, schedule in POINTS:
            for mode in ("inference", "training"):
                torch.manual_seed(0)
                fused = getattr(fused_rnn, cell)(H, H)
                ref = getattr(torch.nn, cell)(H, H)
                ref.load_state_dict(fused.state_dict())
                x = torch.randn(35, B, H)  # x: [T, B, H]
                fused_rnn.set_cpu_schedule(schedule)
                fns = []
                for backend in ("own-packed", "mkl-packed"):
                    step = make_fn(fused, x, mode == "training")

                    def run(step=step, backend=backend):
                        fused_rnn._C.set_cpu_gemm_backend(backend)
                        step()
                    fns.append(run)
                fns.append(make_fn(ref, x, mode == "training"))
                own, mkl, nn = interleaved_medians(fns, "cpu", 0.4)
                print(f"{cell} B={B} H={H} {schedule} {mode}: own {own * 1e3:.2f} ms, "
                      f"mkl {mkl * 1e3:.2f} ms, nn.* {nn * 1e3:.2f} ms -> own / mkl time "
                      f"{own / mkl:.2f}, nn.* / own {nn / own:.2f}x", flush=True)
    finally:
        fused_rnn._C.set_cpu_gemm_backend(saved[0])
        fused_rnn.set_cpu_schedule(saved[1])


if __name__ == "__main__":
    main()
