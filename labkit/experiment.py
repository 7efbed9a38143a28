"""Experiment plumbing shared by the chapters: robustness curves and result records.

A chapter's experiment is one labkit function; the page runs it at ``book`` (or ``smoke``) sizes,
and ``python -m labkit.experiment CHAPTER`` runs it at ``full`` sizes and writes a *record*: a
JSON file in ``book/data/`` with the results, the device, the time taken, the versions and the
git commit, which the page then shows beside its own numbers (Preface, *Modes*).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

from . import _validate

__all__ = ["robustness", "environment", "save_record", "load_record", "partial_path", "EXPERIMENTS", "main"]

ROOT = Path(__file__).resolve().parents[1]
#: Chapter → (module path of its experiment function, record file). Each function takes
#: keyword sizes and returns JSON-ready results; ``full_sizes()`` gives its full-mode sizes.
EXPERIMENTS = {"ch01": ("labkit.lognorm", ROOT / "book" / "data" / "ch01_full.json"),
               "ch02": ("labkit.clip", ROOT / "book" / "data" / "ch02_full.json"),
               "ch04": ("labkit.convex", ROOT / "book" / "data" / "ch04_full.json")}


def robustness(model, test, eps, *, pgd_steps: int = 20, seed: int = 0, device=None) -> dict:
    """Clean accuracy and accuracy under Gaussian noise, FGSM and PGD (l∞) at each radius in
    ``eps``: ``{"eps": [...], "clean": a, "noise": [...], "fgsm": [...], "pgd": [...]}`` with the
    curves aligned with ``eps`` (Chapter 0, *Attacks*). The noise and PGD's random start are
    seeded by ``seed``."""
    from . import attacks, train

    eps = [_validate.nonneg(e, "eps") for e in eps]
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    curve = lambda attack: list(attacks.robust_accuracy(model, test, attack, eps, device=device).values())  # noqa: E731
    return {"eps": eps, "clean": train.evaluate(model, test, device=device)["accuracy"],
            "noise": curve(partial(attacks.gaussian_noise, generator=gen())),
            "fgsm": curve(attacks.fgsm),
            "pgd": curve(partial(attacks.pgd, steps=_validate.positive_int(pgd_steps, "pgd_steps"),
                                 generator=gen()))}


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device=None) -> dict:
    """Where and with what a result was computed: device (with the GPU's name), threads,
    versions of Python, torch and labkit, platform, git commit and whether the tree had changes."""
    from . import __version__, device as default_device

    dev = torch.device(device) if device is not None else default_device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"device": str(dev), "device_name": name, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "labkit": __version__,
            "platform": platform.platform(), "commit": _git("rev-parse", "HEAD"),
            "dirty": None if status is None else bool(status)}


def save_record(path, results, *, mode: str, seconds: float, device=None, sizes: dict | None = None,
                env: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``results`` with their provenance to ``path`` (JSON, atomically: a crash leaves the
    old file intact). ``env`` is :func:`environment` as taken when the run started (default: now,
    which names a later commit if one was made during the run); ``extra``: further top-level
    fields. Raises ``TypeError`` before writing anything if ``results`` is not JSON."""
    record = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "mode": mode,
              "seconds": float(seconds), "sizes": sizes or {}, **(env or environment(device)),
              **(extra or {}), "results": results}
    text = json.dumps(record, indent=1, allow_nan=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_record(path) -> dict | None:
    """The record at ``path``, or ``None`` if there is none yet (a page then says so)."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def partial_path(out) -> Path:
    """Where :func:`main` keeps the results of an unfinished full run next to its record ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".partial.json")


def main(argv=None) -> int:
    """``python -m labkit.experiment CHAPTER [--out FILE] [--restart]``: run a chapter's experiment
    at full sizes on the default device and write its record (default: the file the book reads).
    For experiments made of independent seeded runs, each finished run is kept in a partial file
    beside the record, and a later call with the same sizes resumes from it (``--restart``
    discards it); the partial file is removed once the record is written."""
    import argparse
    import importlib
    import inspect
    import time

    from . import seed_everything

    parser = argparse.ArgumentParser(prog="python -m labkit.experiment", description=main.__doc__)
    parser.add_argument("chapter", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", type=Path, help="record file (default: the one the book reads)")
    parser.add_argument("--restart", action="store_true", help="ignore the results of an unfinished run")
    args = parser.parse_args(argv)
    module, default_out = EXPERIMENTS[args.chapter]
    out_path = args.out or default_out
    mod = importlib.import_module(module)
    sizes = mod.full_sizes()
    env = environment()
    seed_everything(0)
    t0 = time.perf_counter()
    kwargs, extra, before = dict(sizes), None, 0.0
    if "on_result" in inspect.signature(mod.experiment).parameters:
        part = partial_path(out_path)
        old = load_record(part) if not args.restart else None
        done = old["results"] if old is not None and old.get("sizes") == json.loads(json.dumps(sizes)) else {}
        if done:
            before = old["seconds"]
            extra = {"resumed": {"runs": sorted(done), "seconds": before,
                                 **{k: old.get(k) for k in ("commit", "dirty", "device", "torch")}}}
            print(f"resuming: {len(done)} finished run(s) from {part}", file=sys.stderr)
        finished = dict(done)

        def keep(key, result):
            finished[key] = result
            save_record(part, finished, mode="partial", seconds=before + time.perf_counter() - t0,
                        sizes=sizes, env=env)

        kwargs.update(done=done, on_result=keep)
    results = mod.experiment(**kwargs)
    out = save_record(out_path, results, mode="full", seconds=before + time.perf_counter() - t0,
                      sizes=sizes, env=env, extra=extra)
    if "on_result" in kwargs:
        partial_path(out_path).unlink(missing_ok=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
