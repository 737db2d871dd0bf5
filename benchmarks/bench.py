"""fused_rnn benchmark suite: fused_rnn.GRU / LSTM / RNN against nn.GRU / LSTM / RNN.

For every point of a grid (cell, T, B, input size, hidden size, layers, directions, dtype,
device, mode): median times of fused and nn.* measured in the same run, interleaved (warm-up
excluded), their ratio, the fused time per step, the share of this machine's own GEMM rate
that the fused layer reaches (a large GEMM is timed in the same run, on the CPU inside each
point's interleaved rounds; the cell's GEMM FLOPs are counted), and memory: the peak allocated
during forward+backward (CUDA's allocator; on the CPU the profiler's memory timeline) and on the
CPU the bytes autograd saves for the backward (unique storages, counted with saved_tensors_hooks).

    python benchmarks/bench.py --quick                 # 1-1.5 minutes on a 2-core CPU
    python benchmarks/bench.py --full                  # 108 points, ~13 minutes there
    python benchmarks/bench.py --full --device cuda --dtype float32 bfloat16   # the GPU grid
    python benchmarks/bench.py --quick --json r.json --md r.md --plot r.png
    python benchmarks/bench.py --isa                   # what vectorising the CPU kernels gives
    python benchmarks/bench.py --cpu-schedule per-step row-blocks   # the CPU schedules

The plot needs matplotlib (optional extra: pip install matplotlib).
"""
import argparse
import itertools
import json
import math
import platform
import statistics
import time

import torch
import torch.utils.benchmark as tb
from torch import nn

import fused_rnn

GATES = {"GRU": 3, "LSTM": 4, "RNN": 1}

# A grid is a list of slices; each slice is a product of its values, and the grid's points are
# the union of its slices' (each point once, in order).
QUICK = [dict(cells=["GRU", "LSTM", "RNN"], T=[35], B=[1, 32], H=[128, 256], layers=[1],
              bidirectional=[False], modes=["inference", "training"])]
# The CPU's full grid: lines through issue 5's target point (T=35, B=32, H=256, one layer, one
# direction), one quantity varied at a time, for both modes and every cell: hidden size, batch,
# sequence length, then depth and direction (the whole product would take ~5 hours here).
_CPU_BASE = dict(cells=["GRU", "LSTM", "RNN"], T=[35], B=[32], H=[256], layers=[1],
                 bidirectional=[False], modes=["inference", "training"])
FULL = [dict(_CPU_BASE, H=[64, 128, 256, 512, 1024]),
        dict(_CPU_BASE, B=[1, 4, 16, 32, 64, 128, 256]),
        dict(_CPU_BASE, T=[1, 10, 35, 100, 200]),
        dict(_CPU_BASE, layers=[1, 2], bidirectional=[False, True])]
# The GPU grid is issue 7's: small batches, 192 < H <= 1024, T >= 100 (about a minute on an
# H200 for fp32 + bf16 with both CUDA paths timed).
GPU_FULL = [dict(cells=["GRU", "LSTM"], T=[256], B=[1, 32, 64], H=[256, 512, 1024], layers=[1],
                 bidirectional=[False], modes=["inference", "training"])]
GRID_KEYS = ("cells", "T", "B", "H", "layers", "bidirectional", "modes")


def grid_points(grid, **overrides):
    """(cell, T, B, H, layers, bidirectional, mode) of every point of a grid (a list of slices),
    each once, in order; an override that is not None replaces that key in every slice."""
    seen, points = set(), []
    for piece in grid:
        piece = {k: (overrides.get(k) or piece[k]) for k in GRID_KEYS}
        for point in itertools.product(*(piece[k] for k in GRID_KEYS)):
            if point not in seen:
                seen.add(point)
                points.append(point)
    return points


def machine_info(device):
    info = dict(platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"),
                device=device)
    if device == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            info["cpu"] = platform.processor()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["fused_cpu_kernels"] = fused_rnn.cpu_isa()
    else:
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def cpu_jiffies():
    """(steal, total) CPU time of all CPUs in jiffies from /proc/stat, or None (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields)) if len(fields) == 8 else None


def steal_share(before, after):
    """Share of the CPU time between two cpu_jiffies() readings that the hypervisor gave to
    other guests (steal), or None. On a shared VM this is what makes timings jump: a point
    measured with more than a few percent of steal is not to be trusted."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# The side of the square reference GEMM of the GEMM share, per device.
LARGE_GEMM_N = {"cpu": 2048, "cuda": 8192}


def large_gemm(device, dtype):
    """The reference GEMM of the GEMM share: (a function running it, its FLOPs). float16 on the
    CPU: a float32 GEMM, as the fused layers run their float16 products in float32 there (ATen's
    float16 GEMM ran ~40x slower than float32 on the development VM)."""
    n = LARGE_GEMM_N[device]
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b)), 2 * n ** 3


def gemm_rate(fn, flops, min_run_time):
    """FLOP/s of large_gemm's (fn, flops) on this machine, now."""
    t = tb.Timer("fn()", globals=dict(fn=fn),
                 num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median
    return flops / t


def cell_flops(cell, T, B, I, H, layers, dirs, training):
    """GEMM FLOPs: input and hidden projections per layer and direction; training adds the
    gradient GEMMs (dW_ih, dW_hh, dx, dh): three times the forward."""
    G = GATES[cell] * H
    total = 0
    for layer in range(layers):
        I_l = I if layer == 0 else H * dirs
        total += dirs * 2 * T * B * G * (I_l + H)
    return total * (3 if training else 1)


def make_fn(module, x, training, hx=None):
    """One timed call: module(x[, hx]) under no_grad, or forward + backward of the output
    (x: [T, B, I] requiring grad; hx: initial states, as a decoder step passes them, or None)."""
    args = (x,) if hx is None else (x, hx)
    if not training:
        def fn():
            with torch.no_grad():
                module(*args)
        return fn
    xg = x.detach().requires_grad_(True)
    args = (xg,) + args[1:]

    def fn():
        out, _ = module(*args)
        out.backward(torch.ones_like(out))
    return fn


def initial_states(cell, B, H, layers, bidir, device, dtype):
    """Random initial states for the --states points: h0 ([L*D, B, H]), and c0 for LSTM."""
    h0 = torch.randn(layers * (2 if bidir else 1), B, H, device=device, dtype=dtype)
    return (h0, torch.randn_like(h0)) if cell == "LSTM" else h0


def rounds_for(min_run_time):
    """Rounds of an interleaved measurement: ~50 ms per candidate and round, at least 5. The
    shared CPU of the development VM changes speed within seconds (a 2-thread GEMM at ~240 or
    ~110 GFLOP/s); short rounds put the candidates of a round in the same state."""
    return max(5, math.ceil(min_run_time / 0.05))


def interleaved_rounds(fns, device, min_run_time, rounds=None):
    """Alternate the candidates round by round, each timed for min_run_time/rounds per round
    (warm-up excluded); returns, per candidate, the median of each round's times."""
    rounds = rounds or rounds_for(min_run_time)
    for fn in fns:  # warm-up, excluded
        fn()
    sync(device)
    per_round = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            m = tb.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()
                         ).blocked_autorange(min_run_time=min_run_time / rounds)
            per_round[i].append(m.median)
    return per_round


def interleaved_medians(fns, device, min_run_time, rounds=None):
    """Each candidate's median over the rounds of interleaved_rounds."""
    return [statistics.median(t) for t in interleaved_rounds(fns, device, min_run_time, rounds)]


def saved_bytes(fn):
    """Bytes of the unique storages autograd saves for the backward during fn's forward."""
    seen = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def cpu_peak_bytes(fn):
    """Peak bytes allocated on the CPU by fn (forward+backward) and live at once, from the
    profiler's memory timeline (allocations made during fn; frees of tensors from before it are
    not seen, so this errs high). None where torch's (private) memory timeline is missing.
    It counts allocations, not touched pages: MKL asks ~7.3 MB more than the packed weight for
    each cblas_sgemm_pack buffer (its size query, for any weight shape here), and after packing
    only about the weight's size of it is resident (mincore: 0.26 of 7.56 MB for a 256x256
    weight, 0.76 of 8.81 MB for 768x256)."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(
            torch.device("cpu"))
    except (ImportError, AttributeError, RuntimeError):
        return None
    return max((sum(s) for s in sizes), default=0)


def memory(fn, device):
    """Peak bytes allocated during fn (CUDA: the caching allocator's peak above the start;
    CPU: cpu_peak_bytes), and the bytes autograd saves for the backward (CPU only, else None)."""
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base, None
    return cpu_peak_bytes(fn), saved_bytes(fn)


def on_path(fn, path):
    """fn run with the CUDA recurrences on `path` (auto / persistent / general)."""
    def wrapped():
        fused_rnn.set_cuda_path(path)
        fn()
    return wrapped


def on_schedule(fn, schedule):
    """fn run with the CPU recurrences in `schedule` (auto / per-step / row-blocks / lanes)."""
    def wrapped():
        fused_rnn.set_cpu_schedule(schedule)
        fn()
    return wrapped


def run_point(cell, T, B, I, H, layers, bidir, dtype, device, mode, rate, min_run_time,
              paths=("auto",), schedules=("auto",), gemm=None, states=False):
    """One grid point; the fused layer is timed on each of `paths` (CUDA) or `schedules` (CPU)
    in the same interleaved run as nn.* (one row each; the row's "path" names it).
    gemm: None, or large_gemm's (function, FLOPs): then the reference GEMM is timed in the same
    interleaved rounds, and the point's GEMM share uses the rate measured there instead of
    `rate` (the shared CPU's speed drifts within a run: the share then drifts with it no more
    than the speed-up does). states: both layers are given random initial states (else None:
    zeros)."""
    torch.manual_seed(0)
    kw = dict(num_layers=layers, bidirectional=bidir, device=device, dtype=dtype)
    ref = getattr(nn, cell)(I, H, **kw)
    fused = getattr(fused_rnn, cell)(I, H, **kw)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    hx = initial_states(cell, B, H, layers, bidir, device, dtype) if states else None
    training = mode == "training"
    paths = list(paths) if device == "cuda" else list(schedules)
    fused_fn = make_fn(fused, x, training, hx)
    wrap = on_path if device == "cuda" else on_schedule
    fns = [make_fn(ref, x, training, hx)] + [wrap(fused_fn, p) for p in paths]
    saved_path, saved_schedule = fused_rnn.cuda_path(), fused_rnn.cpu_schedule()
    try:
        jiffies = cpu_jiffies()
        per_round = interleaved_rounds(fns + ([gemm[0]] if gemm else []), device, min_run_time)
        steal = steal_share(jiffies, cpu_jiffies())
        times = [statistics.median(t) for t in per_round]
        flops = cell_flops(cell, T, B, I, H, layers, 2 if bidir else 1, training)
        if gemm:
            rate = gemm[1] / times.pop()
            gemm_rounds = per_round.pop()
        t_ref = times[0]
        rows = []
        for path, fn, t_fused, fused_rounds in zip(paths, fns[1:], times[1:], per_round[1:]):
            # each round's own ratio (nn.* and fused timed back to back): their spread shows
            # how much the machine's speed moved during the point
            ratios = [a / b for a, b in zip(per_round[0], fused_rounds)]
            if gemm:  # the share of each round at that round's GEMM rate, their median
                share = statistics.median(
                    flops / (gemm[1] / g) / f for g, f in zip(gemm_rounds, fused_rounds))
            else:
                share = flops / rate / t_fused
            row = dict(cell=cell, T=T, B=B, I=I, H=H, layers=layers, bidirectional=bidir,
                       dtype=str(dtype).replace("torch.", ""), device=device, mode=mode,
                       path=path, states=bool(states), nn_ms=t_ref * 1e3, fused_ms=t_fused * 1e3,
                       speedup=t_ref / t_fused, speedup_rounds=[min(ratios), max(ratios)],
                       rounds_ms=dict(nn=[t * 1e3 for t in per_round[0]],
                                      fused=[t * 1e3 for t in fused_rounds],
                                      **({"gemm": [t * 1e3 for t in gemm_rounds]} if gemm else {})),
                       fused_us_per_step=t_fused * 1e6 / T,
                       gemm_floor_ms=flops / rate * 1e3, gemm_share=share,
                       gemm_flops_per_s=rate, gemm_rate_interleaved=gemm is not None,
                       steal=steal)
            if training:
                for side, f in (("nn", fns[0]), ("fused", fn)):
                    peak, saved = memory(f, device)
                    row[f"{side}_mem_mb"] = None if peak is None else peak / 2 ** 20
                    if saved is not None:
                        row[f"{side}_saved_mb"] = saved / 2 ** 20
            rows.append(row)
    finally:
        fused_rnn.set_cuda_path(saved_path)
        fused_rnn.set_cpu_schedule(saved_schedule)
    return rows


def memory_text(row, side):
    """'peak (saved)' MB of one side of a training row, '-' where not measured."""
    peak, saved = row.get(f"{side}_mem_mb"), row.get(f"{side}_saved_mb")
    text = "-" if peak is None else f"{peak:.1f}"
    return text if saved is None else f"{text} ({saved:.1f})"


def rounds_text(row):
    """'lo-hi' of a row's per-round speed-ups, '-' where not recorded."""
    lo_hi = row.get("speedup_rounds")
    return "-" if not lo_hi else f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}"


def steal_text(share):
    return "-" if share is None else f"{100 * share:.0f}%"


def markdown(rows, info, rates):
    """rates: {dtype name: large-GEMM FLOP/s measured at the start of this run}."""
    mem = ("peak allocated during forward+backward" if info["device"] == "cuda" else
           "peak allocated during forward+backward (the profiler's memory timeline; it counts "
           "MKL's packed-weight buffers, which ask ~7.3 MB more than the weight, of which only "
           "about the weight's size is ever written), in brackets the bytes autograd saves "
           "for the backward")
    def rate_name(d):  # float16 on the CPU is timed as a float32 GEMM (large_gemm)
        return f"{d} (a float32 GEMM)" if d == "float16" and info["device"] == "cpu" else d
    rate_text = ", ".join(f"{rate_name(d)} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items())
    point_rates = [r["gemm_flops_per_s"] for r in rows if r.get("gemm_rate_interleaved")]
    if point_rates:
        rate_text = (f"{rate_text} at the start; in each point's own interleaved rounds "
                     f"{min(point_rates) / 1e9:.0f}-{max(point_rates) / 1e9:.0f} GFLOP/s (their "
                     f"medians), and each point's GEMM share is the median over its rounds of "
                     f"the share at that round's own GEMM rate")
    head = (f"# fused_rnn benchmark ({info['device']}: {info.get('cpu') or info.get('gpu')}, "
            f"{info['threads']} threads, torch {info['torch']}, {info['date']})\n\n"
            f"Large-GEMM rate ({LARGE_GEMM_N[info['device']]}^3 torch.mm) "
            f"measured in this run: {rate_text}. Speed-up = nn.* time / "
            f"fused time. GEMM share = the cell's GEMM FLOPs at that rate / fused time. "
            f"Rounds: the range of the per-round speed-ups (nn.* and fused timed back "
            f"to back in each of the interleaved rounds; a wide range means the machine's speed "
            f"moved during the point). "
            f"Memory: {mem} (MB), training only. Steal: share of the host's CPU time taken "
            f"by the hypervisor for other guests while the point was timed (/proc/stat; a "
            f"point with more than a few percent is not to be trusted).\n")
    if any(r.get("states") for r in rows):
        head += ("\nInitial states: random h0 (and c0) given to both layers (--states), as a "
                 "decoder passes its state from step to step.\n")
    if info["device"] == "cuda":
        head += (f"\nTF32: cudnn.allow_tf32={info['cudnn_allow_tf32']}, "
                 f"cuda.matmul.allow_tf32={info['matmul_allow_tf32']}.\n")
        head += ("\nCUDA path of the fused layer: persistent = one cooperative kernel for all "
                 "steps; general = per step a cuBLAS GEMM + a pointwise kernel; auto = persistent "
                 "where the shapes suit it.\n")
    else:
        head += ("\nPath = the CPU schedule of the fused layer (fused_rnn.set_cpu_schedule): "
                 "per-step = each step spread over all threads; row-blocks = each thread runs "
                 "every step for its own batch rows; lanes = each thread owns a slice of the "
                 "hidden units and its part of W_hh, one barrier per step; auto = lanes at "
                 "batch sizes up to 1-16 by hidden size (float32), row blocks where "
                 "measured faster, else per-step.\n")
    lines = [head, "| cell | mode | path | T | B | I | H | L | bi | dtype | nn.* ms | fused ms "
             "| speed-up | rounds | µs/step | GEMM floor ms | GEMM share | nn.* MB | fused MB | steal |",
             "|" + "---|" * 20]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r.get('path', '-')} | {r['T']} | {r['B']} | {r['I']} "
            f"| {r['H']} | {r['layers']} "
            f"| {'y' if r['bidirectional'] else 'n'} | {r['dtype']} | {r['nn_ms']:.2f} | {r['fused_ms']:.2f} "
            f"| {r['speedup']:.2f}x | {rounds_text(r)} | {r['fused_us_per_step']:.0f} | {r['gemm_floor_ms']:.2f} "
            f"| {100 * r['gemm_share']:.0f}% | {memory_text(r, 'nn')} | {memory_text(r, 'fused')} "
            f"| {steal_text(r.get('steal'))} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    train = [r for r in rows if r["mode"] == "training" and r["layers"] == 1
             and not r["bidirectional"] and r.get("path", "-") in ("-", "auto")]
    for ax, x_key in zip(axes, ["H", "B"]):
        fixed_keys = [k for k in ("T", "B", "H") if k != x_key]
        for cell, dtype in sorted({(r["cell"], r["dtype"]) for r in train},
                                  key=lambda cd: (list(GATES).index(cd[0]), cd[1])):
            # one line per cell and dtype: the rows alike in all but x_key with the most points
            lines = {}
            for r in train:
                if (r["cell"], r["dtype"]) == (cell, dtype):
                    lines.setdefault(tuple(r[k] for k in fixed_keys), []).append(r)
            fixed, sel = max(lines.items(), key=lambda kv: len({r[x_key] for r in kv[1]}))
            sel = sorted(sel, key=lambda r: r[x_key])
            label = ", ".join(f"{k}={v}" for k, v in zip(fixed_keys, fixed))
            ax.plot([r[x_key] for r in sel], [r["speedup"] for r in sel], marker="o",
                    label=f"{cell} {dtype} ({label})")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel({"H": "hidden size", "B": "batch size"}[x_key])
        ax.set_ylabel("speed-up vs nn.* (training)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def isa_comparison(min_run_time, T=35, B=32, H=256):
    """Fused forward+backward with each CPU kernel build (portable DEFAULT, AVX2, AVX512) at one
    point: what vectorising the step kernels gives end to end."""
    lines = [f"Fused forward+backward by CPU kernel build (T={T}, B={B}, I=H={H}, float32):", "",
             "| cell | build | fused (ms) | vs DEFAULT |", "|---|---|---|---|"]
    active = fused_rnn.cpu_isa()
    try:
        for cell in GATES:
            torch.manual_seed(0)
            module = getattr(fused_rnn, cell)(H, H)
            fn = make_fn(module, torch.randn(T, B, H), training=True)
            base = None
            for isa in fused_rnn.available_cpu_isas():
                fused_rnn.set_cpu_isa(isa)
                (t,) = interleaved_medians([fn], "cpu", min_run_time)
                base = base or t
                lines.append(f"| {cell} | {isa} | {t * 1e3:.2f} | {base / t:.2f}x |")
    finally:
        fused_rnn.set_cpu_isa(active)
    return "\n".join(lines) + "\n"


def cuda_context_lost():
    """Whether CUDA was started in this process and no longer runs work: after an error, whether
    it was a sticky one (an illegal address, a kernel's trap), after which every CUDA call of the
    process fails (persistent_sweep.py, tests/cuda_context_guard.py)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return False
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).cpu()
        return False
    except RuntimeError:
        return True


def write_results(md_path, md, json_path=None, data=None):
    """The run's markdown and JSON, each where a path was given (bench.py, persistent_sweep.py,
    cpu_profile.py)."""
    if md_path:
        with open(md_path, "w") as f:
            f.write(md)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small grid (default)")
    g.add_argument("--full", action="store_true",
                   help="full grid (CPU: lines through T=35 B=32 H=256; CUDA: issue 7's grid)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", nargs="+", default=["float32"],
                    choices=["float32", "float64", "bfloat16", "float16"])
    ap.add_argument("--cells", nargs="+", default=None, choices=list(GATES))
    ap.add_argument("--T", nargs="+", type=int, default=None, help="override the grid's sequence lengths")
    ap.add_argument("--B", nargs="+", type=int, default=None, help="override the grid's batch sizes")
    ap.add_argument("--H", nargs="+", type=int, default=None, help="override the grid's hidden sizes")
    ap.add_argument("--modes", nargs="+", default=None, choices=["inference", "training"])
    ap.add_argument("--cuda-path", nargs="+", default=["auto"],
                    choices=["auto", "persistent", "general"],
                    help="CUDA: time the fused layer on each of these paths (one row each)")
    ap.add_argument("--cpu-schedule", nargs="+", default=["auto"],
                    choices=["auto", "per-step", "row-blocks", "lanes"],
                    help="CPU: time the fused layer in each of these schedules (one row each)")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--states", action="store_true",
                    help="give both layers random initial states (h0, and c0 for LSTM), as a "
                         "step-by-step decoder does (default: none, i.e. zeros)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--plot", default=None, help="PNG path (needs matplotlib)")
    ap.add_argument("--isa", action="store_true",
                    help="only compare the CPU kernel builds (DEFAULT / AVX2 / AVX512)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.isa:
        print(isa_comparison(args.min_run_time or 1.0))
        return []
    grid = (FULL if args.device == "cpu" else GPU_FULL) if args.full else QUICK
    points = grid_points(grid, **{k: getattr(args, k) for k in ("cells", "T", "B", "H", "modes")})
    min_run_time = args.min_run_time or (0.15 if not args.full else 0.5)
    info = machine_info(args.device)
    references = {d: large_gemm(args.device, getattr(torch, d)) for d in args.dtype}
    rates = {d: gemm_rate(*ref, 1.0) for d, ref in references.items()}
    # On the CPU the reference GEMM is timed again inside every point's interleaved rounds
    # (about half a second a point here); the GPU's speed holds within a run.
    gemms = references if args.device == "cpu" else {}
    rows = []
    start = time.time()
    for dtype_name, (cell, T, B, H, layers, bidir, mode) in itertools.product(args.dtype, points):
        for r in run_point(cell, T, B, H, H, layers, bidir, getattr(torch, dtype_name),
                           args.device, mode, rates[dtype_name], min_run_time, args.cuda_path,
                           args.cpu_schedule, gemms.get(dtype_name), args.states):
            rows.append(r)
            print(f"{cell:4s} {dtype_name} {mode:9s} {r['path']:10s} T={T} B={B:<3d} H={H:<4d} "
                  f"L={layers} bi={int(bidir)}: nn {r['nn_ms']:8.2f} ms, fused "
                  f"{r['fused_ms']:8.2f} ms, x{r['speedup']:.2f}, "
                  f"GEMM share {100 * r['gemm_share']:.0f}%", flush=True)
    info["seconds"] = round(time.time() - start, 1)
    md = markdown(rows, info, rates)
    print()
    print(md)
    write_results(args.md, md, args.json, dict(machine=info, gemm_flops_per_s=rates, results=rows))
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
