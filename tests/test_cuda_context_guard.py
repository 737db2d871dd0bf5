"""The test session's guard against a lost CUDA context (tests/cuda_context_guard.py), with the
probe and the worker's exit replaced: it runs without a GPU."""
from cuda_context_guard import ContextGuard, cuda_context_lost


def test_an_xdist_worker_exits_after_the_test_that_lost_the_context():
    exits = []
    state = {"lost": False}
    guard = ContextGuard(lost=lambda: state["lost"], in_xdist_worker=True, exit=exits.append)
    guard.after("tests/test_a.py::test_cuda_one")
    assert exits == [] and guard.before("tests/test_a.py::test_cuda_two") is None
    state["lost"] = True
    guard.after("tests/test_a.py::test_cuda_two")
    assert exits == [3]


def test_one_process_skips_the_later_cuda_tests_naming_the_test_that_lost_it():
    exits = []
    guard = ContextGuard(lost=lambda: True, in_xdist_worker=False, exit=exits.append)
    guard.after("tests/test_b.py::test_cuda_forward")
    assert exits == []
    reason = guard.before("tests/test_b.py::test_cuda_backward")
    assert "tests/test_b.py::test_cuda_forward" in reason and "sticky" in reason
    assert guard.before("tests/test_cpu.py::test_gradcheck") is None  # not a CUDA test
    guard.after("tests/test_b.py::test_cuda_backward")  # remembered once
    assert "test_cuda_forward" in guard.before("tests/test_c.py::test_CUDA_paths")


def test_a_usable_or_absent_context_is_not_lost():
    """No CUDA here (or none started yet): nothing lost; on a GPU, this session's context runs."""
    assert cuda_context_lost() is False
