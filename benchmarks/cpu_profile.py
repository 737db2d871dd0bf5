"""Where a fused CPU training step's time goes, next to its GEMM floor.

For each cell at one size (default: issue 5's target point, T=35, B=32, I=H=256, float32):
the median time of a whole training step (forward + backward of the module, as bench.py
times it), then the layers' own phase clock (fused_rnn._C._set_phase_clock) over the same
steps: input projection, recurrence, weight gradients, ... per step, each phase's GEMM FLOPs
and the time those FLOPs take at this machine's large-GEMM rate (a 2048^3 GEMM timed after
each timed step: the rate of the moment the steps ran), and what is left outside the operators
(autograd, Python, gradient accumulation).

    python benchmarks/cpu_profile.py                       # GRU, LSTM, RNN at T=35 B=32 H=256
    python benchmarks/cpu_profile.py --cells GRU --B 64 --md profile.md
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (GATES, LARGE_GEMM_N, cell_flops, large_gemm, machine_info, make_fn,  # noqa: E402
                   write_results)

import fused_rnn  # noqa: E402


def phase_flops(cell, T, B, I, H):
    """GEMM FLOPs of each phase of one layer's training step."""
    G = GATES[cell] * H
    rows = 2 * T * B * G
    return {"forward: input projection": rows * I, "forward: recurrence": rows * H,
            "backward: recurrence": rows * H, "backward: weight gradients": rows * (I + H),
            "backward: input gradient": rows * I}


def profile(cell, T, B, I, H, steps, gemm):
    """gemm: large_gemm's (function, FLOPs), timed once after each timed step: the shared
    machine's speed drifts, and the rate the phases are compared with is the one of the moment
    the steps ran (its median over the steps)."""
    torch.manual_seed(0)
    module = getattr(fused_rnn, cell)(I, H)
    step = make_fn(module, torch.randn(T, B, I), training=True)
    gemm_fn, gemm_flops = gemm
    for _ in range(3):  # warm-up, excluded
        step()
    gemm_fn()
    times, gemm_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        gemm_fn()
        gemm_times.append(time.perf_counter() - t1)
        times.append(t1 - t0)
    step_ms = statistics.median(times) * 1e3
    rate = gemm_flops / statistics.median(gemm_times)
    fused_rnn._C._reset_phase_clock()
    fused_rnn._C._set_phase_clock(True)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    clocked_ms = (time.perf_counter() - t0) / steps * 1e3
    fused_rnn._C._set_phase_clock(False)
    phases = {name: total / steps / 1e3 for name, (_, total) in fused_rnn._C._phase_clock().items()}
    flops = phase_flops(cell, T, B, I, H)
    rows = []
    for name in sorted(phases, key=lambda n: (not n.startswith("forward"), n)):
        f = flops.get(name, 0)
        rows.append(dict(phase=name, ms=phases[name], gflop=f / 1e9,
                         floor_ms=f / rate * 1e3 if f else 0.0))
    inside = sum(phases.values())
    rows.append(dict(phase="outside the operators (autograd, Python, grad accumulation)",
                     ms=max(0.0, clocked_ms - inside), gflop=0.0, floor_ms=0.0))
    total_flops = cell_flops(cell, T, B, I, H, 1, 1, True)
    return dict(cell=cell, step_ms=step_ms, clocked_ms=clocked_ms, rows=rows,
                floor_ms=total_flops / rate * 1e3, gemm_flops_per_s=rate)


def markdown(results, info, T, B, I, H):
    out = [f"# fused_rnn CPU training-step profile: T={T} B={B} I={I} H={H} float32",
           f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}, CPU kernels "
           f"{info['fused_cpu_kernels']}, schedule {fused_rnn.cpu_schedule()}, {info['date']}",
           "", f"Large-GEMM rate: a {LARGE_GEMM_N['cpu']}^3 torch.mm timed after each timed step "
           "of the cell (median), given per cell. GEMM floor = the phase's GEMM FLOPs at that "
           "rate; rate reached = floor / time.", ""]
    for r in results:
        out += [f"## {r['cell']}: step {r['step_ms']:.2f} ms (median; {r['clocked_ms']:.2f} ms "
                f"mean with the clock on), GEMM floor {r['floor_ms']:.2f} ms = "
                f"{r['floor_ms'] / r['step_ms']:.0%} of the step (large-GEMM rate "
                f"{r['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s)", "",
                "| phase | ms per step | share | GEMM GFLOP | GEMM floor ms | rate reached |",
                "|---|---|---|---|---|---|"]
        for p in r["rows"]:
            reached = f"{p['floor_ms'] / p['ms']:.0%}" if p["floor_ms"] and p["ms"] else "-"
            out.append(f"| {p['phase']} | {p['ms']:.2f} | {p['ms'] / r['clocked_ms']:.0%} | "
                       f"{p['gflop']:.2f} | {p['floor_ms']:.2f} | {reached} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(GATES), choices=list(GATES))
    ap.add_argument("--T", type=int, default=35)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--H", type=int, default=256, help="hidden size (input size too)")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per cell")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--md", help="also write the markdown here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    gemm = large_gemm("cpu", torch.float32)
    results = [profile(c, args.T, args.B, args.H, args.H, args.steps, gemm) for c in args.cells]
    text = markdown(results, info, args.T, args.B, args.H, args.H)
    print(text)
    command = f"<!-- python benchmarks/cpu_profile.py {' '.join(argv or sys.argv[1:])} -->\n"
    write_results(args.md, command + text + "\n")


if __name__ == "__main__":
    main()
