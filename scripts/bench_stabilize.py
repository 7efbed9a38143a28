"""Time labkit.lognorm.stabilize against scipy's SLSQP on the same problem (Chapter 1).

    python scripts/bench_stabilize.py [--sizes 16 32 64 128] [--delta 0.5] [--budget 600]

For each n: a random A (seed 0, entries N(0, 1/n) so μ* stays of order one), tanh slopes.
stabilize runs first. SLSQP gets the same constraints: all 2ⁿ vertices where n ≤ 10, otherwise the
final working set of stabilize (the vertices that the cutting planes found); it is skipped once a
run has exceeded --budget seconds. Prints both times and both ‖Δ‖_F, and the worst-case μ* of
each result (exact by enumeration for n ≤ 16, fixed point with restarts beyond).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labkit import lognorm as ln  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--delta", type=float, default=0.5)
    parser.add_argument("--budget", type=float, default=600.0)
    args = parser.parse_args()
    print(f"{'n':>4} {'stabilize s':>12} {'‖Δ‖ ours':>10} {'μ* ours':>10} {'rounds':>6} | "
          f"{'SLSQP s':>9} {'‖Δ‖ SLSQP':>10} {'μ* SLSQP':>10} constraints")
    slsqp_ok = True
    for n in args.sizes:
        A = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / math.sqrt(n)
        t0 = time.perf_counter()
        res = ln.stabilize(A, args.delta, "tanh", rel_tol=1e-5, generator=torch.Generator().manual_seed(0))
        t_ours = time.perf_counter() - t0
        line = f"{n:>4} {t_ours:>12.1f} {res.norm:>10.4f} {res.mu_after:>10.5f} {res.rounds:>6} | "
        if not slsqp_ok:
            print(line + "skipped (an earlier size ran past the budget)")
            continue
        if n <= 10:
            vertices, what = None, f"all {2 ** n} vertices"
        else:
            vertices = res.vertices
            what = f"working set ({len(vertices)} vertices)"
        t0 = time.perf_counter()
        delta_ref, norm_ref = ln.stabilize_slsqp(A, args.delta, "tanh", vertices=vertices, restarts=1)
        t_ref = time.perf_counter() - t0
        mu_ref = float("nan")
        if delta_ref is not None:
            mu_ref = ln.worst_case_lognorm(A + delta_ref, "tanh", generator=torch.Generator().manual_seed(0))[0]
        print(line + f"{t_ref:>9.1f} {norm_ref:>10.4f} {mu_ref:>10.5f} {what}")
        slsqp_ok = t_ref <= args.budget
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
