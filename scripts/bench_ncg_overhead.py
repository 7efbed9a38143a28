"""The per-iteration overhead of Chapter 3's NCG (labkit.snode.ncg_train), side by side.

    python scripts/bench_ncg_overhead.py [--dim 16] [--steps 150] [--batch 4] [--iterations 30]
                                         [--device cpu] [--json book/data/bench_ncg_overhead.json]

At a tiny size (by default d = 16, N = 150 Euler steps, a batch of 4) the arithmetic of an NCG
iteration is negligible and its time is the cost of launching operators one by one from Python.
Both implementations run here on the same network and batch, in one process:

* ``reference``: the iteration composed of the reference functions of ``labkit.snode`` (an adjoint
  sweep, a Thomas solve per tensor, a second forward for the sensitivity, Python floats for β and η),
  as ``ncg_train`` computed it before ``labkit._ncg``;
* ``batched``: the iteration of ``labkit._ncg`` that ``ncg_train`` uses now.

For each: the median time of an iteration (after a warm-up, over ``--iterations`` Sobolev NCG
iterations with Fletcher–Reeves β, the first of every six a restart), and the number of operator
calls per iteration that ``torch.profiler`` records (every ``aten::`` call, nested ones included).
The two end on the same weights up to rounding; the largest relative difference is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def _iteration(kind, model, x0, y):
    """A function ``one(j)`` that runs NCG iteration ``j`` (a restart every sixth) of ``kind`` on ``model``."""
    from labkit import _ncg, snode

    if kind == "reference":
        memory = {}

        def one(j):
            if j % 6 == 0:
                memory.clear()
            snode.reference_iteration(model, x0, y, memory, beta="fletcher-reeves", sobolev=True)

        return one
    state = _ncg.State(model.W.data.unsqueeze(0), model.b.data.unsqueeze(0))
    batch = _ncg.Batch(
        x0[None],
        y[None],
        h=model.h,
        sigma=model.sigma,
        dsigma=model.dsigma,
        loss=model.loss_kind,
        classes=model.classes,
        T=model.T,
    )
    M = _ncg.sobolev_matrix(model.steps, model.T, dtype=model.W.dtype, device=model.W.device)

    def one(j):
        _ncg.iteration(
            state, batch, M=M, mask=None, rule="fletcher-reeves", restart=j % 6 == 0, weight_decay=0.0, trust=1.0
        )

    return one


def _measure(runs, iterations, sync):
    """Median seconds per iteration of each of ``runs`` (``{kind: one}``), the kinds taking turns
    iteration by iteration (so that a change of the machine's load hits both alike), and the
    ``aten::`` operator calls per iteration under ``torch.profiler``."""
    import torch

    times = {kind: [] for kind in runs}
    with torch.no_grad():
        for j in range(iterations):
            for kind, one in runs.items():
                sync()
                t0 = time.perf_counter()
                one(j)
                sync()
                times[kind].append(time.perf_counter() - t0)
        calls = {}
        for kind, one in runs.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for j in range(6):
                    one(iterations + j)
            calls[kind] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / 6
    return {kind: (statistics.median(t[2:]), calls[kind]) for kind, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if min(args.dim, args.steps, args.batch) < 1 or args.iterations < 4:
        parser.error("every size must be at least 1, and --iterations at least 4")
    if args.json is not None:
        from labkit._validate import writable

        writable(args.json, "--json")
    import torch

    from labkit import seed_everything, snode
    from labkit.experiment import environment, save_record

    seed_everything(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    g = torch.Generator().manual_seed(0)
    x0 = -torch.rand(args.batch, args.dim, generator=g).to(device)
    y = torch.randint(0, min(10, args.dim), (args.batch,), generator=g).to(device)
    t_all = time.perf_counter()
    models = {
        kind: snode.SNODE(
            args.dim, T=3.0, steps=args.steps, classes=min(10, args.dim), generator=torch.Generator().manual_seed(0)
        ).to(device)
        for kind in ("reference", "batched")
    }
    measured = _measure({k: _iteration(k, m, x0, y) for k, m in models.items()}, args.iterations, sync)
    rows, weights = [], {k: m.W.detach() for k, m in models.items()}
    for kind, (seconds, calls) in measured.items():
        rows.append({"what": kind, "seconds_per_iteration": seconds, "operator_calls_per_iteration": calls})
        print(f"{kind:>10}: {1e3 * seconds:8.2f} ms per iteration, {calls:8.0f} operator calls per iteration")
    diff = float((weights["batched"] - weights["reference"]).norm() / weights["reference"].norm())
    ref, new = rows
    ratios = {
        "time_ratio": ref["seconds_per_iteration"] / new["seconds_per_iteration"],
        "calls_ratio": ref["operator_calls_per_iteration"] / new["operator_calls_per_iteration"],
        "relative_difference": diff,
    }
    print(
        f"reference / batched: {ratios['time_ratio']:.1f}× the time, {ratios['calls_ratio']:.1f}× the operator "
        f"calls; weights differ by {diff:.1e} (relative) after {args.iterations + 6} iterations"
    )
    if args.json:
        sizes = {"dim": args.dim, "steps": args.steps, "batch": args.batch, "iterations": args.iterations}
        save_record(
            args.json,
            rows,
            mode="benchmark",
            seconds=time.perf_counter() - t_all,
            env=environment(device),
            sizes=sizes,
            extra=ratios,
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
