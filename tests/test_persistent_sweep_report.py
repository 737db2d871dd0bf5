"""The persistent-kernel sweep's pieces that run without a GPU (benchmarks/persistent_sweep.py):
a launch record (fused_rnn._C._persistent_profile, layout in csrc/cuda/cuda_kernels.h) read into
a row, and the markdown report of timings and phase clocks. No timing is asserted."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import persistent_sweep as sweep  # noqa: E402

# staging, product, pointwise, step-barrier cycles; the loop in cycles and ns; T, B, H, blocks,
# units, staged rows, clock kHz, tensor cores, cp.async staging, cluster size, rows per
# cluster, exchange through distributed shared memory
RECORD = [1000, 2000, 3000, 4000, 10000, 5000, 100, 32, 256, 128, 2, 32, 1980000, 1, 0, 8, 2, 1]


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
                sweep.profile_row(RECORD[:15] + [0, 0, 0], "GRU", 32, 256, "torch.float32",
                                  100, False)]
    text = sweep.report(info, 100, [timing], profiles)
    tables = [[line for line in block.splitlines() if line.startswith("|")]
              for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 2
    for table in tables:  # header, separator and rows: the same number of columns
        assert len({line.count("|") for line in table}) == 1, table
    assert len(tables[0]) == 3 and "| cluster | auto | mma | async | dsmem |" in tables[0][2]
    assert "4.00x" in tables[0][2]
    assert len(tables[1]) == 4
    assert "| mma | loads | 8 x 2 dsmem | 128 x 2 |" in tables[1][2]
    assert "| mma | loads | - | 128 x 2 |" in tables[1][3]  # one grid
