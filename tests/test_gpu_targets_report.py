"""benchmarks/gpu_targets.py: issue 7's targets read off a GPU benchmark's JSON (the grid, the
faster path per point, met / not met). Synthetic rows, then run 6's recorded JSON."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import gpu_targets  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results")


def row(cell, mode, dtype, B, H, path, speedup, us, T=256):
    return dict(cell=cell, mode=mode, dtype=dtype, B=B, H=H, T=T, layers=1,
                bidirectional=False, device="cuda", path=path, nn_ms=speedup,
                fused_ms=1.0, speedup=speedup, fused_us_per_step=us)


def test_targets_take_the_faster_path_on_the_grid_only():
    results = [row("GRU", "inference", "float32", 32, 256, "persistent", 3.5, 1.9),
               row("GRU", "inference", "float32", 32, 256, "general", 0.5, 9.0),  # slower
               row("GRU", "inference", "float32", 32, 1024, "persistent", 2.9, 20.0),
               row("GRU", "inference", "float32", 128, 256, "persistent", 0.1, 50.0),  # B > 64
               row("GRU", "inference", "float32", 32, 128, "persistent", 0.1, 50.0),  # H <= 192
               row("GRU", "inference", "float32", 32, 256, "persistent", 0.1, 50.0, T=50),
               row("GRU", "inference", "float16", 32, 256, "persistent", 0.1, 50.0),
               row("LSTM", "training", "bfloat16", 64, 512, "general", 1.0, 30.0)]
    got = {(name, dtype): (met, n, [(p[0], p[1], p[3]["path"]) for p in points])
           for name, dtype, points, met, n in gpu_targets.assess(results)}
    assert got == {
        ("GRU forward >= 3x nn.GRU", "float32"):
            (1, 2, [(32, 256, "persistent"), (32, 1024, "persistent")]),
        ("GRU forward <= 2 µs per step at H=256, B=32", "float32"):
            (1, 1, [(32, 256, "persistent")]),
        ("LSTM forward+backward >= nn.LSTM", "bfloat16"): (1, 1, [(64, 512, "general")]),
    }
    text = gpu_targets.report(dict(machine={}, results=results))
    assert "| 32 | **3.50x (p)** | 2.90x (p) |" in text
    assert "- GRU forward >= 3x nn.GRU, float32: not met (1 of 2)" in text
    assert "- LSTM forward+backward >= nn.LSTM, bfloat16: met (1 of 1)" in text


def test_run6_json_reads_as_its_notes_say():
    """Run 6 (benchmarks/persistent_kernel_notes.md): GRU forward >= 3x only for bf16 B=32
    H=256, 5.7 µs per step at B=32 H=256 in float32."""
    with open(os.path.join(RESULTS, "gpu_benchmark_2026-11-28_h200_run6.json")) as f:
        data = json.load(f)
    got = {(name, dtype): (met, n, points)
           for name, dtype, points, met, n in gpu_targets.assess(data["results"])}
    met, n, points = got["GRU forward >= 3x nn.GRU", "bfloat16"]
    assert (met, n) == (1, 9) and [(p[0], p[1]) for p in points if p[4]] == [(32, 256)]
    assert got["GRU forward >= 3x nn.GRU", "float32"][0] == 0
    (_, _, _, r, ok), = got["GRU forward <= 2 µs per step at H=256, B=32", "float32"][2]
    assert not ok and 5.5 < r["fused_us_per_step"] < 6
