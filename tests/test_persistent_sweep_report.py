"""The persistent-kernel sweep's pieces that run without a GPU (benchmarks/persistent_sweep.py):
a launch record (fused_rnn._C._persistent_profile, layout in csrc/cuda/cuda_kernels.h) read into
a row, the markdown report of timings and phase clocks, the point-by-point loop with its time
budget, and main() end to end with the GPU parts replaced. No timing is asserted."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import persistent_sweep as sweep  # noqa: E402

# staging, product, pointwise, step-barrier cycles; the loop in cycles and ns; T, B, H, blocks,
# units, staged rows, clock kHz, tensor cores, staging (0 loads, 1 cp.async, 2 shared), cluster
# size, rows per cluster, exchange through distributed shared memory, blocks sharing the staging,
# tagged exchange, blocks splitting the reduction
RECORD = [1000, 2000, 3000, 4000, 10000, 5000, 100, 32, 256, 128, 2, 32, 1980000, 1, 0, 8, 2, 1,
          0, 0, 0]


def test_profile_row_reads_every_field_of_a_launch_record():
    row = sweep.profile_row(RECORD, "GRU", 32, 256, "torch.bfloat16", 100, backward=True)
    assert row["kernel"] == "backward" and row["dtype"] == "bfloat16"
    assert (row["products_on"], row["staged_by"], row["exchange"]) == ("mma", "loads", "dsmem")
    assert (row["cluster"], row["group_rows"], row["blocks"], row["units"],
            row["staged_rows"]) == (8, 2, 128, 2, 32)
    # 10000 cycles in 5000 ns: 2 GHz; 1000 cycles over 100 steps = 5 ns = 0.005 µs per step
    assert row["clock_ghz"] == pytest.approx(2.0)
    assert [row[p] for p in sweep.PHASES] == pytest.approx([0.005, 0.01, 0.015, 0.02])
    assert row["total_us_per_step"] == pytest.approx(0.05)


def test_report_has_a_full_row_per_timing_and_per_profile():
    info = dict(gpu="GPU", torch="2.x", date="today", cudnn_allow_tf32=True)
    timing = dict(cell="LSTM", mode="training", B=1, H=256, dtype="float32", barrier="cluster",
                  units="auto", product="mma", staging="async", exchange="dsmem", nn_ms=4.0,
                  fused_ms=1.0, us_per_step=3.9, speedup=4.0)
    profiles = [sweep.profile_row(RECORD, "GRU", 32, 256, "torch.float32", 100, False),
                sweep.profile_row(RECORD[:15] + [0, 0, 0, 0, 0], "GRU", 32, 256,
                                  "torch.float32", 100, False),
                sweep.profile_row(RECORD[:14] + [2, 0, 0, 0, 8, 0], "GRU", 32, 256,
                                  "torch.float32", 100, False),
                sweep.profile_row(RECORD[:14] + [0, 0, 0, 0, 0, 1, 0], "GRU", 32, 256,
                                  "torch.float32", 100, False),
                sweep.profile_row(RECORD[:14] + [0, 0, 0, 0, 0, 0, 8], "GRU", 32, 256,
                                  "torch.float32", 100, False)]
    failed = [dict(point="GRU B=32 H=256 float32 training", variant="grid/None/fma/shared/l2",
                   error="cudaErrorNotSupported")]
    text = sweep.report(info, 100, [timing], profiles, failed)
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    for table in tables:  # header, separator and rows: the same number of columns
        assert len({line.count("|") for line in table}) == 1, table
    assert len(tables[0]) == 3 and "| cluster | auto | mma | async | dsmem |" in tables[0][2]
    assert "4.00x" in tables[0][2]
    assert len(tables[1]) == 7
    assert "| mma | loads | 8 x 2 dsmem | 128 x 2 |" in tables[1][2]
    assert "| mma | loads | - | 128 x 2 |" in tables[1][3]  # one grid
    assert "| mma | shared / 8 | - | 128 x 2 |" in tables[1][4]  # one grid, clusters of 8
    assert "| mma | tagged | - | 128 x 2 |" in tables[1][5]  # no step barrier
    assert "| mma | split / 8 | - | 128 x 2 |" in tables[1][6]  # split reduction, clusters of 8
    assert ("- GRU B=32 H=256 float32 training, grid/None/fma/shared/l2: "
            "cudaErrorNotSupported") in text


def test_a_variant_that_does_not_run_is_left_out_and_named(monkeypatch):
    """runs(): a variant whose launch raises is reported, the others run on."""
    monkeypatch.setattr(sweep.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(sweep, "cuda_context_lost", lambda: False)  # errors that are not sticky
    seen = []

    def fn():
        seen.append(os.environ.get("FUSED_RNN_PERSISTENT_STAGING"))
        if seen[-1] == "shared":
            raise RuntimeError("CUDA error: operation not supported\nmore")

    failed = []
    ok = [v for v in sweep.VARIANTS if sweep.runs(fn, v, "GRU B=1", failed)]
    assert len(ok) == len(sweep.VARIANTS) - 2  # the two shared-staging variants
    assert all(v[3] != "shared" for v in ok)
    assert [f["variant"] for f in failed] == ["grid/None/fma/shared/l2", "grid/None/mma/shared/l2"]
    assert failed[0]["error"] == "CUDA error: operation not supported"
    assert "FUSED_RNN_PERSISTENT_STAGING" not in os.environ  # settings cleared after each


def test_sweep_points_writes_after_every_point_and_starts_none_past_the_budget():
    now = [0.0]
    cost = {"a": 10.0, "b": 30.0, "c": 10.0, "d": 10.0}  # seconds each point takes
    measured, written = [], []

    def measure(point):
        measured.append(point)
        now[0] += cost[point]

    def done():
        written.append(list(measured))

    left = sweep.sweep_points(list("abcd"), measure, budget_s=75, clock=lambda: now[0],
                              done=done)
    # a (10 s), b (30 s: the longest so far), c ends at 50 s; d would start at 50 and might take
    # 30 more: past 75, so it is left out
    assert measured == list("abc") and left == ["d"]
    assert written == [["a"], ["a", "b"], ["a", "b", "c"]]
    measured.clear()
    assert sweep.sweep_points(list("abcd"), measure, budget_s=None, clock=lambda: now[0]) == []
    assert measured == list("abcd")
    # the first point always runs, whatever the budget
    measured.clear()
    assert sweep.sweep_points(list("ab"), measure, budget_s=0, clock=lambda: now[0]) == ["b"]


def test_main_without_a_gpu_writes_the_points_it_measured_and_names_the_rest(tmp_path,
                                                                             monkeypatch):
    """main() end to end with the GPU parts replaced: timings and records as a GPU gives them."""
    fake_gpu(monkeypatch)
    now = [0.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(sweep, "cuda_context_lost", lambda: False)

    def time_point(point, args, rows, failed):
        now[0] += 40
        cell, B, H, dtype = point
        rows.append(dict(cell=cell, mode="inference", B=B, H=H, dtype=dtype, barrier="grid",
                         units="auto", product="fma", staging="loads", exchange="l2",
                         nn_ms=2.0, fused_ms=1.0, us_per_step=3.9, speedup=2.0))

    def phase_profile(cell, B, H, dtype, T, barrier, product, staging, exchange):
        if staging == "shared":  # a variant the device refuses: named, the sweep goes on
            raise RuntimeError("cluster launch refused")
        return [sweep.profile_row(RECORD, cell, B, H, dtype, T, backward=False)]

    monkeypatch.setattr(sweep, "time_point", time_point)
    monkeypatch.setattr(sweep, "phase_profile", phase_profile)
    md, js = tmp_path / "sweep.md", tmp_path / "sweep.json"
    sweep.main(["--budget-s", "100", "--md", str(md), "--json", str(js)])
    data = json.loads(js.read_text())
    assert len(data["rows"]) == 2  # 40 s per point: a third would end at 120 s
    shared = sum(v[2] == "shared" for v in sweep.PROFILED)
    assert len(data["profiles"]) == 2 * (len(sweep.PROFILED) - shared)
    assert len(data["failed"]) == 2 * shared
    assert data["failed"][0]["error"] == "cluster launch refused"
    assert [tuple(p) for p in data["not_run"]] == sweep.POINTS[2:]
    text = md.read_text()
    assert "Stopped at the time budget (--budget-s 100)" in text
    assert "GRU B=64 H=1024 float32" in text  # the first point not run


def test_split_variants_set_the_split_and_the_loads(monkeypatch):
    """staging "splitN": FUSED_RNN_PERSISTENT_SPLIT=N with the loads' staging; other variants and
    clear_tuning() leave no split behind."""
    for name in sweep.ENV:
        monkeypatch.delenv(name, raising=False)
    sweep.set_tuning("grid", None, "mma", "split8", "l2")
    assert os.environ["FUSED_RNN_PERSISTENT_SPLIT"] == "8"
    assert os.environ["FUSED_RNN_PERSISTENT_STAGING"] == "loads"
    sweep.set_tuning("grid", None, "fma", "shared", "l2")
    assert "FUSED_RNN_PERSISTENT_SPLIT" not in os.environ
    assert os.environ["FUSED_RNN_PERSISTENT_STAGING"] == "shared"
    sweep.set_tuning("grid", None, "fma", "split4", "l2")
    sweep.clear_tuning()
    assert not any(name in os.environ for name in sweep.ENV)
    assert {v[3] for v in sweep.VARIANTS} >= {"split8", "split4"}


def fake_gpu(monkeypatch):
    """main()'s GPU parts replaced: a device, its name, phase clocks that record nothing."""
    info = dict(gpu="GPU", torch="2.x", date="today", cudnn_allow_tf32=True)
    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep.fused_rnn, "set_cuda_path", lambda path: None)
    monkeypatch.setattr(sweep, "machine_info", lambda device: info)
    monkeypatch.setattr(sweep, "phase_profile", lambda *a: [])


def timing_row(point):
    cell, B, H, dtype = point
    return dict(cell=cell, mode="inference", B=B, H=H, dtype=dtype, barrier="grid",
                units="auto", product="fma", staging="loads", exchange="l2", nn_ms=2.0,
                fused_ms=1.0, us_per_step=3.9, speedup=2.0)


def test_a_variant_that_loses_the_cuda_context_is_left_out_of_a_resumed_sweep(tmp_path,
                                                                              monkeypatch):
    """A sticky error in one variant: the sweep writes what it has and exits with RESTART_EXIT;
    --resume goes on in a new process from the next unfinished point, without the variant, and
    keeps the finished points' rows."""
    fake_gpu(monkeypatch)
    bad = "tagged/None/fma/loads/l2"
    seen = []  # (point, variants it would time)

    def time_point(point, args, rows, failed):
        variants = [sweep.variant_name(v) for v in sweep.VARIANTS
                    if sweep.variant_name(v) not in args.exclude]
        seen.append((point, variants))
        rows.append(timing_row(point))  # a row of the point, dropped if the context is lost
        failed.append(dict(point=str(point), variant="x", error="refused"))  # dropped too
        if point == sweep.POINTS[1] and bad in variants:
            raise sweep.ContextLost("GRU B=1", bad, "an illegal memory access was encountered")

    monkeypatch.setattr(sweep, "time_point", time_point)
    js, md = tmp_path / "sweep.json", tmp_path / "sweep.md"
    with pytest.raises(SystemExit) as stop:
        sweep.main(["--json", str(js), "--md", str(md)])
    assert stop.value.code == sweep.RESTART_EXIT
    data = json.loads(js.read_text())
    assert data["excluded"] == [bad] and data["restarts"] == 1
    assert data["done"] == [list(sweep.POINTS[0])]
    assert [(r["B"], r["H"]) for r in data["rows"]] == [sweep.POINTS[0][1:3]]  # point 2's dropped
    assert data["failed"][-1]["variant"] == bad
    assert "CUDA context lost (an illegal memory access" in data["failed"][-1]["error"]
    assert len(data["failed"]) == 2  # point 1's own entry, then the lost context
    assert bad in md.read_text()

    seen.clear()
    profiled = []
    monkeypatch.setattr(sweep, "phase_profile", lambda *a: profiled.append(a[5:]) or [])
    sweep.main(["--json", str(js), "--md", str(md), "--resume"])
    data = json.loads(js.read_text())
    assert [p for p, _ in seen] == sweep.POINTS[1:]  # point 1 not measured again
    assert all(bad not in variants for _, variants in seen)
    # nor its phase clock (the same settings), the others' clocks at every point
    assert ("tagged", "fma", "loads", "l2") not in profiled
    assert len(profiled) == (len(sweep.PROFILED) - 1) * (len(sweep.POINTS) - 1)
    assert len(data["rows"]) == len(sweep.POINTS) and data["not_run"] == []
    assert data["restarts"] == 1 and data["excluded"] == [bad]


def test_a_lost_context_of_no_known_variant_leaves_the_point_out(tmp_path, monkeypatch):
    """ContextLost 'all' (the interleaved timing of every variant): the point counts as done,
    the resumed sweep starts at the next one; a profile's lost context leaves that profile out."""
    fake_gpu(monkeypatch)
    calls = []

    def time_point(point, args, rows, failed):
        calls.append(point)
        if len(calls) == 1:
            raise sweep.ContextLost("GRU B=32", "all", "unspecified launch failure")
        rows.append(timing_row(point))

    profiled = []

    def phase_profile(cell, B, H, dtype, T, barrier, product, staging, exchange):
        profiled.append((barrier, product, staging, exchange))
        if (barrier, product, staging) == ("tagged", "fma", "loads"):
            raise RuntimeError("CUDA error: unspecified launch failure")
        return []

    monkeypatch.setattr(sweep, "time_point", time_point)
    monkeypatch.setattr(sweep, "phase_profile", phase_profile)
    monkeypatch.setattr(sweep, "cuda_context_lost", lambda: True)
    js = tmp_path / "sweep.json"
    for resume in ([], ["--resume"]):
        with pytest.raises(SystemExit) as stop:
            sweep.main(["--json", str(js)] + resume)
        assert stop.value.code == sweep.RESTART_EXIT
    data = json.loads(js.read_text())
    assert data["done"] == [list(sweep.POINTS[0])]  # left out after its 'all'
    assert data["excluded"] == ["profile:tagged/fma/loads/l2"]
    assert data["rows"] == []  # point 2's row dropped with its lost profile
    # the third process: point 2 again, the profiles without the excluded one, then the rest
    profiled.clear()
    sweep.main(["--json", str(js), "--resume"])
    data = json.loads(js.read_text())
    assert calls == [sweep.POINTS[0], sweep.POINTS[1]] + sweep.POINTS[1:]
    assert ("tagged", "fma", "loads", "l2") not in profiled
    assert ("tagged", "mma", "loads", "l2") in profiled
    assert len(data["rows"]) == len(sweep.POINTS) - 1
    assert data["restarts"] == 2


def test_the_sweep_stops_after_too_many_lost_contexts(tmp_path, monkeypatch):
    fake_gpu(monkeypatch)

    def time_point(point, args, rows, failed):
        raise sweep.ContextLost("GRU", f"v{len(args.exclude)}", "unspecified launch failure")

    monkeypatch.setattr(sweep, "time_point", time_point)
    js = tmp_path / "sweep.json"
    codes = []
    for i in range(sweep.MAX_RESTARTS + 1):
        with pytest.raises(SystemExit) as stop:
            sweep.main(["--json", str(js)] + (["--resume"] if i else []))
        codes.append(stop.value.code)
    assert codes[:-1] == [sweep.RESTART_EXIT] * sweep.MAX_RESTARTS
    assert "restarts already" in codes[-1]  # a message: status 1, no further restart
    # without --json there is nothing to go on from
    with pytest.raises(SystemExit) as stop:
        sweep.main([])
    assert "no --json to go on from" in stop.value.code


def test_runs_raises_context_lost_for_a_sticky_error(monkeypatch):
    monkeypatch.setattr(sweep.torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(sweep, "cuda_context_lost", lambda: True)

    def fn():
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    failed = []
    with pytest.raises(sweep.ContextLost) as lost:
        sweep.runs(fn, sweep.VARIANTS[3], "GRU B=1", failed)
    assert lost.value.variant == "grid/None/mma/loads/l2" and failed == []
    assert lost.value.error == "CUDA error: an illegal memory access was encountered"
    assert "FUSED_RNN_PERSISTENT_PRODUCT" not in os.environ
