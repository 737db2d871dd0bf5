"""Tuning sweep of the persistent CUDA kernels (issue 7): variants of the per-step barrier
(FUSED_RNN_PERSISTENT_BARRIER=grid|cluster|tagged; cluster: independent 8-block thread-block
clusters, each with a share of the batch rows, exchanging h / d_gates through L2 or distributed
shared memory: FUSED_RNN_PERSISTENT_EXCHANGE=l2|dsmem; tagged: no barrier, the rows travel as
words tagged with their step, polled by the next staging), of the products (FUSED_RNN_PERSISTENT_PRODUCT=
fma|mma: CUDA cores or tensor cores) and of the staging of h / d_gates rows
(FUSED_RNN_PERSISTENT_STAGING=loads|async|shared; shared: each row read from L2 by one block of
an 8-block cluster and stored into all 8, version 5; splitN: the split reduction,
FUSED_RNN_PERSISTENT_SPLIT=N, each block of an N-block cluster stages and multiplies 1/N of each
row for the cluster's units, version 6) timed in ONE interleaved run with nn.* on cuDNN
(PyTorch's TF32 defaults, stated; the tensor-core variants run float32 as tf32, with
torch.backends.cuda.matmul.allow_tf32 on while they run), so the variants compare on the same
card in the same minute; --all-variants adds the counter barrier and more hidden units per block
(FUSED_RNN_PERSISTENT_UNITS), measured in runs 4-6. Then the phase clock of the point
(FUSED_RNN_PERSISTENT_PROFILE=1: where a step's time goes, forward and backward kernels, per
variant). Point by point, most telling first; the markdown tables (µs per step, speed-up vs nn.*;
phases) and the JSON are rewritten after every point, and --budget-s stops before a point that
would not end in time, so a run cut short keeps what it measured. A variant that leaves the
CUDA context unusable (a sticky error: an illegal address, a kernel's trap) ends the process with
status 75 after writing what it has; run it again with --resume (gpu_check.sh does) and it goes
on from the JSON in a new process without that variant.

  python benchmarks/persistent_sweep.py --budget-s 180 --json sweep.json --md sweep.md
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (cuda_context_lost, interleaved_medians, machine_info, make_fn,  # noqa: E402
                   write_results)

import fused_rnn  # noqa: E402

# (cell, B, H, dtype), most telling first (a sweep cut short by --budget-s keeps the first):
# issue 7's 2 µs/step point, the latency floor at B=1, the tensor-core shapes at H=1024, LSTM
POINTS = [("GRU", 32, 256, "float32"), ("GRU", 1, 256, "float32"), ("GRU", 64, 1024, "float32"),
          ("LSTM", 32, 1024, "float32"), ("GRU", 32, 512, "bfloat16"),
          ("GRU", 32, 256, "bfloat16"), ("GRU", 64, 256, "float32"), ("LSTM", 1, 256, "float32"),
          ("GRU", 32, 1024, "float32"), ("GRU", 64, 1024, "bfloat16"),
          ("LSTM", 32, 256, "float32")]
# more units per block than the kernel's own choice (ceil(H / #SMs)), per H
UNITS = {256: [4, 8], 512: [8], 1024: [12]}
# (barrier, units, product, staging, exchange); units None: the kernel's own choice
DEFAULT = ("grid", None, "fma", "loads", "l2")
# (the counter barrier and more units per block: measured in runs 4-6, no gain; --all-variants)
VARIANTS = [DEFAULT, ("grid", None, "fma", "async", "l2"), ("grid", None, "fma", "shared", "l2"),
            ("grid", None, "mma", "loads", "l2"), ("grid", None, "mma", "async", "l2"),
            ("grid", None, "mma", "shared", "l2"),
            ("grid", None, "fma", "split8", "l2"), ("grid", None, "mma", "split8", "l2"),
            ("grid", None, "mma", "split4", "l2"),
            ("tagged", None, "fma", "loads", "l2"), ("tagged", None, "mma", "loads", "l2"),
            ("cluster", None, "fma", "loads", "l2"), ("cluster", None, "fma", "loads", "dsmem"),
            ("cluster", None, "mma", "async", "l2"), ("cluster", None, "mma", "async", "dsmem")]
# (barrier, product, staging, exchange) of the phase clocks
PROFILED = [("grid", "fma", "loads", "l2"), ("grid", "fma", "async", "l2"),
            ("grid", "fma", "shared", "l2"), ("grid", "mma", "loads", "l2"),
            ("grid", "mma", "async", "l2"), ("grid", "mma", "shared", "l2"),
            ("grid", "fma", "split8", "l2"), ("grid", "mma", "split8", "l2"),
            ("tagged", "fma", "loads", "l2"), ("tagged", "mma", "loads", "l2"),
            ("cluster", "fma", "loads", "l2"), ("cluster", "fma", "loads", "dsmem"),
            ("cluster", "mma", "async", "dsmem")]
STAGED_BY = ["loads", "async", "shared"]  # the profile's element 14
MEASURED = [("counter", None, "fma", "loads", "l2")]
ENV = ["FUSED_RNN_PERSISTENT_BARRIER", "FUSED_RNN_PERSISTENT_UNITS",
       "FUSED_RNN_PERSISTENT_PRODUCT", "FUSED_RNN_PERSISTENT_STAGING",
       "FUSED_RNN_PERSISTENT_EXCHANGE", "FUSED_RNN_PERSISTENT_SPLIT"]


def set_tuning(barrier, units, product, staging, exchange):
    """The persistent kernels' settings (read at every launch); float32 runs as tf32 on the tensor
    cores only while torch allows TF32 in float32 matrix products. staging "splitN": the loads
    with the split reduction over clusters of N blocks (FUSED_RNN_PERSISTENT_SPLIT=N)."""
    split = None
    if staging is not None and staging.startswith("split"):
        staging, split = "loads", staging[len("split"):]
    for name, value in zip(ENV, (barrier, units, product, staging, exchange, split)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    torch.backends.cuda.matmul.allow_tf32 = product == "mma"


def clear_tuning():
    for name in ENV:
        os.environ.pop(name, None)
    torch.backends.cuda.matmul.allow_tf32 = False


def with_tuning(fn, variant):
    def wrapped():
        set_tuning(*variant)
        fn()
    return wrapped


PHASES = ["staging", "product", "pointwise", "step barrier"]


def profile_row(p, cell, B, H, dtype, T, backward):
    """One launch's record (fused_rnn._C._persistent_profile, see csrc/cuda/cuda_kernels.h) as a
    row: µs per step of each phase, and what ran (products, staging, clusters, exchange)."""
    cyc = p[:5]  # 4 phases, then the whole loop
    ns_per_cycle = p[5] / cyc[4]
    steps = p[6]
    return dict(cell=cell, B=B, H=H, dtype=str(dtype).replace("torch.", ""), T=T,
                kernel="backward" if backward else "forward",
                products_on="mma" if p[13] else "fma",  # ("product", "staging": phases)
                staged_by=STAGED_BY[p[14]], cluster=p[15], group_rows=p[16],
                exchange="dsmem" if p[17] else "l2", shared_by=p[18], tagged=bool(p[19]),
                split_by=p[20] if len(p) > 20 else 0,
                blocks=p[9], units=p[10],
                staged_rows=p[11], clock_ghz=1 / ns_per_cycle,
                **{ph: c * ns_per_cycle / 1e3 / steps for ph, c in zip(PHASES, cyc)},
                total_us_per_step=p[5] / 1e3 / steps)


def phase_profile(cell, B, H, dtype, T, barrier, product, staging, exchange):
    """µs per step of each phase of the forward and the backward kernel (block 0's clock)."""
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(H, H, device="cuda", dtype=dtype)
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
    set_tuning(barrier, None, product, staging, exchange)
    out = []
    for _ in range(2):  # the first run warms up
        os.environ["FUSED_RNN_PERSISTENT_PROFILE"] = "1"
        try:
            y, _ = m(x)
            y.backward(torch.ones_like(y))
            torch.cuda.synchronize()
        finally:
            os.environ.pop("FUSED_RNN_PERSISTENT_PROFILE", None)
    for backward in (False, True):
        p = fused_rnn._C._persistent_profile(backward)
        if p:
            out.append(profile_row(p, cell, B, H, dtype, T, backward))
    return out


def report(info, T, rows, profiles, failed=()):
    """The sweep's markdown: the timings (rows of main), then the phase clocks (profile_row),
    then the variants that did not run (runs)."""
    lines = [f"# Persistent-kernel tuning sweep ({info['gpu']}, torch {info['torch']}, "
             f"{info['date']})", "",
             f"T={T}, input size = hidden size, 1 layer, medians of interleaved "
             f"torch.utils.benchmark runs. nn.* on cuDNN: cudnn.allow_tf32="
             f"{info['cudnn_allow_tf32']}. units: hidden units per block ('auto': "
             f"ceil(H / #SMs)). product: fma (CUDA cores) or mma (tensor cores; float32 as tf32, "
             f"matmul.allow_tf32 on while it runs); staging: loads, async (cp.async) or shared "
             f"(each row read from L2 by one block of a cluster and stored into all its blocks; "
             f"in the grid modes clusters of 8) or splitN (the split reduction: each block of an "
             f"N-block cluster stages and multiplies 1/N of each row for the cluster's units, "
             f"whose partial sums the owning block adds up); barrier tagged: none, the rows "
             f"travel as words "
             f"tagged with their step and the staging polls them (staged by: tagged). The "
             f"profile table says which product and barrier ran (mma falls back to CUDA cores "
             f"where its layout does not fit, cluster mode to the grid barrier where no cluster "
             f"holds W_hh; clusters: blocks per cluster x batch rows per cluster, - for one "
             f"grid; staged by: shared / n, n blocks share each row; split / n, n blocks split "
             f"each row).", "",
             "| cell | mode | B | H | dtype | barrier | units | product | staging | exchange "
             "| nn.* ms | fused ms | µs/step | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['mode']} | {r['B']} | {r['H']} | {r['dtype']} | "
                     f"{r['barrier']} | {r['units']} | {r['product']} | {r['staging']} | "
                     f"{r['exchange']} | "
                     f"{r['nn_ms']:.2f} | {r['fused_ms']:.2f} | "
                     f"{r['us_per_step']:.2f} | {r['speedup']:.2f}x |")
    lines += ["", "Phase clock (FUSED_RNN_PERSISTENT_PROFILE=1): thread 0 of block 0 sums "
              "clock64() per phase over all steps; µs per step at the clock measured over the loop "
              "(%globaltimer). The pointwise phase ends with an extra block barrier while "
              "profiling; the step barrier includes waiting for the slowest block.", "",
              "| cell | kernel | B | H | dtype | products | staged by | clusters | blocks x units "
              "| staged rows | " + " | ".join(PHASES) + " | total µs/step | clock GHz |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in profiles:
        clusters = (f"{r['cluster']} x {r['group_rows']} {r['exchange']}" if r["cluster"]
                    else "-")
        lines.append(f"| {r['cell']} | {r['kernel']} | {r['B']} | {r['H']} | {r['dtype']} | "
                     f"{r['products_on']} | {staged_by(r)} | {clusters} | "
                     f"{r['blocks']} x {r['units']} | {r['staged_rows']} | "
                     + " | ".join(f"{r[ph]:.2f}" for ph in PHASES)
                     + f" | {r['total_us_per_step']:.2f} | {r['clock_ghz']:.2f} |")
    if failed:
        lines += ["", "Did not run (left out of the timings above):", ""]
        lines += [f"- {f['point']}, {f['variant']}: {f['error']}" for f in failed]
    return "\n".join(lines) + "\n"


def staged_by(r):
    """How a profiled launch staged its rows: loads, async, shared / blocks sharing each, split /
    blocks splitting the reduction (each stages its share of each row), or tagged (polled tagged
    words, no step barrier)."""
    if r["tagged"]:
        return "tagged"
    if r.get("split_by"):
        return f"split / {r['split_by']}"
    return f"shared / {r['shared_by']}" if r["staged_by"] == "shared" else r["staged_by"]


def sweep_points(points, measure, budget_s=None, clock=None, done=lambda: None):
    """measure(point) for each point in order, done() after each; with a budget, no point is
    started that would end past it (judged by the longest point so far). Returns the points
    left out. clock: seconds (time.monotonic)."""
    clock = clock or time.monotonic
    start, longest = clock(), 0.0
    for i, point in enumerate(points):
        elapsed = clock() - start
        if budget_s is not None and i > 0 and elapsed + longest > budget_s:
            return points[i:]
        measure(point)
        done()
        longest = max(longest, clock() - start - elapsed)
    return []


# The exit status of a sweep whose CUDA context was lost: gpu_check.sh runs it again with
# --resume, in a new process, without the variant that lost it.
RESTART_EXIT = 75
MAX_RESTARTS = 6


class ContextLost(RuntimeError):
    """A variant left this process's CUDA context unusable (an illegal address, a kernel's trap:
    sticky errors, after which every CUDA call of the process fails): the sweep writes what it
    has and goes on in a new process (--resume) without the variant ("all": the point itself)."""

    def __init__(self, where, variant, error):
        super().__init__(f"{where} {variant}: {error}")
        self.where, self.variant, self.error = where, variant, error


def variant_name(variant):
    return "/".join(str(v) for v in variant)


def runs(fn, variant, where, failed):
    """fn runs once under the variant's settings; a RuntimeError (a launch the device refuses, a
    setting it cannot run) goes into `failed` and the sweep goes on without the variant; one
    that leaves the CUDA context unusable raises ContextLost."""
    try:
        with_tuning(fn, variant)()
        torch.cuda.synchronize()
        return True
    except RuntimeError as e:
        print(f"{where} {variant}: {e}", flush=True)
        error = str(e).splitlines()[0]
        if cuda_context_lost():
            raise ContextLost(where, variant_name(variant), error) from e
        failed.append(dict(point=where, variant=variant_name(variant), error=error))
        return False
    finally:
        clear_tuning()


def time_point(point, args, rows, failed):
    """The variants of one point against nn.*, interleaved, inference and training: into rows
    (variants that do not run: into failed)."""
    cell, B, H, dtype_name = point
    dtype = getattr(torch, dtype_name)
    for mode in args.modes:
        torch.manual_seed(0)
        ref = getattr(torch.nn, cell)(H, H, device="cuda", dtype=dtype)
        fused = getattr(fused_rnn, cell)(H, H, device="cuda", dtype=dtype)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(args.T, B, H, device="cuda", dtype=dtype)
        training = mode == "training"
        variants = list(VARIANTS)
        if args.all_variants:
            variants += MEASURED + [("grid", u, "fma", "loads", "l2") for u in UNITS.get(H, [])]
        variants = [v for v in variants if variant_name(v) not in args.exclude]
        fused_fn = make_fn(fused, x, training)
        where = f"{cell} B={B} H={H} {dtype_name} {mode}"
        variants = [v for v in variants if runs(fused_fn, v, where, failed)]
        # nn.* at PyTorch's defaults (no FUSED_RNN_PERSISTENT_*, matmul.allow_tf32 off)
        fns = [with_tuning(make_fn(ref, x, training), DEFAULT)]
        fns += [with_tuning(fused_fn, v) for v in variants]
        try:
            times = interleaved_medians(fns, "cuda", args.min_run_time)
        except RuntimeError as e:  # should not happen: every variant ran once above
            print(f"{where}: {e}", flush=True)
            error = str(e).splitlines()[0]
            if cuda_context_lost():  # which variant is not known: the point is left out
                raise ContextLost(where, "all", error) from e
            failed.append(dict(point=where, variant="all", error=error))
            continue
        finally:
            clear_tuning()
        for (barrier, units, product, staging, exchange), t in zip(variants, times[1:]):
            rows.append(dict(cell=cell, B=B, H=H, T=args.T, dtype=dtype_name, mode=mode,
                             barrier=barrier, units=units or "auto", product=product,
                             staging=staging, exchange=exchange, nn_ms=times[0] * 1e3,
                             fused_ms=t * 1e3, us_per_step=t * 1e6 / args.T,
                             speedup=times[0] / t))
            r = rows[-1]
            print(f"{cell} {mode} B={B} H={H} {dtype_name} barrier={barrier} "
                  f"units={r['units']} {product} {staging} {exchange}: "
                  f"{r['us_per_step']:.2f} us/step, "
                  f"{r['speedup']:.2f}x nn.*", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--min-run-time", type=float, default=0.1)
    ap.add_argument("--modes", nargs="+", default=["inference", "training"])
    ap.add_argument("--all-variants", action="store_true",
                    help="also the counter barrier and more units per block (runs 4-6: no gain)")
    ap.add_argument("--budget-s", type=float,
                    help="start no point that would end after this many seconds (the results "
                         "so far are written after every point)")
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--exclude", nargs="+", default=[],
                    help="variants left out, as barrier/units/product/staging/exchange (e.g. "
                         "tagged/None/fma/loads/l2), or profile:barrier/product/staging/exchange")
    ap.add_argument("--resume", action="store_true",
                    help="go on from the --json file of a sweep that exited with status "
                         f"{RESTART_EXIT} (its CUDA context lost): the points it finished kept, "
                         "the variant that lost it left out")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("persistent_sweep.py needs a CUDA device")
    if args.resume and not args.json:
        sys.exit("persistent_sweep.py: --resume needs the --json file of the sweep to go on from")
    fused_rnn.set_cuda_path("persistent")
    info = machine_info("cuda")
    # done: the points finished (or left out after a lost context), as lists; restarts: the
    # processes started after a lost context so far
    state = dict(rows=[], profiles=[], failed=[], excluded=list(args.exclude), done=[],
                 restarts=0)
    if args.resume:
        with open(args.json) as f:
            saved = json.load(f)
        state.update({k: saved[k] for k in state if k in saved})
        state["excluded"] = sorted(set(state["excluded"]) | set(args.exclude))
    args.exclude = state["excluded"]
    rows, profiles, failed = state["rows"], state["profiles"], state["failed"]

    def measure(point):  # the timings, then the phase clocks of the point
        kept = len(rows), len(profiles), len(failed)
        try:
            time_point(point, args, rows, failed)
            cell, B, H, dtype_name = point
            where = f"{cell} B={B} H={H} {dtype_name} profile"
            for barrier, product, staging, exchange in PROFILED:
                settings = f"{barrier}/{product}/{staging}/{exchange}"
                name = "profile:" + settings
                timed = variant_name((barrier, None, product, staging, exchange))
                if name in args.exclude or timed in args.exclude:  # (its timing lost the context)
                    continue
                try:
                    profiles.extend(phase_profile(cell, B, H, getattr(torch, dtype_name), args.T,
                                                  barrier, product, staging, exchange))
                except RuntimeError as e:
                    error = str(e).splitlines()[0]
                    if cuda_context_lost():
                        raise ContextLost(where, name, error) from e
                    failed.append(dict(point=where, variant=settings, error=error))
                finally:
                    clear_tuning()
        except ContextLost as e:
            # the point's results so far are dropped (it runs again, without the variant)
            del rows[kept[0]:], profiles[kept[1]:], failed[kept[2]:]
            failed.append(dict(point=e.where, variant=e.variant,
                               error=f"CUDA context lost ({e.error}); left out, the sweep went "
                                     "on in a new process"))
            if e.variant == "all":
                state["done"].append(list(point))
            else:
                state["excluded"].append(e.variant)
            state["restarts"] += 1
            write()
            if not args.json or state["restarts"] > MAX_RESTARTS:
                sys.exit(f"persistent_sweep.py: CUDA context lost ({e}); "
                         + ("no --json to go on from" if not args.json
                            else f"{MAX_RESTARTS} restarts already"))
            print(f"CUDA context lost ({e}): exiting with {RESTART_EXIT} to go on with --resume",
                  flush=True)
            sys.exit(RESTART_EXIT)
        state["done"].append(list(point))

    def write(text=None, **extra):
        text = text or report(info, args.T, rows, profiles, failed)
        write_results(args.md, text, args.json, dict(machine=info, **state, **extra))

    points = [p for p in POINTS if list(p) not in state["done"]]
    left = sweep_points(points, measure, args.budget_s, done=write)
    text = report(info, args.T, rows, profiles, failed)
    if left:
        text += ("\nStopped at the time budget (--budget-s " + f"{args.budget_s:g}" + "): not run: "
                 + ", ".join(f"{c} B={b} H={h} {d}" for c, b, h, d in left) + ".\n")
    print(text)
    write(text, not_run=left)


if __name__ == "__main__":
    main()
