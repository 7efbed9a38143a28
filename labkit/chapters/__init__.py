"""Each chapter's experiment, in one place per chapter (Preface, *Modes*).

A method lives in its idea module (:mod:`labkit.lognorm`, :mod:`labkit.clip`, …); the chapter's
*experiment* lives here, in ``labkit/chapters/chNN.py``, which holds

* ``SIZES``: one table of sizes per mode, ``{"smoke": {...}, "book": {...}, "full": {...}}``, the
  only source of truth for them;
* ``run(**sizes, seed=0, device=None)``: the runs, returning JSON-ready results keyed by run;
* ``RECORD``: the file in ``book/data/`` where ``python -m labkit.experiment chNN`` writes the
  full-mode record (``None`` when the chapter has none);
* the chapter's tables and glue values, made with :mod:`labkit.report`.

The page calls ``chNN.run(**chNN.sizes())``, so ``LABKIT_MODE=full make book``,
``make full CH=chNN`` and the page run the same experiment.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from types import SimpleNamespace

from .. import runtime

__all__ = ["CHAPTERS", "DATA", "get", "pick", "per_mode", "given"]

#: The chapters that have an experiment module, in book order.
CHAPTERS = ("ch00", "ch01", "ch02", "ch03", "ch04", "ch05", "ch06")
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
