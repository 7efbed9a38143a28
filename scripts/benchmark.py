"""Time the things DESIGN's budgets are about, on this machine.

    python scripts/benchmark.py [--mode smoke|book|full] [--skip-tests] [--skip-book]

Prints the wall time of the test suite (``make test``'s pytest command) and of each executable
page and lab executed alone in the chosen mode (default: book), then of the whole book build.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd, env):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", default="book", choices=["smoke", "book", "full"])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-book", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ, LABKIT_MODE=args.mode, MPLBACKEND="Agg")
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    if not args.skip_tests:
        test_env = dict(env, LABKIT_MODE="smoke")
        secs, proc = timed([str(BIN / "python"), "-m", "pytest", "-n", "2", "--dist", "loadscope",
                            "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-q"], test_env)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
        print(f"tests (smoke): {secs:6.1f} s   {summary}")
    pages = sorted(ROOT.glob("book/*.md")) + sorted(ROOT.glob("labs/*.ipynb"))
    for page in pages:
        if page.suffix == ".md" and "kernelspec:" not in page.read_text(encoding="utf-8")[:2000]:
            continue
        secs, proc = timed([str(BIN / "jupytext"), "--to", "ipynb", "--execute", "--output", "-",
                            str(page.relative_to(ROOT))], env)
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.stderr.strip()[-200:]})"
        print(f"page {page.relative_to(ROOT)} ({args.mode}): {secs:6.1f} s  {status}")
    if not args.skip_book:
        subprocess.run([str(BIN / "jupyter-book"), "clean", "."], cwd=ROOT, env=env, capture_output=True)
        secs, proc = timed([str(BIN / "jupyter-book"), "build", ".", "-W", "-n", "--keep-going"], env)
        print(f"book build ({args.mode}): {secs:6.1f} s  {'ok' if proc.returncode == 0 else 'FAILED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
