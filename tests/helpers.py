"""Shared test helpers: dtype-keyed tolerances and comparisons of outputs and gradients."""
import pytest
import torch

# Every parity test runs on each device; CUDA cases are skipped where there is no GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]

# Tolerances by dtype, for results of the fused kernels against the textbook cells or nn.*.
# float32: different summation orders in the GEMMs and Sleef vs libm activations.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float16: dict(atol=5e-3, rtol=5e-3),   # CUDA only; compared with a float64 oracle
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),  # CUDA only; compared with a float64 oracle
}
# Gradients sum over T*B rows, so their float32 rounding is larger.
GRAD_TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float64: dict(atol=1e-9, rtol=1e-8),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=1.5e-1, rtol=1e-1),
}

# (T, B, I, H): B=1, T=1, H below and not a multiple of the SIMD width, I != H.
SIZES = [(1, 3, 5, 7), (6, 1, 4, 13), (5, 4, 9, 16), (7, 3, 17, 33)]


def assert_close(actual, expected, dtype, what=""):
    torch.testing.assert_close(actual, expected.to(actual.dtype), **TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


def assert_grads_close(actual, expected, dtype, names):
    assert len(actual) == len(expected) == len(names)
    for a, e, n in zip(actual, expected, names):
        assert (a is None) == (e is None), f"gradient of {n}: one side is None"
        if a is not None:
            torch.testing.assert_close(a, e.to(a.dtype), **GRAD_TOL[dtype],
                                       msg=lambda m: f"grad of {n}: {m}")


def grads(outputs, inputs, grad_outputs):
    """d(sum <outputs, grad_outputs>)/d(inputs); None for inputs that are None."""
    present = [t for t in inputs if t is not None]
    got = torch.autograd.grad(outputs, present, grad_outputs, allow_unused=False, retain_graph=True)
    it = iter(got)
    return [None if t is None else next(it) for t in inputs]
