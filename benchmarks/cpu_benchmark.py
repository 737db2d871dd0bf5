"""CPU speed of fused_rnn.GRU / LSTM / RNN against nn.GRU / LSTM / RNN, measured in the same run.

Default point: T=35, B=32, input=hidden=256, float32 (the character language model's shape).
For each cell: forward under no_grad, and forward+backward (input, states and all parameters
require grad), median times from torch.utils.benchmark, and the ratio nn / fused (> 1: fused
is faster). Then the fused forward+backward with each CPU kernel build (DEFAULT = portable,
AVX2, AVX512) to show what vectorising the step kernels gives.

    python benchmarks/cpu_benchmark.py [--T 35 --B 32 --I 256 --H 256] [--json out.json]
"""
import argparse
import json
import platform

import torch
import torch.utils.benchmark as tb
from torch import nn

import fused_rnn


def make_pair(cell, I, H, dtype):
    ref = getattr(nn, cell)(I, H, dtype=dtype)
    fused = getattr(fused_rnn, cell)(I, H, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def median_us(fn, min_run_time):
    fn()  # warm-up, excluded
    return tb.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median * 1e6


def forward_fn(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def train_fn(module, x):
    x = x.detach().requires_grad_(True)

    def run():
        out, state = module(x)
        h = state[0] if isinstance(state, tuple) else state
        torch.autograd.backward([out, h], [torch.ones_like(out), torch.ones_like(h)])
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=35)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--I", type=int, default=256)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    x = torch.randn(args.T, args.B, args.I, dtype=dtype)

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
               f"fused kernels {fused_rnn.cpu_isa()}")
    print(f"# fused_rnn CPU benchmark: T={args.T} B={args.B} I={args.I} H={args.H} {args.dtype}")
    print(f"# {machine}\n")
    print("| cell | mode | nn.* (ms) | fused (ms) | speed-up nn/fused |")
    print("|---|---|---|---|---|")
    rows = []
    for cell in ("GRU", "LSTM", "RNN"):
        ref, fused = make_pair(cell, args.I, args.H, dtype)
        for mode, make in (("forward", forward_fn), ("forward+backward", train_fn)):
            t_ref = median_us(make(ref, x), args.min_run_time)
            t_fused = median_us(make(fused, x), args.min_run_time)
            rows.append(dict(cell=cell, mode=mode, nn_us=t_ref, fused_us=t_fused, speedup=t_ref / t_fused))
            print(f"| {cell} | {mode} | {t_ref / 1e3:.2f} | {t_fused / 1e3:.2f} | {t_ref / t_fused:.2f}x |")

    print("\nFused forward+backward by CPU kernel build (vectorisation of the step kernels):\n")
    print("| cell | build | fused (ms) | vs DEFAULT |")
    print("|---|---|---|---|")
    isa_rows = []
    active = fused_rnn.cpu_isa()
    for cell in ("GRU", "LSTM"):
        _, fused = make_pair(cell, args.I, args.H, dtype)
        base = None
        for isa in fused_rnn.available_cpu_isas():
            fused_rnn.set_cpu_isa(isa)
            t = median_us(train_fn(fused, x), args.min_run_time)
            base = base or t
            isa_rows.append(dict(cell=cell, isa=isa, fused_us=t))
            print(f"| {cell} | {isa} | {t / 1e3:.2f} | {base / t:.2f}x |")
    fused_rnn.set_cpu_isa(active)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=vars(args), machine=machine, results=rows, isa=isa_rows), f, indent=2)


if __name__ == "__main__":
    main()
