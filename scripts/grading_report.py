"""An example grade report of the course tools, for the instructors page.

    python scripts/grading_report.py [--labs lab00_foundations] [--json book/data/grading_report.json]

Runs the nbgrader and the otter-grader round trips of ``labkit.course`` (the real tools) on the
given labs, each with three submissions: the solution, the student version (stubs) and a broken
one (a wrong answer, an exercise that raises, a wrong answer whose check cell was replaced by a
print of success). Prints the points per exercise and saves them as a record with the tools'
versions. Run it in smoke mode (``LABKIT_MODE=smoke``) to keep it short.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib.metadata import version
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", nargs="+", default=["lab00_foundations"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.json is not None:
        from labkit._validate import writable

        writable(args.json, "--json")
    from labkit import course, runtime
    from labkit.experiment import environment, save_record

    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tool, trip in (("nbgrader", course.round_trip_nbgrader), ("otter-grader", course.round_trip_otter)):
            scores = trip(Path(tmp) / tool, args.labs)
            for (name, kind), points in scores.items():
                lab = course.read_lab(course.ROOT / "labs" / f"{name}.ipynb")
                rows.append(
                    {
                        "tool": tool,
                        "version": version(tool),
                        "lab": name,
                        "submission": kind,
                        "points": points,
                        "expected": course.expected_points(lab, kind),
                        "max": [ex.points for ex in lab.exercises],
                    }
                )
                print(f"{tool:>13} {name} {kind:>8}: {points} (expected {rows[-1]['expected']})")
    if args.json:
        save_record(
            args.json,
            rows,
            mode=runtime.mode(),
            seconds=time.perf_counter() - t0,
            env=environment(),
            sizes={"labs": args.labs, "broken": {str(k): v for k, v in course.BROKEN.items()}},
        )
        print(f"wrote {args.json}")
    return 0 if all(r["points"] == r["expected"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
