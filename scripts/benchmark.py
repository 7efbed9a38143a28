"""Time the things DESIGN's budgets are about, on this machine.

    python scripts/benchmark.py [--modes smoke book] [--skip-tests] [--skip-book] [--json PATH]

Prints the wall time of the test suite (``make test``'s pytest command, which builds the book once
in smoke mode), of each executable
page and lab executed alone in each mode, and of the whole book build in the last mode. With
``--json`` the page and lab times are also written, with the machine, versions, date and commit,
to PATH (the book's page *For instructors* shows ``book/data/lab_times.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd, env, timeout=None):
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")
    return time.perf_counter() - t0, proc


def execute(page: Path, mode: str) -> tuple[float, str | None]:
    """Execute one page or lab in a fresh kernel in its own folder, as the book build does, from
    a child process of its own (one nbclient session per process: reusing one hung on lab 1), stopped
    after 15 minutes (a fresh one still hung once, on lab 0 in book mode, idle kernel; unexplained)."""
    code = (
        "import sys, jupytext, nbformat; from nbclient import NotebookClient; p = sys.argv[1]; "
        "nb = jupytext.read(p) if p.endswith('.md') else nbformat.read(p, as_version=4); "
        "NotebookClient(nb, timeout=3600, kernel_name='python3', "
        "resources={'metadata': {'path': sys.argv[2]}}).execute()"
    )
    env = dict(os.environ, LABKIT_MODE=mode)
    secs, proc = timed([str(BIN / "python"), "-c", code, str(page), str(page.parent)], env, timeout=900)
    return secs, None if proc.returncode == 0 else proc.stderr.strip()[-300:]


def pages():
    for page in sorted(ROOT.glob("book/*.md")) + sorted(ROOT.glob("labs/*.ipynb")):
        if page.suffix == ".md" and "kernelspec:" not in page.read_text(encoding="utf-8")[:2000]:
            continue
        yield page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", nargs="+", default=["smoke", "book"], choices=["smoke", "book", "full"])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-book", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--pages",
        nargs="+",
        help="time only the pages and labs whose path contains one of these strings; with --json the other "
        "entries of an existing record are kept, and the re-timed ones are listed with this commit",
    )
    args = parser.parse_args()
    import torch

    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        or "unknown"
    )
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seconds": {},
    }
    print(f"machine: {record['machine']}; python {record['python']}; torch {record['torch']}; commit {commit}")
    if not args.skip_tests:
        env = dict(os.environ, LABKIT_MODE="smoke")
        pytest = [str(BIN / "python"), "-m", "pytest", "-n", "2", "--dist", "loadscope", "-p", "no:cacheprovider", "-q"]
        secs, proc = timed(pytest, env)  # make test's command: the unit tests and the smoke-mode book
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
        print(f"tests (smoke): {secs:6.1f} s   {summary}")
    chosen = [p for p in pages() if not args.pages or any(k in str(p.relative_to(ROOT)) for k in args.pages)]
    if args.pages and args.json and args.json.exists():  # keep the other pages' times, say which are new
        old = json.loads(args.json.read_text(encoding="utf-8"))
        retimed = {str(p.relative_to(ROOT)): commit for p in chosen}
        record = {**old, "seconds": dict(old["seconds"]), "retimed": {**old.get("retimed", {}), **retimed}}
    for mode in args.modes:
        for page in chosen:
            rel = str(page.relative_to(ROOT))
            secs, error = execute(page, mode)
            record["seconds"][rel] = {**record["seconds"].get(rel, {}), mode: None if error else round(secs, 1)}
            print(f"{rel} ({mode}): {secs:6.1f} s  {'ok' if not error else 'FAILED ' + error}")
    if not args.skip_book:
        mode = args.modes[-1]
        env = dict(os.environ, LABKIT_MODE=mode)
        subprocess.run([str(BIN / "jupyter-book"), "clean", "."], cwd=ROOT, env=env, capture_output=True)
        secs, proc = timed([str(BIN / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going"], env)
        record["seconds"]["whole book"] = {mode: round(secs, 1)}
        if args.pages:  # an older record with this build's time: say which commit it is from
            record["retimed"] = {**record.get("retimed", {}), "whole book": commit}
        print(f"book build ({mode}): {secs:6.1f} s  {'ok' if proc.returncode == 0 else 'FAILED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
