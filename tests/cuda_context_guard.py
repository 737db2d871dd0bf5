"""What the test session does after a test that left this process's CUDA context unusable (a
sticky error: an illegal address, a kernel's trap; every later CUDA call of the process fails):
without the guard, each later CUDA test of the process would fail with the same error and hide
what it tests. Under pytest-xdist the worker exits (the controller reports the test, starts a
new worker with a fresh context and goes on); in one process the later CUDA tests are skipped,
naming the test that lost the context. Used by conftest.py; on a machine without CUDA it does
nothing."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from bench import cuda_context_lost  # noqa: E402


class ContextGuard:
    """before(nodeid): the reason to skip a CUDA test (None: run it); after(nodeid): checks the
    context (lost(): the probe) and exits the xdist worker (exit(status)) or remembers the
    test."""

    def __init__(self, lost=cuda_context_lost, in_xdist_worker=None, exit=os._exit):
        self.lost, self.exit, self.lost_in = lost, exit, None
        self.in_xdist_worker = ("PYTEST_XDIST_WORKER" in os.environ
                                if in_xdist_worker is None else in_xdist_worker)

    def before(self, nodeid):
        if self.lost_in is not None and "cuda" in nodeid.lower():
            return (f"the CUDA context of this process was lost in {self.lost_in} (a sticky "
                    "error); the later CUDA tests cannot run in it")
        return None

    def after(self, nodeid):
        if self.lost_in is not None or not self.lost():
            return
        self.lost_in = nodeid
        if self.in_xdist_worker:
            print(f"\n{nodeid} left the CUDA context unusable: this worker exits, a new one "
                  "goes on", file=sys.stderr, flush=True)
            self.exit(3)
