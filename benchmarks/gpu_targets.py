"""Issue 7's targets, read off a GPU benchmark's JSON (benchmarks/bench.py --device cuda --json):
on the grid B <= 64, 192 < H <= 1024, T >= 100, float32 and bfloat16, the fused layer against
nn.* (cuDNN) measured in the same run:
  - GRU forward (inference) at least 3x faster than nn.GRU,
  - GRU forward+backward (training) at least 2x,
  - GRU forward at most 2 µs per step at H=256, B=32,
  - LSTM at least as fast as nn.LSTM (inference and training).
Per point the fused time is the faster of the CUDA paths the benchmark measured (persistent,
general; the layer's own 'auto' picks one of them by fixed limits), and the table names it.
Prints markdown; no number is produced here that the benchmark did not measure.

  python benchmarks/gpu_targets.py benchmarks/results/gpu_benchmark_2026-11-28_h200_run6.json
"""
import argparse
import json

DTYPES = ("float32", "bfloat16")


def on_grid(r):
    return r["B"] <= 64 and 192 < r["H"] <= 1024 and r["T"] >= 100 and r["dtype"] in DTYPES


def best_paths(results):
    """{(cell, mode, dtype, B, H, T): the row of the fastest fused path} for rows on the grid
    (one layer, one direction, input size = hidden size as bench.py's GPU grid runs them)."""
    best = {}
    for r in results:
        if r.get("device", "cuda") != "cuda" or not on_grid(r):
            continue
        if r.get("layers", 1) != 1 or r.get("bidirectional", False):
            continue
        key = (r["cell"], r["mode"], r["dtype"], r["B"], r["H"], r["T"])
        if key not in best or r["fused_ms"] < best[key]["fused_ms"]:
            best[key] = r
    return best


# (name, cell, mode, test of a row, what a cell of the table shows)
TARGETS = [
    ("GRU forward >= 3x nn.GRU", "GRU", "inference", lambda r: r["speedup"] >= 3,
     lambda r: f"{r['speedup']:.2f}x"),
    ("GRU forward+backward >= 2x nn.GRU", "GRU", "training", lambda r: r["speedup"] >= 2,
     lambda r: f"{r['speedup']:.2f}x"),
    ("GRU forward <= 2 µs per step at H=256, B=32", "GRU", "inference",
     lambda r: r["fused_us_per_step"] <= 2, lambda r: f"{r['fused_us_per_step']:.2f} µs"),
    ("LSTM forward >= nn.LSTM", "LSTM", "inference", lambda r: r["speedup"] >= 1,
     lambda r: f"{r['speedup']:.2f}x"),
    ("LSTM forward+backward >= nn.LSTM", "LSTM", "training", lambda r: r["speedup"] >= 1,
     lambda r: f"{r['speedup']:.2f}x"),
]


def assess(results):
    """[(target name, dtype, [(B, H, T, row, met)], met count, points)] for every target and
    dtype with measured points (the µs target only at H=256, B=32)."""
    best = best_paths(results)
    out = []
    for name, cell, mode, test, _ in TARGETS:
        for dtype in DTYPES:
            points = []
            for (c, m, d, B, H, T), r in sorted(best.items(), key=lambda kv: kv[0][3:]):
                if (c, m, d) != (cell, mode, dtype):
                    continue
                if "µs" in name and (H, B) != (256, 32):
                    continue
                points.append((B, H, T, r, bool(test(r))))
            if points:
                out.append((name, dtype, points, sum(p[4] for p in points), len(points)))
    return out


def report(data):
    """Markdown: one table per target and dtype (rows B, columns H), then a summary."""
    machine = data.get("machine", {})
    lines = [f"# Issue 7's targets ({machine.get('gpu', 'GPU')}, torch {machine.get('torch', '?')}, "
             f"{machine.get('date', '?')})", "",
             f"nn.* on cuDNN with cudnn.allow_tf32={machine.get('cudnn_allow_tf32')}, "
             f"matmul.allow_tf32={machine.get('matmul_allow_tf32')}. Fused: the faster of the "
             "CUDA paths measured (p: persistent, g: general). Grid: B <= 64, 192 < H <= 1024, "
             "T >= 100; met points marked **bold**.", ""]
    summary = []
    shown = {name: show for name, _, _, _, show in TARGETS}
    for name, dtype, points, met, n in assess(data["results"]):
        Hs = sorted({p[1] for p in points})
        lines += [f"## {name}, {dtype}: met at {met} of {n}", "",
                  "| B \\ H | " + " | ".join(str(h) for h in Hs) + " |",
                  "|---|" + "---|" * len(Hs)]
        for B in sorted({p[0] for p in points}):
            cells = []
            for H in Hs:
                hit = [p for p in points if p[0] == B and p[1] == H]
                if not hit:
                    cells.append("-")
                    continue
                _, _, T, r, ok = hit[0]
                text = f"{shown[name](r)} ({r.get('path', '?')[0]})"
                cells.append(f"**{text}**" if ok else text)
            lines.append(f"| {B} | " + " | ".join(cells) + " |")
        lines.append("")
        summary.append(f"- {name}, {dtype}: {'met' if met == n else 'not met'} ({met} of {n})")
    return "\n".join(lines + ["## Summary", ""] + summary) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="bench.py --json output of a GPU run")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        print(report(json.load(f)), end="")


if __name__ == "__main__":
    main()
