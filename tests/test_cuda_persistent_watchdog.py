"""The persistent kernels' spin waits end in a trap, not a hang (csrc/cuda/persistent_kernels.cuh,
SpinWatchdog): with FUSED_RNN_PERSISTENT_TEST_STALL=1 block 0 never arrives at the counter
barrier (tests/test_persistent_emulation.py checks on the host that the wait then never ends),
so the launch must fail after the watchdog's 20 s, with a CUDA error, in a process of its own
(the error is sticky). Needs a CUDA device of compute capability 7.0+."""
import os
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LIMIT_S = 20  # kSpinLimitNs

STALLED_FORWARD = """
import torch, fused_rnn
m = fused_rnn.GRU(64, 64, device="cuda")
y, _ = m(torch.randn(8, 4, 64, device="cuda"))
torch.cuda.synchronize()
print("finished")
"""


def test_a_wait_that_never_ends_fails_the_launch_after_the_watchdogs_limit():
    env = dict(os.environ, FUSED_RNN_CUDA_PATH="persistent", FUSED_RNN_PERSISTENT_BARRIER="counter",
               FUSED_RNN_PERSISTENT_TEST_STALL="1")
    start = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-c", STALLED_FORWARD], env=env,
                             capture_output=True, text=True, timeout=4 * LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the stalled launch still hangs after {4 * LIMIT_S} s: no watchdog trap")
    elapsed = time.monotonic() - start
    assert run.returncode != 0 and "finished" not in run.stdout, run.stdout
    assert "CUDA error" in run.stderr, run.stderr[-2000:]
    assert elapsed > 0.9 * LIMIT_S, f"failed after {elapsed:.1f} s, before the watchdog's limit"
