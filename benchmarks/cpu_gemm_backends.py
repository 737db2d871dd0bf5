"""The per-step GEMM back ends of the CPU schedules against each other and nn.*: the library's
own kernel on W packed into strips ("own-packed", the default off Intel CPUs) and MKL's packed
API ("mkl-packed"), each point's three callables timed interleaved (bench.py's
interleaved_medians), T=35, I=H, 2 threads, at points where auto runs per-step or row blocks.

    python benchmarks/cpu_gemm_backends.py
    python benchmarks/cpu_gemm_backends.py --auto --cells GRU LSTM --B 1 8 32 --H 256 512

--auto: every point in schedule auto, where the back end also picks the rest of the rule set
(the one-shot products on the library's kernel and auto's lane / row-block limits follow
"own-packed"; cpu_kernels.h own_packed_backend), so the two columns are the two complete rule
sets on this machine.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import interleaved_medians, make_fn  # noqa: E402

import fused_rnn  # noqa: E402

POINTS = [("LSTM", 32, 128, "row-blocks"), ("RNN", 32, 128, "row-blocks"),
          ("LSTM", 128, 128, "row-blocks"), ("GRU", 128, 128, "per-step"),
          ("LSTM", 256, 256, "per-step"), ("GRU", 64, 64, "per-step")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--auto", action="store_true", help="schedule auto over the grid below")
    ap.add_argument("--cells", nargs="+", default=["GRU", "LSTM", "RNN"])
    ap.add_argument("--B", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--H", nargs="+", type=int, default=[256])
    ap.add_argument("--modes", nargs="+", default=["inference", "training"])
    ap.add_argument("--T", type=int, default=35)
    ap.add_argument("--min-run-time", type=float, default=0.4)
    args = ap.parse_args(argv)
    points = ([(c, B, H, "auto") for H in args.H for B in args.B for c in args.cells]
              if args.auto else POINTS)
    torch.set_num_threads(2)
    saved = fused_rnn._C.cpu_gemm_backend(), fused_rnn.cpu_schedule()
    try:
        for cell, B, H, schedule in points:
            for mode in args.modes:
                torch.manual_seed(0)
                fused = getattr(fused_rnn, cell)(H, H)
                ref = getattr(torch.nn, cell)(H, H)
                ref.load_state_dict(fused.state_dict())
                x = torch.randn(args.T, B, H)  # x: [T, B, H]
                fused_rnn.set_cpu_schedule(schedule)
                fns = []
                for backend in ("own-packed", "mkl-packed"):
                    step = make_fn(fused, x, mode == "training")

                    def run(step=step, backend=backend):
                        fused_rnn._C.set_cpu_gemm_backend(backend)
                        step()
                    fns.append(run)
                fns.append(make_fn(ref, x, mode == "training"))
                own, mkl, nn = interleaved_medians(fns, "cpu", args.min_run_time)
                print(f"{cell} B={B} H={H} {schedule} {mode}: own {own * 1e3:.2f} ms, "
                      f"mkl {mkl * 1e3:.2f} ms, nn.* {nn * 1e3:.2f} ms -> own / mkl time "
                      f"{own / mkl:.2f}, nn.* / own {nn / own:.2f}x, nn.* / mkl {nn / mkl:.2f}x",
                      flush=True)
    finally:
        fused_rnn._C.set_cpu_gemm_backend(saved[0])
        fused_rnn.set_cpu_schedule(saved[1])


if __name__ == "__main__":
    main()
