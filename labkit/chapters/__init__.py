"""Each chapter's experiment, in one place per chapter (Preface, *Modes*).

A method lives in its idea module (:mod:`labkit.lognorm`, :mod:`labkit.clip`, …); the chapter's
*experiment* lives here, in ``labkit/chapters/chNN.py``, which holds

* ``SIZES``: one table of sizes per mode, ``{"smoke": {...}, "book": {...}, "full": {...}}``, the
  only source of truth for them, and ``sizes(mode)``, :func:`pick` of it;
* ``jobs(s, *, seed, device)``: the experiment as a list of :class:`Job` (``s``: the sizes, checked
  by :func:`given`), and ``run(**sizes, seed=0, device=None, done=None, on_result=None)``, which is
  :func:`execute` of them: JSON-ready results keyed by job;
* ``RECORD``: the file in ``book/data/`` where ``python -m labkit.chapters chNN`` writes the
  full-mode record (``None`` when the chapter has none), or ``RECORDS``: the folder of one record
  per job (the bench of §6, whose grid runs in parts);
* the chapter's tables and glue values, made with :mod:`labkit.report`.

The page calls ``chNN.run(**chNN.sizes())``, so ``LABKIT_MODE=full make book``,
``make full CH=chNN`` and the page run the same experiment. CONTRIBUTING.md says which files a new
chapter touches.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import pkgutil
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from .. import runtime

__all__ = [
    "CHAPTERS",
    "DATA",
    "Job",
    "execute",
    "cached",
    "get",
    "pick",
    "per_mode",
    "given",
    "shard",
    "record_path",
    "run_sizes",
    "stored",
    "show_record",
    "main",
]

#: The chapters that have an experiment module, in book order. Every ``chNN.py`` of this package is
#: found, not listed, so a new chapter needs no entry here.
CHAPTERS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if re.fullmatch(r"ch\d\d", m.name)))
#: The folder of the records, the book's ``book/data``.
DATA = Path(__file__).resolve().parents[2] / "book" / "data"


def pick(table: dict, mode: str | None = None) -> dict:
    """The sizes of ``table`` (a ``SIZES``) for ``mode`` (default: :func:`labkit.runtime.mode`),
    as a fresh copy that the caller may change."""
    mode = runtime.mode() if mode is None else mode
    if mode not in runtime.MODES:
        raise ValueError(f"mode must be one of {runtime.MODES}, got {mode!r}.")
    if set(table) != set(runtime.MODES):
        raise ValueError(f"SIZES must have exactly the modes {runtime.MODES}, got {sorted(table)}.")
    return copy.deepcopy(table[mode])


def per_mode(rows: dict, **common) -> dict:
    """A ``SIZES`` table from ``rows``, ``{size: (smoke, book, full)}``, one row per size (so the
    three modes read side by side), and the sizes in ``common``, the same in every mode."""
    for name, values in rows.items():
        if not isinstance(values, tuple) or len(values) != len(runtime.MODES):
            raise ValueError(f"size {name!r} needs one value per mode {runtime.MODES}, got {values!r}.")
    return {
        mode: {**copy.deepcopy(common), **{name: v[i] for name, v in rows.items()}}
        for i, mode in enumerate(runtime.MODES)
    }


def given(sizes: dict, table: dict) -> SimpleNamespace:
    """The ``sizes`` a chapter's ``run`` was called with, as attributes, after checking that they are
    exactly the sizes of its ``table`` (``SIZES``): a missing or misspelt size raises ``TypeError``
    naming it before anything runs."""
    expected = set(next(iter(table.values())))
    missing, unknown = sorted(expected - set(sizes)), sorted(set(sizes) - expected)
    if missing or unknown:
        raise TypeError(f"sizes do not match the chapter's SIZES: missing {missing}, unknown {unknown}.")
    return SimpleNamespace(**sizes)


def get(name: str):
    """The experiment module of chapter ``name`` (``"ch01"``, …). Raises ``ValueError`` naming the
    chapters that exist."""
    if name not in CHAPTERS:
        raise ValueError(f"no chapter experiment {name!r}; there are {', '.join(CHAPTERS)}.")
    return importlib.import_module(f"{__name__}.{name}")


@dataclass(frozen=True)
class Job:
    """One seeded run of a chapter's experiment: ``train()`` returns ``(model, kept)``, the trained
    model and what is worth keeping of the training (a dict), and ``evaluate(model, kept, seconds)``
    the run's JSON-ready result (``seconds``: the time of ``train``)."""

    key: str
    train: Callable[[], tuple]
    evaluate: Callable[[object, dict, float], dict]
    seed: int = 0


def execute(jobs, *, done: dict | None = None, on_result=None, desc: str | None = None) -> dict:
    """Run ``jobs`` in order and return their results keyed by the jobs' ``key``. A job whose key is in
    ``done`` is not run: its result there is taken as it is (so an interrupted experiment resumes).
    Every other job is seeded on its own (:func:`labkit.runtime.seed_everything` of its seed, so it
    gives the same numbers whatever ran before), trained, timed and evaluated, and
    ``on_result(key, result)`` is called at once (the command line keeps the records with it).
    With ``desc``, a progress bar counts the jobs."""
    from tqdm.auto import tqdm

    out = {}
    for job in tqdm(jobs, desc=desc, disable=desc is None or not runtime.progress_enabled()):
        if done and job.key in done:
            out[job.key] = done[job.key]
            continue
        runtime.seed_everything(job.seed)
        t0 = time.perf_counter()
        model, kept = job.train()
        out[job.key] = job.evaluate(model, kept, time.perf_counter() - t0)
        if on_result is not None:
            on_result(job.key, out[job.key])
    return out


def cached(load: Callable) -> Callable:
    """``load`` called once, on first use, and its value kept: a job's data, read only by the jobs
    that run (a resumed experiment with every job done reads nothing)."""
    return functools.cache(load)


def shard(jobs: list, spec: str) -> list:
    """Part ``i`` of ``n`` of ``jobs`` for ``spec = "i/n"`` (``1 ≤ i ≤ n``): every ``n``-th job from the
    ``i``-th, so the ``n`` parts cover the list exactly once and have sizes that differ by at most one."""
    try:
        i, n = (int(p) for p in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"a shard is i/n with integers 1 ≤ i ≤ n, e.g. 2/4; got {spec!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"a shard is i/n with 1 ≤ i ≤ n, got {spec!r}.")
    return list(jobs)[i - 1 :: n]


def record_path(folder, key: str) -> Path:
    """The file of the job ``key`` in a folder of one record per job: ``"mnist/cpl/seed 0"`` is
    ``mnist__cpl__seed0.json``."""
    return Path(folder) / (key.replace("/", "__").replace(" ", "") + ".json")


def run_sizes(sizes: dict, grid=()) -> dict:
    """The sizes that determine a job's numbers: ``sizes`` without those in ``grid`` (a chapter's
    ``GRID_SIZES``, which choose which jobs exist), as JSON gives them back. Two records of one job
    with the same ``run_sizes`` hold the same numbers."""
    return {k: v for k, v in json.loads(json.dumps(sizes or {})).items() if k not in grid}


def stored(folder, keys, sizes: dict, *, mode: str, grid=(), restart: bool = False) -> dict:
    """The results of the jobs ``keys`` that have a record in ``folder`` (:func:`record_path`, one
    record per job), keyed by job. ``ValueError`` names a record made with another mode or other
    sizes (:func:`run_sizes` without the sizes ``grid``), unless ``restart``, which ignores them."""
    from .. import experiment

    found = {}
    for key in [] if restart else keys:
        path = record_path(folder, key)
        old = experiment.load_record(path)
        if old is None:
            continue
        if old.get("mode") != mode or run_sizes(old.get("sizes"), grid) != run_sizes(sizes, grid):
            raise ValueError(
                f"{path} was made with other sizes (mode {old.get('mode')!r}); give another --out folder "
                "or --restart to run it again."
            )
        found[key] = old["results"]
    return found


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labkit.chapters", description=main.__doc__)
    parser.add_argument("chapter", choices=[c for c in CHAPTERS if _records(get(c))])
    parser.add_argument(
        "--mode",
        choices=runtime.MODES,
        default="full",
        help="the sizes (and data): default full; smoke or book to try it quickly",
    )
    parser.add_argument("--out", type=Path, help="record file, or folder of records (default: the one the book reads)")
    parser.add_argument("--restart", action="store_true", help="ignore the results of an unfinished run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help="change one size (a JSON value), e.g. --set epochs=10 for a shortened schedule; the "
        "record keeps the sizes it ran with, and the page shows them",
    )
    parser.add_argument(
        "--shard", default="1/1", metavar="I/N", help="run part I of N of the jobs (a chapter with one record per job)"
    )
    parser.add_argument("--summary", action="store_true", help="print the tables of the records and stop")
    return parser


def _records(chapter):
    return getattr(chapter, "RECORD", None) or getattr(chapter, "RECORDS", None)


def main(argv=None) -> int:
    """``python -m labkit.chapters CHAPTER [--mode MODE] [--out PATH] [--restart] [--set SIZE=VALUE …]
    [--shard I/N] [--summary]``: run a chapter's jobs (:func:`execute`) at the sizes of ``MODE``
    (default: full) on the default device and keep their records (default: where the book reads
    them). A chapter with a ``RECORD`` gets one file; each finished job is kept in a partial file
    beside it, from which a later call with the same sizes resumes (``--restart`` discards it). A
    chapter with ``RECORDS`` (Chapter 6's grid) gets one record per job in a folder, from which a
    later call resumes, and may run in parts (``--shard``). An output path that cannot be written is
    refused before anything runs."""
    from .. import _validate, experiment

    parser = _parser()
    args = parser.parse_args(argv)
    previous = os.environ.get("LABKIT_MODE")
    os.environ["LABKIT_MODE"] = args.mode  # the data follow the mode too (smoke: the bundled samples)
    try:
        chapter = get(args.chapter)
        try:
            sizes = experiment.set_sizes(chapter.sizes(args.mode), args.set)
            if getattr(chapter, "RECORD", None) and args.shard != "1/1":
                raise ValueError(f"{args.chapter} writes one record; --shard needs a chapter with one record per job.")
            shard([], args.shard)
        except ValueError as err:
            parser.error(str(err))
        if getattr(chapter, "RECORD", None):
            out = args.out or DATA / chapter.RECORD
            _validate.writable(out, "record")
            return _to_file(chapter, sizes, out, mode=args.mode, restart=args.restart, summary=args.summary)
        folder = args.out or DATA / chapter.RECORDS.format(mode=args.mode)
        try:
            return _to_folder(chapter, sizes, folder, args)
        except (ValueError, OSError) as err:
            parser.error(str(err))
    finally:  # the caller's mode, as it was
        if previous is None:
            os.environ.pop("LABKIT_MODE", None)
        else:
            os.environ["LABKIT_MODE"] = previous


def _to_file(chapter, sizes, out, *, mode, restart, summary) -> int:
    """One record ``out``, resumed from and kept in its partial file (:func:`labkit.experiment.partial_path`)."""
    from .. import experiment

    if summary:
        record = experiment.load_record(out)
        print(chapter.table(record["results"]) if record else f"no record at {out}", file=sys.stdout)
        return 0 if record else 1
    rank, world = runtime.init_distributed()  # under torchrun: data-parallel training, rank 0 writes
    env, t0, part = experiment.environment(), time.perf_counter(), experiment.partial_path(out)
    runtime.seed_everything(0)
    old = None if restart else experiment.load_record(part)
    done = old["results"] if old is not None and old.get("sizes") == json.loads(json.dumps(sizes)) else {}
    before, extra = 0.0, None
    if done:
        before = old["seconds"]
        provenance = {k: old.get(k) for k in ("commit", "dirty", "device", "torch")}
        extra = {"resumed": {"runs": sorted(done), "seconds": before, **provenance}}
        print(f"resuming: {len(done)} finished run(s) from {part}", file=sys.stderr)
    finished = dict(done)

    def keep(key, result):
        finished[key] = result
        if rank == 0:
            experiment.save_record(
                part, finished, mode="partial", seconds=before + time.perf_counter() - t0, sizes=sizes, env=env
            )

    results = chapter.run(**sizes, done=done, on_result=keep)
    if rank != 0:  # every rank ran the experiment; one writes it
        return 0
    extra = {**(extra or {}), "world_size": world} if world > 1 else extra
    seconds = before + time.perf_counter() - t0
    experiment.save_record(out, results, mode=mode, seconds=seconds, sizes=sizes, env=env, extra=extra)
    part.unlink(missing_ok=True)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _to_folder(chapter, sizes, folder, args) -> int:
    """One record per job in ``folder``, the jobs of shard ``args.shard`` that have none yet."""
    from .. import _validate, experiment

    grid = getattr(chapter, "GRID_SIZES", ())
    if args.summary:
        results = chapter.collect(folder)
        print(chapter.summary(results) if results else f"no records in {folder}")
        return 0 if results else 1
    jobs = shard(chapter.jobs(given(sizes, chapter.SIZES)), args.shard)
    _validate.writable(Path(folder) / ".records", "results folder")
    done = stored(folder, [job.key for job in jobs], sizes, mode=args.mode, grid=grid, restart=args.restart)
    env, last = experiment.environment(), [time.perf_counter()]

    def keep(key, result):
        experiment.save_record(
            record_path(folder, key),
            result,
            mode=args.mode,
            seconds=time.perf_counter() - last[0],
            sizes=sizes,
            env=env,
            extra={"run": key},
        )
        last[0] = time.perf_counter()

    results = execute(jobs, done=done, on_result=keep, desc=args.chapter)
    print(f"{len(results)} run(s) in {folder}", file=sys.stderr)
    return 0


def show_record(chapter, name: str | None = None, *, command: str | None = None, missing: str | None = None):
    """Show a chapter's full-mode record on its page: the banner (where, when and how it ran, or,
    with ``missing``, how to make it), the sizes that differ from the full mode's, and the chapter's
    table; the chapter's ``verify`` runs first, so a record that contradicts a theorem stops the
    build. ``name``: the record's file in ``book/data`` (default: the chapter's ``RECORD``);
    ``command``: the one that makes it (default: ``python -m labkit.chapters chNN``). Returns the
    record, or ``None`` when there is none."""
    from IPython.display import display

    from .. import experiment, report

    short = chapter.__name__.rsplit(".", 1)[-1]
    record = experiment.load_record(DATA / (name or chapter.RECORD))
    display(report.banner(record, command=command or f"python -m labkit.chapters {short}", missing=missing))
    if record is not None:
        chapter.verify(record["results"])
        display(report.changed_sizes(record["sizes"], chapter.sizes("full")), chapter.table(record["results"]))
    return record
