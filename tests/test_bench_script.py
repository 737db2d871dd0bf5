"""The benchmark suite's pieces work (no timing is asserted: speed is shown by the scripts)."""
import os
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
    assert row["gemm_share"] == pytest.approx(flops / row["gemm_flops_per_s"] / (row["fused_ms"] / 1e3))
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
