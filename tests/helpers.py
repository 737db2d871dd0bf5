"""Shared test helpers: dtype-keyed tolerances and comparisons of outputs and gradients."""
import contextlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fused_rnn

# Every parity test runs on each device; CUDA cases are skipped where there is no GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]

# Tolerances by dtype, for results of the fused kernels against the textbook cells or nn.*.
# float32: different summation orders in the GEMMs and Sleef vs libm activations.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float16: dict(atol=5e-3, rtol=5e-3),   # compared with a float64 oracle or nn.*
    torch.bfloat16: dict(atol=4e-2, rtol=4e-2),  # compared with a float64 oracle
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


def assert_grads_close(actual, expected, dtype, names, tol=None):
    """tol: dict(atol=, rtol=) instead of GRAD_TOL[dtype]."""
    assert len(actual) == len(expected) == len(names)
    for a, e, n in zip(actual, expected, names):
        assert (a is None) == (e is None), f"gradient of {n}: one side is None"
        if a is not None:
            torch.testing.assert_close(a, e.to(a.dtype), **(tol or GRAD_TOL[dtype]),
                                       msg=lambda m: f"grad of {n}: {m}")


def grads(outputs, inputs, grad_outputs):
    """d(sum <outputs, grad_outputs>)/d(inputs); None for inputs that are None."""
    present = [t for t in inputs if t is not None]
    got = torch.autograd.grad(outputs, present, grad_outputs, allow_unused=False, retain_graph=True)
    it = iter(got)
    return [None if t is None else next(it) for t in inputs]


def flat(out, state):
    """[output (its data for a PackedSequence), h_n(, c_n)] of an RNN module's result."""
    out = out.data if isinstance(out, PackedSequence) else out
    return [out, *(state if isinstance(state, tuple) else (state,))]


def nn_and_fused(cell, I, H, dtype, device="cpu", **kw):
    """An nn.* module and the fused one with its weights; cell "RNN_RELU" is nn.RNN with
    nonlinearity="relu"."""
    if cell == "RNN_RELU":
        cell, kw = "RNN", dict(kw, nonlinearity="relu")
    ref = getattr(nn, cell)(I, H, dtype=dtype, device=device, **kw)
    fused = getattr(fused_rnn, cell)(I, H, dtype=dtype, device=device, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def compare_with_nn(ref, fused, x, hx, dtype, grad_tol=None):
    """fused(x, hx) against ref(x, hx): outputs and final states (shapes, TOL[dtype]), then the
    gradients of x and of the states that require grad and of every parameter (GRAD_TOL[dtype],
    or grad_tol)."""
    got, want = flat(*fused(x, hx)), flat(*ref(x, hx))
    for g, w, n in zip(got, want, ["output", "h_n", "c_n"]):
        assert g.shape == w.shape, n
        assert_close(g, w, dtype, n)
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    leaves = [(n, t) for n, t in [("input", x)] + [(f"state{i}", s) for i, s in enumerate(states)]
              if t.requires_grad]
    if not leaves and not any(p.requires_grad for p in ref.parameters()):
        return
    seeds = [torch.randn_like(w) for w in want]
    names = [n for n, _ in leaves] + [n for n, _ in ref.named_parameters()]
    tensors = [t for _, t in leaves]
    assert_grads_close(grads(got, tensors + list(fused.parameters()), seeds),
                       grads(want, tensors + list(ref.parameters()), seeds), dtype, names,
                       grad_tol)


def compare_packed_with_nn(ref, fused, x, packed, hx, dtype, grad_tol=None):
    """fused(packed, hx) against ref(packed, hx): the same PackedSequence out (batch sizes,
    sorted / unsorted indices, data), final states, then the gradients of x (the tensor packed
    was made from), of the initial states that require grad and of every parameter
    (GRAD_TOL[dtype], or grad_tol)."""
    out_f, st_f = fused(packed, hx)
    out_r, st_r = ref(packed, hx)
    assert torch.equal(out_f.batch_sizes, out_r.batch_sizes)
    for a, b in [(out_f.sorted_indices, out_r.sorted_indices),
                 (out_f.unsorted_indices, out_r.unsorted_indices)]:
        assert (a is None and b is None) or torch.equal(a, b)
    got, want = flat(out_f, st_f), flat(out_r, st_r)
    for g, w, n in zip(got, want, ["output", "h_n", "c_n"]):
        assert_close(g, w, dtype, n)
    states = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    states = [s for s in states if s.requires_grad]
    seeds = [torch.randn_like(w) for w in want]
    names = (["input"] + [f"state{i}" for i in range(len(states))]
             + [n for n, _ in ref.named_parameters()])
    assert_grads_close(grads(got, [x, *states, *fused.parameters()], seeds),
                       grads(want, [x, *states, *ref.parameters()], seeds), dtype, names,
                       tol=grad_tol)


@contextlib.contextmanager
def cuda_path(name):
    """The CUDA path ('auto', 'persistent', 'general') set for the block, restored after."""
    saved = fused_rnn.cuda_path()
    fused_rnn.set_cuda_path(name)
    try:
        yield
    finally:
        fused_rnn.set_cuda_path(saved)


def set_persistent(monkeypatch, **settings):
    """FUSED_RNN_PERSISTENT_<NAME>=value for the test (read at every launch) for each setting
    that is not None, e.g. set_persistent(monkeypatch, barrier="cluster", profile="1")."""
    for name, value in settings.items():
        if value is not None:
            monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name.upper()}", str(value))


def persistent_matches_nn(cell, T, B, I, H, check_launch=None):
    """The persistent CUDA kernels (with whatever FUSED_RNN_PERSISTENT_* the caller set) against
    nn.* on copied weights: a bidirectional float32 layer, dense input with initial states, then
    variable lengths (inactive rows carry their state through the prefetched values); outputs,
    final states and all gradients, the gradient tolerance scaled with H (sums of T*B*H
    products). check_launch() runs after the dense comparison (e.g. reads the launch record)."""
    torch.manual_seed(B + H)
    ref, fused = nn_and_fused(cell, I, H, torch.float32, "cuda", bidirectional=True)
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    h0 = torch.randn(2, B, H, device="cuda", requires_grad=True)
    hx = (h0, torch.randn_like(h0, requires_grad=True)) if cell == "LSTM" else h0
    scale = max(1.0, H / 64)
    tol = dict(atol=GRAD_TOL[torch.float32]["atol"] * scale,
               rtol=GRAD_TOL[torch.float32]["rtol"] * scale)
    with cuda_path("persistent"):
        compare_with_nn(ref, fused, x, hx, torch.float32, grad_tol=tol)
        if check_launch is not None:
            check_launch()
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        compare_packed_with_nn(ref, fused, x, packed, hx, torch.float32, grad_tol=tol)


def assert_shared_staging_layout(barrier, cluster_setting, H, blocks, units, cluster, share, where):
    """A launch with shared staging (FUSED_RNN_PERSISTENT_STAGING=shared) as version 5 lays it
    out: in cluster mode (cluster: 8 or 16 blocks per cluster; only with the cluster barrier) rank
    k owns units [k * U, k * U + U), U = ceil(H / cluster), and the cluster's blocks share the
    staging; in a grid mode (cluster 0: the grid / counter barrier, or the cluster barrier where no
    cluster holds W_hh) whole clusters of FUSED_RNN_PERSISTENT_CLUSTER blocks (default 8) share it,
    the grid padded with blocks that own no units. Checked on the GPU's launch record
    (test_cuda_persistent_shared_staging.py) and on the plan for 132 SMs in the host emulation
    (test_persistent_emulation.py), so the two agree before a GPU runs the first."""
    if cluster:
        assert barrier == "cluster" and cluster in (8, 16), where
        size = cluster
        assert units == -(-H // size), where  # at H=13 in clusters of 8 the last rank owns none
    else:
        size = int(cluster_setting or 8)
        assert (blocks - size) * units < H <= blocks * units, where
    assert share == size and blocks % size == 0, where


def assert_cluster_mode_layout(cluster_setting, exchange, B, H, cluster, rows, dsmem, where):
    """A launch with the cluster barrier (FUSED_RNN_PERSISTENT_BARRIER=cluster) as cluster mode
    lays it out: clusters of FUSED_RNN_PERSISTENT_CLUSTER blocks (default 8), each with 1..B batch
    rows, wherever H gives every block of a cluster a unit, else the grid barrier (cluster 0); the
    rows exchanged through distributed shared memory exactly where cluster mode runs with
    FUSED_RNN_PERSISTENT_EXCHANGE=dsmem. Checked on the GPU's launch record
    (test_cuda_persistent_clusters.py) and on the plan for 132 SMs in the host emulation."""
    size = int(cluster_setting or 8)
    assert cluster == (size if H >= size else 0), where
    assert cluster == 0 or 1 <= rows <= B, where
    assert bool(dsmem) == (cluster > 0 and exchange == "dsmem"), where


def assert_split_layout(split, H, by, blocks, units, where, sms=132):
    """A launch with the split reduction (FUSED_RNN_PERSISTENT_SPLIT=split) as version 6 lays it
    out: whole clusters of `split` blocks (by: the blocks splitting, from the launch record), each
    cluster split * U hidden units, as few clusters as cover H, all of them resident at once on
    `sms` multiprocessors (the grid barrier). Checked on the GPU's launch record
    (test_cuda_persistent_split.py) and on the plan for 132 SMs in the host emulation
    (test_persistent_emulation.py), so the two agree before a GPU runs the first."""
    per_cluster = split * units
    assert by == split and blocks % split == 0 and blocks <= sms, where
    assert (blocks // split - 1) * per_cluster < H <= blocks // split * per_cluster, where


# Tolerances against float64 of products on tensor cores (FUSED_RNN_PERSISTENT_PRODUCT=mma):
# (outputs, gradients); float32 runs there as tf32, which keeps 10 mantissa bits as fp16 does.
MMA_TOL = {torch.float16: (TOL[torch.float16], GRAD_TOL[torch.float16]),
           torch.bfloat16: (TOL[torch.bfloat16], GRAD_TOL[torch.bfloat16]),
           torch.float32: (TOL[torch.float16], GRAD_TOL[torch.float16])}


def persistent_matches_float64_oracle(cell, T, B, I, H, dtype, check_launch):
    """The persistent CUDA kernels in dtype (with the caller's FUSED_RNN_PERSISTENT_* settings and
    tensor cores: MMA_TOL) against the same layer in float64: outputs, final states and all
    parameter gradients (tolerance scaled with H), run twice with the same bits both times (fixed
    summation order). check_launch() runs after each run (e.g. reads the launch record)."""
    torch.manual_seed(T + B + H)
    oracle, fused = nn_and_fused(cell, I, H, torch.float64, "cuda")
    fused = fused.to(dtype)
    x64 = torch.randn(T, B, I, device="cuda", dtype=torch.float64)
    want = flat(*oracle(x64))
    seeds = [torch.randn_like(w) for w in want]
    want_g = grads(want, [*oracle.parameters()], seeds)
    tol, grad_tol = MMA_TOL[dtype]
    scale = max(1.0, H / 64)  # sums of H (T*B*H for weights) rounded products
    grad_tol = {k: v * scale for k, v in grad_tol.items()}
    runs = []
    with cuda_path("persistent"):
        for _ in range(2):
            got = flat(*fused(x64.to(dtype)))
            got_g = grads(got, [*fused.parameters()], [s.to(dtype) for s in seeds])
            runs.append([g.detach() for g in got] + got_g)
            check_launch()
    for g, w, n in zip(runs[0], want, ["output", "h_n", "c_n"]):
        torch.testing.assert_close(g.double(), w, **tol, msg=lambda m: f"{n}: {m}")
    for g, w in zip(runs[0][len(want):], want_g):
        torch.testing.assert_close(g.double(), w, **grad_tol)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
