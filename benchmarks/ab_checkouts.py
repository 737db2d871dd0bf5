"""A/B of two builds of fused_rnn (two checkouts, each built in place), processes alternated.

A change that moves a training step by a few percent is lost in this VM's run-to-run noise
when the two builds are timed at different moments; alternating fresh processes of the two
builds, each timing fused against nn.* interleaved (bench.py's make_fn / interleaved_medians),
puts the same moments of the machine on both sides. Prints one line per process:
checkout, fused ms, nn.* ms, nn.* / fused.

    python benchmarks/ab_checkouts.py OLD_CHECKOUT NEW_CHECKOUT --cell RNN --T 35 --B 32 --H 256
    python benchmarks/ab_checkouts.py /tmp/old . --cell GRU --T 1 --B 1 --rounds 3
    python benchmarks/ab_checkouts.py /tmp/old . --cell LSTM --B 128 --dtype bfloat16

(git worktree add /tmp/old <commit>, then build it in place: python setup.py build_ext --inplace.)
"""
import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys
root = sys.argv[1]
sys.path[:0] = [root, root + "/benchmarks"]
import torch, fused_rnn
assert fused_rnn.__file__.startswith(root), fused_rnn.__file__
from bench import make_fn, interleaved_medians
cell, (T, B, H) = sys.argv[2], map(int, sys.argv[3:6])
mode, min_run_time, dtype = sys.argv[6], float(sys.argv[7]), getattr(torch, sys.argv[8])
torch.manual_seed(0)
fused = getattr(fused_rnn, cell)(H, H).to(dtype)
ref = getattr(torch.nn, cell)(H, H).to(dtype)
ref.load_state_dict(fused.state_dict())
x = torch.randn(T, B, H, dtype=dtype)  # x: [T, B, H]
training = mode == "training"
t_fused, t_ref = interleaved_medians([make_fn(fused, x, training), make_fn(ref, x, training)],
                                     "cpu", min_run_time)
print(f"{t_fused * 1e3:.3f} {t_ref * 1e3:.3f}")
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--cell", default="RNN", choices=["GRU", "LSTM", "RNN"])
    p.add_argument("--T", type=int, default=35)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--mode", default="training", choices=["inference", "training"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--min-run-time", type=float, default=1.5)
    args = p.parse_args(argv)
    ratios = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, root in (("old", args.old), ("new", args.new)):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, os.path.abspath(root), args.cell, str(args.T),
                 str(args.B), str(args.H), args.mode, str(args.min_run_time), args.dtype],
                check=True, capture_output=True, text=True).stdout.split()
            t_fused, t_ref = float(out[-2]), float(out[-1])
            ratios[name].append(t_ref / t_fused)
            print(f"{name} {t_fused:.3f} {t_ref:.3f} {t_ref / t_fused:.2f}x", flush=True)
    for name, r in ratios.items():
        print(f"{name}: nn.* / fused {min(r):.2f}-{max(r):.2f}x, median {statistics.median(r):.2f}x")


if __name__ == "__main__":
    main()
