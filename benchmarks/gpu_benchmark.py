"""GPU speed of fused_rnn (general CUDA path) against nn.GRU / nn.LSTM on cuDNN, same run.

Grid (default): cell GRU/LSTM x dtype fp32/bf16 x mode forward/forward+backward x
B in {1, 16, 64, 256} x H in {128, 256, 512, 1024} x T in {35, 512}, input size = H.
Median times from torch.utils.benchmark (it synchronises the device). TF32 is reported as set:
PyTorch's defaults are cuDNN allow_tf32=True (nn.* fp32) and cuBLAS matmul allow_tf32=False
(the fused path's GEMMs); pass --tf32 on/off to set both.

    python benchmarks/gpu_benchmark.py --json out.json --md out.md [--quick]
"""
import argparse
import itertools
import json
import time

import torch
import torch.utils.benchmark as tb
from torch import nn

import fused_rnn


def measure(fn, min_run_time):
    fn()
    torch.cuda.synchronize()
    return tb.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def run_point(cell, dtype, mode, B, H, T, min_run_time):
    ref = getattr(nn, cell)(H, H, device="cuda", dtype=dtype)
    fused = getattr(fused_rnn, cell)(H, H, device="cuda", dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)

    def make(module):
        if mode == "forward":
            def fn():
                with torch.no_grad():
                    module(x)
        else:
            xg = x.detach().requires_grad_(True)

            def fn():
                out, _ = module(xg)
                out.backward(torch.ones_like(out))
        return fn

    t_ref = measure(make(ref), min_run_time)
    t_fused = measure(make(fused), min_run_time)
    return dict(cell=cell, dtype=str(dtype).replace("torch.", ""), mode=mode, B=B, H=H, T=T,
                cudnn_ms=t_ref * 1e3, fused_ms=t_fused * 1e3, speedup=t_ref / t_fused,
                fused_us_per_step=t_fused * 1e6 / T)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="B in {1, 64}, H in {256, 1024}, T=35 only")
    ap.add_argument("--min-run-time", type=float, default=0.05)
    ap.add_argument("--tf32", choices=["default", "on", "off"], default="default")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    if args.tf32 != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    Bs, Hs, Ts = ([1, 64], [256, 1024], [35]) if args.quick else ([1, 16, 64, 256], [128, 256, 512, 1024], [35, 512])
    setting = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   date=time.strftime("%Y-%m-%d"))
    rows = []
    start = time.time()
    for cell, dtype, mode, B, H, T in itertools.product(
            ["GRU", "LSTM"], [torch.float32, torch.bfloat16], ["forward", "forward+backward"], Bs, Hs, Ts):
        r = run_point(cell, dtype, mode, B, H, T, args.min_run_time)
        rows.append(r)
        print(f"{cell:4s} {r['dtype']:8s} {mode:16s} B={B:<3d} H={H:<4d} T={T:<3d} "
              f"cudnn {r['cudnn_ms']:8.3f} ms  fused {r['fused_ms']:8.3f} ms  x{r['speedup']:.2f}", flush=True)
    lines = [f"# fused_rnn general CUDA path vs cuDNN ({setting['device']}, {setting['date']})", "",
             f"torch {setting['torch']}, cuDNN {setting['cudnn']}, cudnn.allow_tf32={setting['cudnn_allow_tf32']}, "
             f"cuda.matmul.allow_tf32={setting['matmul_allow_tf32']}; speed-up = cuDNN time / fused time "
             f"(> 1: fused faster). {len(rows)} points in {time.time() - start:.0f} s.", "",
             "| cell | dtype | mode | B | H | T | cuDNN (ms) | fused (ms) | speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {r['dtype']} | {r['mode']} | {r['B']} | {r['H']} | {r['T']} | "
              f"{r['cudnn_ms']:.3f} | {r['fused_ms']:.3f} | {r['speedup']:.2f}x |" for r in rows]
    worst = min(rows, key=lambda r: r["speedup"])
    lines += ["", f"Slowest relative point: {worst['cell']} {worst['dtype']} {worst['mode']} B={worst['B']} "
              f"H={worst['H']} T={worst['T']}: {worst['speedup']:.2f}x."]
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(setting=setting, results=rows), f, indent=1)
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
