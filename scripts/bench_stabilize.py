"""Time labkit.lognorm.stabilize against scipy's SLSQP on the same problem (Chapter 1).

    python scripts/bench_stabilize.py [--sizes 16 32 64 128] [--delta 0.5] [--budget 600]
                                      [--stabilize-budget 3600] [--json results.json] [--progress]
                                      [--checkpoint-dir DIR] [--rel-tol 1e-3 [1e-3 ...]]

For each n: a random A (seed 0, entries N(0, 1/n) so μ* stays of order one), tanh slopes.
stabilize runs first, in a child process stopped after --stabilize-budget seconds. SLSQP gets the
same constraints: all 2ⁿ vertices where n ≤ 10, otherwise the final working set of stabilize (the
vertices that the cutting planes found), and runs in a child process stopped after --budget
seconds. With --json the rows are saved as a record (labkit.experiment.save_record) that
Chapter 1 shows. Prints both times and both ‖Δ‖_F, stabilize's certified lower bound on the optimal
‖Δ‖_F, and the worst-case μ* of each result (exact by enumeration for n ≤ 16, the vertex fixed
point with restarts beyond, where it is a lower estimate). --progress shows stabilize's bar over its
cutting-plane rounds (on stderr; the table goes to stdout).

--rel-tol is stabilize's relative tolerance, one value for all sizes or one per size: the answer is
within it of the certified lower bound (default 1e-3, stabilize's default). The column "end" says
how stabilize stopped: "clean" when the final check found no violated vertex, "repair" when the end
game's uniform repair was within rel_tol first (Chapter 1, *The tail of the cutting planes*).

With --checkpoint-dir, stabilize saves its state after every round (stabilize(checkpoint=...)), so
a size that runs out of its budget is resumed where it stopped by the same command later: at
n = 128 a run takes hours on two cores. Its time is then the compute time of all segments
together, and an unfinished size reports how far it got (rounds, |W|, the bracket on ‖Δ‖_F).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path
from queue import Empty

import torch

from labkit import lognorm as ln
from labkit.chapters import ch01
from labkit.experiment import environment, save_record


def _checkpoint(directory, n, delta, rel_tol):
    return None if directory is None else Path(directory) / f"stabilize_n{n}_delta{delta:g}_rtol{rel_tol:g}.pt"


def _ours(n, delta, rel_tol, progress, checkpoint, queue):
    resumed = 0
    if checkpoint is not None and checkpoint.exists():
        resumed = ln.StabilizeState.read(checkpoint).round
    res = ln.stabilize(
        ch01.bench_matrix(n),
        delta,
        "tanh",
        rel_tol=rel_tol,
        generator=torch.Generator().manual_seed(0),
        progress=progress,
        checkpoint=checkpoint,
    )
    queue.put(
        {
            "seconds": res.seconds,
            "norm": res.norm,
            "lower_bound": res.norm_lower_bound,
            "mu": res.mu_after,
            "rounds": res.rounds,
            "working_set": res.working_set,
            "converged": res.converged,
            "repaired": res.repaired,
            "resumed_from_round": resumed,
            "vertices": res.vertices.tolist(),
        }
    )


def _unfinished(checkpoint):
    """How far an interrupted run got, from its checkpoint (None without one)."""
    if checkpoint is None or not checkpoint.exists():
        return None
    state = ln.StabilizeState.read(checkpoint)
    return {
        "seconds": state.seconds,
        "rounds": state.round,
        "working_set": int(state.ds.shape[0]),
        "upper": state.eps_hi,
        "lower_bound": state.certified,
        "checkpoint": str(checkpoint),
    }


def _slsqp(n, delta, vertices, queue):
    A = ch01.bench_matrix(n)
    t0 = time.perf_counter()
    D, norm = ln.stabilize_slsqp(A, delta, "tanh", vertices=vertices, restarts=1)
    seconds = time.perf_counter() - t0
    mu = (
        float("nan")
        if D is None
        else ln.worst_case_lognorm(A + D, "tanh", generator=torch.Generator().manual_seed(0))[0]
    )
    queue.put({"seconds": seconds, "norm": norm, "mu": mu})


def _run(target, args, budget):
    """Run target(*args, queue) in a child process; its result, or None past the budget. A child
    that dies without a result (its traceback is on stderr) stops the benchmark at once."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    deadline = time.monotonic() + budget
    try:
        while True:
            try:
                return queue.get(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
            except Empty:
                if time.monotonic() >= deadline:
                    return None
                if not proc.is_alive() and queue.empty():
                    raise SystemExit(
                        f"{target.__name__.strip('_')} failed for {args[0]} (exit code {proc.exitcode})"
                    ) from None
    finally:
        proc.terminate()
        proc.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--delta", type=float, default=0.5)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for SLSQP per size")
    parser.add_argument("--stabilize-budget", type=float, default=3600.0, help="seconds for stabilize per size")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--progress", action="store_true", help="show stabilize's progress bar (stderr)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="save stabilize's state after every round here and resume from it"
    )
    parser.add_argument(
        "--rel-tol", type=float, nargs="+", default=[1e-3], help="stabilize's rel_tol: one value, or one per size"
    )
    args = parser.parse_args()
    if len(args.rel_tol) not in (1, len(args.sizes)) or min(args.rel_tol) <= 0:
        parser.error(f"--rel-tol takes one positive value or one per size ({len(args.sizes)}), got {args.rel_tol}")
    rel_tols = args.rel_tol * len(args.sizes) if len(args.rel_tol) == 1 else args.rel_tol
    print(
        f"{'n':>4} {'rel_tol':>7} {'stabilize s':>12} {'‖Δ‖ ours':>10} {'lower bd':>10} {'μ* ours':>10} "
        f"{'rounds':>6} {'|W|':>5} {'end':>6} | {'SLSQP s':>9} {'‖Δ‖ SLSQP':>10} {'μ* SLSQP':>10} constraints",
        flush=True,
    )
    rows, start, env = [], time.perf_counter(), environment("cpu")
    for n, rel_tol in zip(args.sizes, rel_tols):
        checkpoint = _checkpoint(args.checkpoint_dir, n, args.delta, rel_tol)
        ours = _run(_ours, (n, args.delta, rel_tol, args.progress, checkpoint), args.stabilize_budget)
        if ours is None:
            part = _unfinished(checkpoint)
            if part is None:
                print(
                    f"{n:>4} {rel_tol:>7g} {'> ' + format(args.stabilize_budget, '.0f'):>12} "
                    "(stabilize did not finish)",
                    flush=True,
                )
            else:
                print(
                    f"{n:>4} {rel_tol:>7g} {'> ' + format(part['seconds'], '.0f'):>12} "
                    f"(not finished: {part['rounds']} rounds, "
                    f"|W| {part['working_set']}, ‖Δ‖ {part['upper']:.4f}, certified ≥ {part['lower_bound']:.4f}; "
                    f"the same command resumes from {checkpoint})",
                    flush=True,
                )
            rows.append({"n": n, "rel_tol": rel_tol, "stabilize": None, "unfinished": part})
            continue
        end = ("repair" if ours["repaired"] else "clean") if ours["converged"] else "rounds"
        line = (
            f"{n:>4} {rel_tol:>7g} {ours['seconds']:>12.1f} {ours['norm']:>10.4f} {ours['lower_bound']:>10.4f} "
            f"{ours['mu']:>10.5f} {ours['rounds']:>6} {ours['working_set']:>5} {end:>6} | "
        )
        vertices = None if n <= 10 else ours["vertices"]
        what = f"all {2**n} vertices" if n <= 10 else f"working set ({len(vertices)} vertices)"
        ref = _run(_slsqp, (n, args.delta, vertices), args.budget)
        if ref is None:
            line += f"{'> ' + format(args.budget, '.0f'):>9} {'':>10} {'':>10} {what}"
        else:
            line += f"{ref['seconds']:>9.1f} {ref['norm']:>10.4f} {ref['mu']:>10.5f} {what}"
        print(line, flush=True)
        rows.append(
            {
                "n": n,
                "rel_tol": rel_tol,
                "stabilize": {k: v for k, v in ours.items() if k != "vertices"},
                "slsqp": ref,
                "slsqp_constraints": what,
            }
        )
    if args.json:
        save_record(
            args.json,
            {"delta": args.delta, "rows": rows, "budget": args.budget, "stabilize_budget": args.stabilize_budget},
            mode="benchmark",
            seconds=time.perf_counter() - start,
            env=env,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
