"""The persistent CUDA kernels run on the CPU: tests/persistent_emulation.cpp compiles
csrc/cuda/persistent_kernels.cuh as host C++ under tests/cuda_host_emulation.h (every thread a
coroutine; barriers, warp shuffles, mma.sync, distributed shared memory and cp.async emulated) and
runs the same plan and kernels as a GPU would, for each variant of FUSED_RNN_PERSISTENT_*: grid,
counter and cluster barriers, more units per block, cp.async staging, tensor-core products (tf32,
bf16), the exchange through distributed shared memory, shared staging, the tagged exchange, the
split reduction; float32 and bfloat16. Forward and
backward of GRU, LSTM and both Elman RNNs, with and without per-sequence lengths, in both
directions, are compared with a float64 recurrence written here from the same projections
(autograd for the gradients), each case under a random schedule of its own (threads run in a
random order with some blocks ahead of others, cp.async completes at a random time, shared
memory starts as NaN, and turns NaN again when its block exits): a value read before the barrier
or wait that orders its write, or from the shared memory of a block that has left, reads stale
data or NaN. And random schedules give the bits of the threads run in order. It checks the
kernels' indexing, tiling, the order of their phases and races between barriers without a GPU;
not the memory model's fences and caches or speed (the GPU tests and benchmarks/gpu_check.sh do
that). Builds a small extension (~1 minute)."""
import os
import zlib

import pytest
import torch
from torch.utils.cpp_extension import load

from helpers import assert_cluster_mode_layout, assert_shared_staging_layout, assert_split_layout
from test_cuda_persistent_clusters import CASES as CLUSTER_CASES
from test_cuda_persistent_shared_staging import BARRIERS as SHARED_STAGING_BARRIERS
from test_cuda_persistent_shared_staging import SIZES as SHARED_STAGING_SIZES
from test_cuda_persistent_split import SIZES as SPLIT_SIZES
from test_cuda_persistent_split import SPLITS

HERE = os.path.dirname(os.path.abspath(__file__))
GATES = {0: 3, 1: 4, 2: 1, 3: 1}  # GRU, LSTM, RNN tanh, RNN relu
SMS = 8  # multiprocessors of the emulated device: U = ceil(H / 8) units per block


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    build = tmp_path_factory.mktemp("persistent_emulation")
    return load(name="persistent_emulation", sources=[os.path.join(HERE, "persistent_emulation.cpp")],
                extra_cflags=["-O1"], build_directory=str(build), verbose=False)


def reference(cell, xp, h0, c0, w_hh, b_ih, b_hh, lengths, reverse):
    """float64 recurrence from the projections xp [T, B, G*H] (PyTorch's gate formulas): outputs
    (inactive rows carry their state), final h and c, the cell state after each step."""
    T, B, _ = xp.shape
    H = h0.shape[1]
    h, c, outs, cs = h0, c0, [None] * T, [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        active = (torch.full((B, 1), True) if lengths is None
                  else (t < lengths).unsqueeze(1))
        gh = h @ w_hh.T
        if cell == 0:
            gi, ghb = xp[t] + b_ih, gh + b_hh
            r = torch.sigmoid(gi[:, :H] + ghb[:, :H])
            z = torch.sigmoid(gi[:, H:2 * H] + ghb[:, H:2 * H])
            n = torch.tanh(gi[:, 2 * H:] + r * ghb[:, 2 * H:])
            h_new, c_new = (1 - z) * n + z * h, c
        elif cell == 1:
            a = xp[t] + gh + b_ih
            i, f = torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H:2 * H])
            g, o = torch.tanh(a[:, 2 * H:3 * H]), torch.sigmoid(a[:, 3 * H:])
            c_new = f * c + i * g
            h_new = o * torch.tanh(c_new)
        else:
            pre = xp[t] + gh + b_ih
            h_new, c_new = (torch.tanh(pre) if cell == 2 else torch.relu(pre)), c
        h = torch.where(active, h_new, h)
        c = torch.where(active, c_new, c)
        outs[t], cs[t] = h, c
    return torch.stack(outs), h, c, torch.stack(cs)


# (FUSED_RNN_PERSISTENT_* settings, TF32 allowed, expected (blocks per cluster, shared-memory
# exchange, blocks sharing the staging, tagged exchange, blocks splitting the reduction)); tensor
# cores are expected where asked for, for bfloat16 always, float32 with TF32. Shared staging in
# the grid: clusters of 8 over H = 12 in blocks of 2 units are 6 blocks that own units and 2 that
# only stage; clusters of 4 with 5 units per block (3 blocks + 1). Tagged exchange: no step
# barrier at all. Split reduction: clusters of 2 over H = 12 in blocks of 2 units (6 blocks, the
# forward's 12 columns in chunks of 8 + 4, the GRU backward's 36 in 24 + 12); of 4 (8 blocks, the
# forward's chunks 8 + 4 + 0 + 0: empty chunks); of 3 with the counter barrier and 5 units per
# block (3 blocks, one cluster of 15 units, 3 of them past H); with 4 units per block (the partial
# sums added 16 bytes at a time) in clusters of 2 (4 blocks) and of 4 (4 blocks, the last owns no
# units).
VARIANTS = [
    ({}, False, (0, 0, 0, 0, 0)),
    ({"UNITS": "5"}, False, (0, 0, 0, 0, 0)),
    ({"BARRIER": "counter"}, False, (0, 0, 0, 0, 0)),
    ({"STAGING": "async"}, False, (0, 0, 0, 0, 0)),
    ({"PRODUCT": "mma", "STAGING": "async"}, True, (0, 0, 0, 0, 0)),
    ({"PRODUCT": "mma"}, False, (0, 0, 0, 0, 0)),  # float32 without TF32: CUDA cores
    ({"BARRIER": "cluster", "CLUSTER": "2"}, False, (2, 0, 0, 0, 0)),
    ({"BARRIER": "cluster", "CLUSTER": "4", "EXCHANGE": "dsmem"}, False, (4, 1, 0, 0, 0)),
    ({"BARRIER": "cluster", "CLUSTER": "2", "EXCHANGE": "dsmem", "PRODUCT": "mma",
      "STAGING": "async"}, True, (2, 1, 0, 0, 0)),
    ({"STAGING": "shared"}, False, (0, 0, 8, 0, 0)),
    ({"STAGING": "shared", "CLUSTER": "4", "UNITS": "5", "BARRIER": "counter"}, False,
     (0, 0, 4, 0, 0)),
    ({"STAGING": "shared", "PRODUCT": "mma"}, True, (0, 0, 8, 0, 0)),
    ({"STAGING": "shared", "BARRIER": "cluster", "CLUSTER": "4"}, False, (4, 0, 4, 0, 0)),
    ({"BARRIER": "tagged"}, False, (0, 0, 0, 1, 0)),
    ({"BARRIER": "tagged", "PRODUCT": "mma", "UNITS": "5"}, True, (0, 0, 0, 1, 0)),
    ({"SPLIT": "2"}, False, (0, 0, 0, 0, 2)),
    ({"SPLIT": "4"}, False, (0, 0, 0, 0, 4)),
    ({"SPLIT": "3", "BARRIER": "counter", "UNITS": "5"}, False, (0, 0, 0, 0, 3)),
    ({"SPLIT": "2", "PRODUCT": "mma", "STAGING": "async", "UNITS": "4"}, True, (0, 0, 0, 0, 2)),
    ({"SPLIT": "4", "PRODUCT": "mma", "UNITS": "4"}, True, (0, 0, 0, 0, 4)),
]
# bfloat16 (operands kept as stored on the tensor cores, converted on CUDA cores): nine of them
BFLOAT16_VARIANTS = (0, 5, 8, 9, 11, 13, 14, 15, 19)
CASES = ([pytest.param(torch.float32, *v, id="float32-" + ("+".join(
    f"{k}={x}" for k, x in v[0].items()) or "default")) for v in VARIANTS]
    + [pytest.param(torch.bfloat16, *VARIANTS[i], id="bfloat16-" + ("+".join(
        f"{k}={x}" for k, x in VARIANTS[i][0].items()) or "default")) for i in BFLOAT16_VARIANTS])
# (outputs, gradients) against float64 from the same (rounded) inputs
TOLERANCES = {(torch.float32, False): (dict(atol=2e-5, rtol=1e-4), dict(atol=1e-4, rtol=1e-4)),
              (torch.float32, True): (dict(atol=5e-3, rtol=5e-3), dict(atol=5e-2, rtol=5e-2)),
              (torch.bfloat16, False): (dict(atol=4e-2, rtol=4e-2), dict(atol=1.5e-1, rtol=1e-1)),
              (torch.bfloat16, True): (dict(atol=4e-2, rtol=4e-2), dict(atol=1.5e-1, rtol=1e-1))}


def run_layer(emu, cell, dtype, tf32, reverse, with_lengths, schedule=0, smem=(0, 0),
              shape=(3, 5, 12)):
    """Random inputs (seeded by cell and direction), the emulated forward, then the emulated
    backward on the forward's values as the driver hands them over, under the emulation's
    schedule `schedule` (0: threads in index order; else random orders and cp.async times), on a
    device with smem = (forward, backward) bytes of shared memory per block (0: the H200's).
    shape: (T, B, H); with lengths B = 5. Returns the inputs, the results and what each launch
    reported running."""
    torch.manual_seed(cell * 10 + reverse)
    emu.set_schedule(schedule)
    T, B, H = shape
    G = GATES[cell]
    like = dict(dtype=dtype)
    xp = torch.randn(T, B, G * H).to(dtype)
    h0, c0 = torch.randn(B, H).to(dtype), torch.randn(B, H).to(dtype)
    w_hh = (torch.randn(G * H, H) / H ** 0.5).to(dtype)
    b_ih, b_hh = torch.randn(G * H).to(dtype), torch.randn(G * H).to(dtype)
    lengths = torch.tensor([3, 1, 2, 3, 2]) if with_lengths else None
    no_lengths = torch.empty(0, dtype=torch.int64)
    lstm, gru = cell == 1, cell == 0
    empty = torch.empty(0, **like)
    x = xp.clone()  # LSTM: replaced by the gate activations
    out = torch.full((T, B, H), float("nan"), **like)
    saved = torch.full((T, B, 4 * H), float("nan"), **like) if gru else empty
    cells = torch.full((T, B, H), float("nan"), **like) if lstm else empty
    ran_forward = emu.forward(cell, x, h0, c0 if lstm else empty, w_hh, b_ih,
                              b_hh if gru else empty, out, saved, cells,
                              lengths if with_lengths else no_lengths, reverse, SMS, smem[0], tf32)
    grad_out, dhT, dcT = (torch.randn(T, B, H).to(dtype), torch.randn(B, H).to(dtype),
                          torch.randn(B, H).to(dtype))
    h_prev = torch.empty(T, B, H, **like)  # GRU: the state each step starts from
    for t in range(T):
        before = t + 1 if reverse else t - 1
        h_prev[t] = h0 if before < 0 or before >= T else out[before]
    dh, dc = dhT.clone(), dcT.clone()  # in: dL/dh_T, dL/dc_T; out: dL/dh0, dL/dc0
    d_x = torch.full((T, B, G * H), float("nan"), **like)
    d_h = torch.full((T, B, 3 * H), float("nan"), **like) if gru else d_x
    ran_backward = emu.backward(cell, w_hh, grad_out, dh, dc if lstm else empty, d_x, d_h,
                                h_prev, saved, x if lstm else empty, cells,
                                c0 if lstm else empty, out,
                                lengths if with_lengths else no_lengths, reverse, SMS, smem[1],
                                tf32)
    return dict(xp=xp, h0=h0, c0=c0, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=lengths,
                grad_out=grad_out, dhT=dhT, dcT=dcT, out=out, cells=cells, d_x=d_x, dh=dh, dc=dc,
                ran=(tuple(ran_forward[:3]) + tuple(ran_forward[4:7]),
                     tuple(ran_backward[:3]) + tuple(ran_backward[4:7])))


@pytest.mark.parametrize("dtype,settings,tf32,expected", CASES)
@pytest.mark.parametrize("cell", [0, 1, 2, 3], ids=["GRU", "LSTM", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("reverse,with_lengths", [(False, False), (True, True)])
def test_emulated_persistent_kernels_match_the_recurrence(emu, monkeypatch, dtype, settings, tf32,
                                                          expected, cell, reverse, with_lengths):
    for name, value in settings.items():
        monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name}", value)
    mma = settings.get("PRODUCT") == "mma" and (dtype != torch.float32 or tf32)
    expected = (expected[0], int(mma), expected[1], expected[2], expected[3], expected[4])
    # a random schedule of its own for every case (a race between barriers reads stale values)
    schedule = zlib.crc32(repr((dtype, settings, cell, reverse)).encode()) | 1
    r = run_layer(emu, cell, dtype, tf32, reverse, with_lengths, schedule)
    assert r["ran"] == (expected, expected)
    matches_the_recurrence(r, cell, dtype, mma, reverse)


def matches_the_recurrence(r, cell, dtype, mma, reverse):
    """run_layer's results against the float64 recurrence: outputs, LSTM cell states, dL/dx,
    dL/dh0, dL/dc0."""
    tol, grad_tol = TOLERANCES[dtype, bool(mma)]
    leaves = [r[k].double().requires_grad_() for k in ("xp", "h0", "c0")]
    lengths = r["lengths"]
    want_out, want_h, want_c, want_cells = reference(cell, *leaves, r["w_hh"].double(),
                                                     r["b_ih"].double(), r["b_hh"].double(),
                                                     lengths, reverse)
    torch.testing.assert_close(r["out"].double(), want_out, **tol)
    if cell == 1:  # cells[t]: the cell state after step t
        torch.testing.assert_close(r["cells"].double(), want_cells.detach(), **tol)
    # the layer's outputs at inactive rows are zero (the driver zeroes them after the kernel,
    # which leaves the carried state there): no gradient flows back from them
    T, B, _ = want_out.shape
    live = (torch.ones(T, B, 1) if lengths is None
            else (torch.arange(T).view(T, 1) < lengths.view(1, B)).unsqueeze(2)).double()
    loss = ((want_out * live * r["grad_out"].double()).sum()
            + (want_h * r["dhT"].double()).sum())
    if cell == 1:
        loss = loss + (want_c * r["dcT"].double()).sum()
    g_xp, g_h0, g_c0 = torch.autograd.grad(loss, leaves, allow_unused=True)
    torch.testing.assert_close(r["d_x"].double(), g_xp, **grad_tol)
    torch.testing.assert_close(r["dh"].double(), g_h0, **grad_tol)
    if cell == 1:
        torch.testing.assert_close(r["dc"].double(), g_c0, **grad_tol)


@pytest.mark.parametrize("staging", ["loads", "shared", "split"])
@pytest.mark.parametrize("cell", [0, 1], ids=["GRU", "LSTM"])
def test_emulated_steps_staged_in_several_passes_match_the_recurrence(emu, monkeypatch, staging,
                                                                      cell):
    """A device with room for 2 staged rows of the 5: each step stages and multiplies in 3
    passes (2 + 2 + 1 rows); with shared staging a pass may only overwrite X once every block
    of the cluster has finished the previous pass's product, with the split reduction a pass's
    product may only overwrite the partial sums once every block of the cluster has added them up
    (a laggard block in every launch: the others run ahead into the next pass while it works, if
    nothing stops them)."""
    if staging == "split":
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_SPLIT", "2")
    else:
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", staging)
    G, B, H = GATES[cell], 5, 12
    smem = []
    for backward in (False, True):
        def rows_at(smem_bytes):
            return dict(zip(PLAN, emu.plan(G, B, H, backward, torch.float32, SMS, smem_bytes,
                                           False)))
        full = rows_at(232448)
        assert full["staged_rows"] == B
        lo, hi = 1, full["smem"]  # the least shared memory with room for 2 rows: exactly 2
        while lo < hi:
            mid = (lo + hi) // 2
            fits = rows_at(mid)
            lo, hi = (lo, mid) if fits["fits"] and fits["staged_rows"] >= 2 else (mid + 1, hi)
        smem.append(lo)
        assert rows_at(lo)["staged_rows"] == 2
        assert rows_at(lo)["split"] == (2 if staging == "split" else 0)
    schedule = zlib.crc32(repr(("passes", staging, cell)).encode()) | 1
    emu.set_laggards(True)
    try:
        r = run_layer(emu, cell, torch.float32, False, True, True, schedule, tuple(smem))
    finally:
        emu.set_laggards(False)
    assert r["ran"][0][3] == r["ran"][1][3] == (8 if staging == "shared" else 0)
    assert r["ran"][0][5] == r["ran"][1][5] == (2 if staging == "split" else 0)
    matches_the_recurrence(r, cell, torch.float32, False, True)


@pytest.mark.parametrize("product", ["fma", "mma"])
@pytest.mark.parametrize("cell", [0, 1, 2], ids=["GRU", "LSTM", "RNN_TANH"])
def test_emulated_shared_memory_exchange_gives_the_same_bits_as_l2(emu, monkeypatch, product,
                                                                   cell):
    """The rows the exchange writes are the values the staging would read: same bits."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "cluster")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", "4")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", product)
    runs = []
    for exchange in ("l2", "dsmem"):
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_EXCHANGE", exchange)
        runs.append(run_layer(emu, cell, torch.float32, True, True, True))
    assert [r["ran"][0][2] for r in runs] == [0, 1]
    for key in ("out", "cells", "d_x", "dh", "dc"):
        assert torch.equal(runs[0][key], runs[1][key]), key


@pytest.mark.parametrize("product", ["fma", "mma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_tagged_exchange_gives_the_bits_of_the_grid_barrier(emu, monkeypatch, product,
                                                                     dtype):
    """The tagged words carry the values the staging would read from the layer's output / the
    gate gradients: same bits as with the grid barrier."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", product)
    for cell in (0, 1, 3):
        runs = []
        for barrier in ("grid", "tagged"):
            monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", barrier)
            runs.append(run_layer(emu, cell, dtype, True, True, True, schedule=99))
        assert [r["ran"][0][4] for r in runs] == [0, 1]
        for key in ("out", "cells", "d_x", "dh", "dc"):
            assert torch.equal(runs[0][key], runs[1][key]), (cell, key)


@pytest.mark.parametrize("variant", [7, 8, 14, 17, 19],
                         ids=["cluster4-dsmem", "cluster2-dsmem-mma-async", "tagged-mma-units5",
                              "split3-counter-units5", "split4-mma-units4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cell", [0, 1], ids=["GRU", "LSTM"])
def test_emulated_random_schedules_give_the_bits_of_the_ordered_one(emu, monkeypatch, variant,
                                                                    dtype, cell):
    """Whatever order the threads run in and whenever cp.async lands, the same bits (races
    that stay within the tolerances above show here)."""
    settings, tf32, _ = VARIANTS[variant]
    for name, value in settings.items():
        monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name}", value)
    runs = [run_layer(emu, cell, dtype, tf32, True, True, schedule) for schedule in (0, 7, 1234)]
    for r in runs[1:]:
        for key in ("out", "cells", "d_x", "dh", "dc"):
            assert torch.equal(runs[0][key], r[key]), key


# The H200's limits (132 multiprocessors, 227 KB of shared memory per block) and issue 7's grid
H200 = dict(sms=132, smem=232448)
PLAN = ["fits", "units", "staged_rows", "blocks", "mma", "cluster", "group_rows", "dsmem", "smem",
        "share", "tagged", "split"]
GRID = [(G, B, H, dtype, backward) for G in (3, 4, 1) for B in (1, 32, 64)
        for H in (256, 512, 1024) for dtype in (torch.float32, torch.bfloat16, torch.float16)
        for backward in (False, True)]
PLAN_VARIANTS = {"default": ({}, False),
                 "mma-async": ({"PRODUCT": "mma", "STAGING": "async"}, True),
                 "cluster": ({"BARRIER": "cluster"}, False),
                 "cluster-dsmem-mma": ({"BARRIER": "cluster", "EXCHANGE": "dsmem",
                                        "PRODUCT": "mma"}, True),
                 "shared-mma": ({"STAGING": "shared", "PRODUCT": "mma"}, True),
                 "cluster-shared": ({"BARRIER": "cluster", "STAGING": "shared"}, False),
                 "tagged-mma": ({"BARRIER": "tagged", "PRODUCT": "mma"}, True),
                 "split8-mma": ({"SPLIT": "8", "PRODUCT": "mma"}, True),
                 "split4-counter": ({"SPLIT": "4", "BARRIER": "counter"}, False)}


def h200_plan(emu, G, B, H, dtype, backward, tf32):
    """choose_plan's plan for the H200 under the FUSED_RNN_PERSISTENT_* settings set now."""
    return dict(zip(PLAN, emu.plan(G, B, H, backward, dtype, H200["sms"], H200["smem"], tf32)))


@pytest.mark.parametrize("variant", list(PLAN_VARIANTS))
def test_h200_plans_fit_the_device_on_issue_7s_grid(emu, monkeypatch, variant):
    """Every point of issue 7's grid (B <= 64, H up to 1024, GRU / LSTM / RNN, float32 / bf16 /
    fp16, forward and backward) has a plan in every variant (falling back where the variant's
    layout does not fit), and every plan fits the H200: shared memory, one block per
    multiprocessor for the grid barrier, every hidden unit and batch row owned by a block; with
    shared staging whole clusters (the grid padded with blocks that own no units)."""
    settings, tf32 = PLAN_VARIANTS[variant]
    for name, value in settings.items():
        monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name}", value)
    for G, B, H, dtype, backward in GRID:
        p = h200_plan(emu, G, B, H, dtype, backward, tf32)
        where = (G, B, H, dtype, backward, p)
        assert p["fits"] and p["smem"] <= H200["smem"], where
        U = p["units"]
        if p["cluster"]:
            C = p["cluster"]
            groups, rows = p["blocks"] // C, p["group_rows"]
            assert p["blocks"] % C == 0 and C * U >= H > (C - 1) * U, where
            assert groups * rows >= B > (groups - 1) * rows and groups * C <= H200["sms"], where
        elif p["split"]:  # whole clusters of C blocks, each C * U units
            rows, C = B, p["split"]
            assert_split_layout(C, H, C, p["blocks"], U, where, H200["sms"])
        else:
            rows, C = B, p["share"] or 1  # shared staging: whole clusters of C blocks
            assert p["blocks"] <= H200["sms"] and p["blocks"] % C == 0, where
            assert p["blocks"] * U >= H > (p["blocks"] - C) * U, where
        if settings.get("STAGING") == "shared":
            assert p["share"] == (p["cluster"] or 8), where
        assert p["tagged"] == (settings.get("BARRIER") == "tagged"), where
        # the split reduction fits everywhere on this grid (and only where asked for)
        assert p["split"] == int(settings.get("SPLIT", 0)), where
        assert 1 <= p["staged_rows"] <= rows, where
        assert not p["dsmem"] or (p["cluster"] and p["staged_rows"] == rows), where
        assert not p["mma"] or settings.get("PRODUCT") == "mma", where


@pytest.mark.parametrize("barrier,cluster", SHARED_STAGING_BARRIERS)
def test_h200_plans_have_the_layout_the_gpu_shared_staging_test_expects(emu, monkeypatch, barrier,
                                                                       cluster):
    """test_cuda_persistent_shared_staging.py's sizes and barriers (float32 on CUDA cores), planned
    for 132 SMs (the H100's and the H200's count) and 227 KB per block: the launch layout that the
    GPU test asserts on the launch record holds for the plan here (the GPU plans again for the
    clusters the device holds at once, which can only lower the block count)."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_STAGING", "shared")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", barrier)
    if cluster:
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", cluster)
    for G in (3, 4, 1):
        for _, B, _, H in SHARED_STAGING_SIZES:
            for backward in (False, True):
                p = h200_plan(emu, G, B, H, torch.float32, backward, False)
                where = (G, B, H, backward, p)
                assert p["fits"], where
                assert_shared_staging_layout(barrier, cluster, H, p["blocks"], p["units"],
                                             p["cluster"], p["share"], where)


@pytest.mark.parametrize("exchange", ["l2", "dsmem"])
def test_h200_plans_have_the_layout_the_gpu_cluster_mode_test_expects(emu, monkeypatch, exchange):
    """test_cuda_persistent_clusters.py's cases (cluster sizes, B, H; float32 on CUDA cores),
    planned for 132 SMs and 227 KB per block: cluster mode where that test expects it, with the
    batch rows and the exchange it asserts on the launch record."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "cluster")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_EXCHANGE", exchange)
    for cluster, _, B, _, H in CLUSTER_CASES:
        if cluster:
            monkeypatch.setenv("FUSED_RNN_PERSISTENT_CLUSTER", cluster)
        else:
            monkeypatch.delenv("FUSED_RNN_PERSISTENT_CLUSTER", raising=False)
        for G in (3, 4, 1):
            for backward in (False, True):
                p = h200_plan(emu, G, B, H, torch.float32, backward, False)
                where = (cluster, G, B, H, backward, p)
                assert p["fits"], where
                assert_cluster_mode_layout(cluster, exchange, B, H, p["cluster"],
                                           p["group_rows"], p["dsmem"], where)


def test_h200_plans_have_the_layout_the_gpu_split_test_expects(emu, monkeypatch):
    """test_cuda_persistent_split.py's sizes and settings (float32 on CUDA cores; then its
    tensor-core cases, split 8, bf16 and tf32), planned for 132 SMs and 227 KB per block: the
    launch layout that the GPU test asserts on the launch record holds for the plan here."""
    for (_, B, _, H), (split, barrier) in zip(SPLIT_SIZES, SPLITS):
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_SPLIT", split)
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", barrier)
        for G in (3, 4, 1):
            for backward in (False, True):
                p = h200_plan(emu, G, B, H, torch.float32, backward, False)
                where = (split, barrier, G, B, H, backward, p)
                assert p["fits"] and not p["mma"], where
                assert_split_layout(int(split), H, p["split"], p["blocks"], p["units"], where)
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_SPLIT", "8")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "grid")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_PRODUCT", "mma")
    for _, B, _, H in SPLIT_SIZES[1:3]:
        for G in (3, 4):
            for dtype in (torch.bfloat16, torch.float32):
                for backward in (False, True):
                    p = h200_plan(emu, G, B, H, dtype, backward, True)
                    assert p["split"] == 8 and p["mma"], (G, B, H, dtype, backward, p)


@pytest.mark.parametrize("split", [4, 8])
def test_h200_split_plans_stage_a_share_of_each_row(emu, monkeypatch, split):
    """On issue 7's grid the split reduction stages 1/split of each row per block (rounded up to 8
    elements): the L2 bytes a step reads fall by about the split, and more rows fit per pass."""
    for G, B, H, dtype, backward in GRID:
        K = G * H if backward else H
        monkeypatch.delenv("FUSED_RNN_PERSISTENT_SPLIT", raising=False)
        whole = h200_plan(emu, G, B, H, dtype, backward, False)
        monkeypatch.setenv("FUSED_RNN_PERSISTENT_SPLIT", str(split))
        p = h200_plan(emu, G, B, H, dtype, backward, False)
        where = (G, B, H, dtype, backward, whole, p)
        chunk = (-(-K // split) + 7) // 8 * 8  # split_chunk
        # bytes of the rows every block stages per step, before and after
        before = whole["blocks"] * B * K
        after = p["blocks"] * B * chunk
        assert p["split"] == split and after * split <= before * 1.25, where
        assert p["staged_rows"] >= whole["staged_rows"], where


def test_split_setting_where_it_applies_and_its_bad_values(emu, monkeypatch):
    """FUSED_RNN_PERSISTENT_SPLIT: 1 is off; with the grid or counter barrier it comes before
    shared staging; cluster mode and the tagged exchange keep their own plans (no split); values
    outside 1-16 raise, naming the setting and the value."""
    def plan(**settings):
        for name in ("SPLIT", "BARRIER", "STAGING"):
            monkeypatch.delenv(f"FUSED_RNN_PERSISTENT_{name}", raising=False)
        for name, value in settings.items():
            monkeypatch.setenv(f"FUSED_RNN_PERSISTENT_{name}", value)
        return h200_plan(emu, 3, 32, 256, torch.float32, False, False)
    assert plan(SPLIT="1")["split"] == 0
    assert plan(SPLIT="4", BARRIER="counter")["split"] == 4
    p = plan(SPLIT="4", STAGING="shared")
    assert (p["split"], p["share"]) == (4, 0)
    p = plan(SPLIT="4", BARRIER="cluster")
    assert (p["split"], p["cluster"]) == (0, 8)
    p = plan(SPLIT="4", BARRIER="tagged")
    assert (p["split"], p["tagged"]) == (0, 1)
    for bad in ("17", "0", "two"):
        with pytest.raises(RuntimeError, match=rf"FUSED_RNN_PERSISTENT_SPLIT must be an integer "
                                               rf"in \[1, 16\], got '{bad}'"):
            plan(SPLIT=bad)


def test_the_watchdog_tests_stall_leaves_a_wait_that_never_ends(emu, monkeypatch):
    """FUSED_RNN_PERSISTENT_TEST_STALL=1 (the setting of tests/test_cuda_persistent_watchdog.py):
    block 0 never arrives at the counter barrier, so the other blocks' wait never ends (the
    emulation reports the deadlock itself; on a GPU the kernel's watchdog must trap); 0 changes
    nothing; with another barrier the setting raises, naming what it needs."""
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "counter")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_TEST_STALL", "1")
    with pytest.raises(RuntimeError, match="host emulation: deadlock"):
        run_layer(emu, 0, torch.float32, False, False, False)
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_TEST_STALL", "0")
    r = run_layer(emu, 0, torch.float32, False, False, False)
    out, _, _, _ = reference(0, r["xp"].double(), r["h0"].double(), r["c0"].double(),
                             r["w_hh"].double(), r["b_ih"].double(), r["b_hh"].double(), None,
                             False)
    torch.testing.assert_close(r["out"].double(), out, atol=2e-5, rtol=1e-4)
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_TEST_STALL", "1")
    monkeypatch.setenv("FUSED_RNN_PERSISTENT_BARRIER", "grid")
    with pytest.raises(RuntimeError, match="TEST_STALL=1 .* needs FUSED_RNN_PERSISTENT_BARRIER="
                                           "counter"):
        run_layer(emu, 0, torch.float32, False, False, False)
