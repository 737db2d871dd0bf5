"""The benchmark suite's pieces work (no timing is asserted: speed is shown by the scripts)."""
import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import bench  # noqa: E402


def test_cell_flops_counts_gemms():
    # GRU, one layer: 2*T*B*3H*(I+H) forward, three times that in training
    assert bench.cell_flops("GRU", 35, 32, 256, 256, 1, 1, False) == 2 * 35 * 32 * 768 * 512
    assert bench.cell_flops("GRU", 35, 32, 256, 256, 1, 1, True) == 3 * 2 * 35 * 32 * 768 * 512
    # second layer of a bidirectional stack reads 2H features
    two = bench.cell_flops("LSTM", 2, 3, 5, 4, 2, 2, False)
    assert two == 2 * (2 * 2 * 3 * 16 * (5 + 4)) + 2 * (2 * 2 * 3 * 16 * (8 + 4))


def test_grid_points_are_the_union_of_the_slices():
    """A grid is a list of slices (each a product); every point comes once, in order, and the
    command line's overrides replace a key in every slice."""
    base = dict(cells=["GRU"], T=[35], B=[32], H=[256], layers=[1], bidirectional=[False],
                modes=["training"])
    grid = [dict(base, H=[128, 256]), dict(base, B=[1, 32])]
    assert bench.grid_points(grid) == [("GRU", 35, 32, 128, 1, False, "training"),
                                       ("GRU", 35, 32, 256, 1, False, "training"),
                                       ("GRU", 35, 1, 256, 1, False, "training")]
    assert bench.grid_points(grid, H=[64], cells=None) == [
        ("GRU", 35, 32, 64, 1, False, "training"), ("GRU", 35, 1, 64, 1, False, "training")]
    # the presets: the quick grid is one product; the CPU's full grid passes through issue 5's
    # target point once per cell and mode and varies one quantity at a time from it
    assert len(bench.grid_points(bench.QUICK)) == 3 * 2 * 2 * 2
    full = bench.grid_points(bench.FULL)
    assert len(full) == len(set(full))
    for cell in ("GRU", "LSTM", "RNN"):
        for mode in ("inference", "training"):
            assert (cell, 35, 32, 256, 1, False, mode) in full
            assert (cell, 35, 32, 1024, 1, False, mode) in full
            assert (cell, 35, 256, 256, 1, False, mode) in full
            assert (cell, 200, 32, 256, 1, False, mode) in full
            assert (cell, 35, 32, 256, 2, True, mode) in full
    assert all(sum(p[i] != t for i, t in ((1, 35), (2, 32), (3, 256))) <= 1
               for p in full if p[4] == 1 and not p[5])


def test_plot_draws_one_line_per_cell_along_the_longest_sweep(tmp_path, monkeypatch):
    """Speed-up vs hidden size and vs batch: for each cell the training rows that differ only
    in the plotted quantity, the longest such line."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def record(self, xs, ys, *args, **kwargs):
        drawn.append((self.get_xlabel() or None, list(xs), kwargs.get("label")))
        return real_plot(self, xs, ys, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    rows = []
    for cell, T, B, H in [("GRU", 35, 32, 128), ("GRU", 35, 32, 256), ("GRU", 35, 32, 512),
                          ("GRU", 35, 1, 256), ("GRU", 35, 64, 256), ("GRU", 200, 32, 256)]:
        rows.append(dict(cell=cell, T=T, B=B, H=H, layers=1, bidirectional=False,
                         dtype="float32", mode="training", path="auto", speedup=2.0))
    path = tmp_path / "p.png"
    bench.plot(rows, str(path))
    assert path.stat().st_size > 0
    assert [(xs, label) for _, xs, label in drawn] == [
        ([128, 256, 512], "GRU float32 (T=35, B=32)"), ([1, 32, 64], "GRU float32 (T=35, H=256)")]


def test_run_point_and_report(tmp_path):
    import torch
    rate = 1e11
    rows = [r for cell in ("GRU", "LSTM", "RNN") for mode in ("inference", "training")
            for r in bench.run_point(cell, 3, 2, 4, 5, 1, False, torch.float32, "cpu", mode, rate,
                                     0.01)]
    assert len(rows) == 6  # one row per point on the CPU (no CUDA paths)
    for r in rows:
        assert r["nn_ms"] > 0 and r["fused_ms"] > 0 and r["speedup"] > 0
        assert r["steal"] is None or 0 <= r["steal"] <= 1
        if r["mode"] == "training":
            assert r["fused_mem_mb"] > 0 and r["nn_mem_mb"] > 0
            assert r["fused_saved_mb"] > 0 and r["nn_saved_mb"] > 0
    md = bench.markdown(rows, bench.machine_info("cpu"), {"float32": rate})
    assert md.count("\n| ") == len(rows) + 1


def test_states_reach_both_modules():
    """--states: make_fn passes the same initial states to nn.* and the fused module (an LSTM
    gets (h0, c0) of [L*D, B, H]); run_point records it and the report says so."""
    import torch
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, hx=None):
            seen.append(hx)
            return x * 2, hx
    h0, c0 = bench.initial_states("LSTM", 3, 5, 2, True, "cpu", torch.float32)
    assert h0.shape == c0.shape == (4, 3, 5)
    assert bench.initial_states("GRU", 3, 5, 1, False, "cpu", torch.float32).shape == (1, 3, 5)
    x = torch.randn(2, 3, 4)
    for training in (False, True):
        bench.make_fn(Recorder(), x, training, (h0, c0))()
        bench.make_fn(Recorder(), x, training)()
    assert [s is None for s in seen] == [False, True, False, True]
    assert all(s[0] is h0 and s[1] is c0 for s in seen if s is not None)
    rows = bench.run_point("LSTM", 2, 3, 4, 5, 1, False, torch.float32, "cpu", "inference", 1e11,
                           0.01, states=True)
    assert rows[0]["states"] is True
    assert "Initial states: random h0" in bench.markdown(rows, bench.machine_info("cpu"),
                                                         {"float32": 1e11})


def test_cpu_peak_bytes_sees_what_a_function_allocates():
    """The CPU peak: two 4 MB tensors live at once, then freed: ~8 MB (the memory timeline
    counts allocations made inside the function)."""
    import torch

    def fn():
        a = torch.ones(1 << 20)  # 4 MB
        b = a * 2                # 4 MB more
        return float(b[0])
    peak = bench.cpu_peak_bytes(fn)
    assert peak is not None and 8 << 20 <= peak < 9 << 20
    assert bench.memory_text({"nn_mem_mb": 1.25, "nn_saved_mb": 0.5}, "nn") == "1.2 (0.5)"
    assert bench.memory_text({}, "fused") == "-"


def test_steal_share_from_proc_stat_readings():
    """Steal = the steal jiffies' share of all jiffies between two /proc/stat readings."""
    assert bench.steal_share((10, 1000), (30, 1200)) == pytest.approx(0.1)
    assert bench.steal_share(None, (30, 1200)) is None
    assert bench.steal_share((10, 1000), (10, 1000)) is None
    assert bench.steal_text(0.1234) == "12%" and bench.steal_text(None) == "-"
    assert bench.rounds_text({"speedup_rounds": [1.234, 2.5]}) == "1.23-2.50"
    assert bench.rounds_text({}) == "-"
    assert bench.rounds_for(0.15) == 5 and bench.rounds_for(0.5) == 10
    now = bench.cpu_jiffies()
    if os.path.exists("/proc/stat"):
        assert now is not None and 0 <= now[0] <= now[1]


def test_cpu_profile_phases_cover_the_layer():
    """benchmarks/cpu_profile.py: the layers' phase clock books every phase of a training step,
    each phase's GEMM FLOPs add up to the cell's, and the clock is off again afterwards."""
    import cpu_profile
    import fused_rnn
    import torch
    a = torch.randn(32, 32)
    gemm_calls = []

    def gemm():
        gemm_calls.append(1)
        torch.mm(a, a)
    for cell in ("GRU", "LSTM", "RNN"):
        r = cpu_profile.profile(cell, 4, 3, 5, 6, steps=2, gemm=(gemm, 2 * 32 ** 3))
        assert r["gemm_flops_per_s"] > 0
        assert r["floor_ms"] == pytest.approx(
            bench.cell_flops(cell, 4, 3, 5, 6, 1, 1, True) / r["gemm_flops_per_s"] * 1e3)
        names = {p["phase"] for p in r["rows"]}
        assert {"forward: input projection", "forward: recurrence", "backward: recurrence",
                "backward: weight gradients", "backward: input gradient",
                "backward: bias gradients", "backward: setup"} <= names
        assert all(p["ms"] >= 0 for p in r["rows"])
        flops = bench.cell_flops(cell, 4, 3, 5, 6, 1, 1, True)
        assert sum(p["gflop"] for p in r["rows"]) * 1e9 == pytest.approx(flops)
    assert len(gemm_calls) == 3 * 3  # one warm-up, then one after each timed step
    before = fused_rnn._C._phase_clock()
    m = fused_rnn.GRU(5, 6)
    m(__import__("torch").randn(4, 3, 5))
    assert fused_rnn._C._phase_clock() == before  # off: nothing booked


def test_run_point_times_the_reference_gemm_in_its_rounds():
    """gemm=(fn, FLOPs): the point's GEMM rate and share come from the reference GEMM timed
    in the point's own interleaved rounds, not from the rate passed in."""
    import torch
    calls = []
    a = torch.randn(64, 64)

    def gemm():
        calls.append(1)
        torch.mm(a, a)
    (row,) = bench.run_point("RNN", 3, 2, 4, 5, 1, False, torch.float32, "cpu", "inference",
                             1.0, 0.01, gemm=(gemm, 2 * 64 ** 3))
    assert calls  # timed
    assert row["gemm_rate_interleaved"] and row["gemm_flops_per_s"] > 1.0  # not the 1.0 given
    flops = bench.cell_flops("RNN", 3, 2, 4, 5, 1, 1, False)
    # the share: the median over the rounds of each round's GEMM time / fused time (times the
    # cell's FLOPs over the GEMM's)
    rounds = row["rounds_ms"]
    assert len(rounds["nn"]) == len(rounds["fused"]) == len(rounds["gemm"]) == bench.rounds_for(0.01)
    assert row["gemm_share"] == pytest.approx(statistics.median(
        flops / (2 * 64 ** 3) * g / f for g, f in zip(rounds["gemm"], rounds["fused"])))
    assert row["fused_ms"] == pytest.approx(statistics.median(rounds["fused"]))
    assert row["gemm_flops_per_s"] == pytest.approx(2 * 64 ** 3 / statistics.median(rounds["gemm"]) * 1e3)
    ratios = [a / b for a, b in zip(rounds["nn"], rounds["fused"])]
    assert row["speedup_rounds"] == pytest.approx([min(ratios), max(ratios)])
    assert row["speedup"] == pytest.approx(row["nn_ms"] / row["fused_ms"])
    md = bench.markdown([row], bench.machine_info("cpu"), {"float32": 1.0})
    assert "in each point's own interleaved rounds" in md
    (plain,) = bench.run_point("RNN", 3, 2, 4, 5, 1, False, torch.float32, "cpu", "inference",
                               1e11, 0.01)
    assert not plain["gemm_rate_interleaved"] and plain["gemm_flops_per_s"] == 1e11


def test_run_point_times_each_cpu_schedule():
    import torch
    import fused_rnn
    before = fused_rnn.cpu_schedule()
    rows = bench.run_point("GRU", 3, 4, 4, 5, 1, False, torch.float32, "cpu", "training", 1e11,
                           0.01, schedules=("per-step", "row-blocks"))
    assert [r["path"] for r in rows] == ["per-step", "row-blocks"]
    assert all(r["fused_ms"] > 0 for r in rows)
    assert fused_rnn.cpu_schedule() == before  # restored


def test_ab_checkouts_alternates_processes_of_two_builds(capsys):
    """benchmarks/ab_checkouts.py: one line per process, old and new alternated, then the
    ratio ranges (here the same checkout on both sides)."""
    import ab_checkouts
    root = os.path.join(os.path.dirname(__file__), "..")
    ab_checkouts.main([root, root, "--cell", "RNN", "--T", "2", "--B", "2", "--H", "4",
                       "--rounds", "1", "--min-run-time", "0.01"])
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[0] for l in lines] == ["old", "new", "old:", "new:"]
    assert all(float(l.split()[1]) > 0 and float(l.split()[2]) > 0 for l in lines[:2])
