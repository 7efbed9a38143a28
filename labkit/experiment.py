"""Experiment plumbing shared by the chapters: robustness curves and result records.

A chapter's experiment is one labkit function; the page runs it at ``book`` (or ``smoke``) sizes,
and ``python -m labkit.chapters CHAPTER`` (:func:`labkit.chapters.main`) runs it at ``full``
sizes and writes a *record*: a JSON file in ``book/data/`` with the results, the device, the time
taken, the versions and the git commit, which the page then shows beside its own numbers
(Preface, *Modes*).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import tempfile
from functools import partial
from pathlib import Path

import torch

from . import _validate, attacks, train
from ._version import __version__
from .runtime import resolve_device

__all__ = [
    "result",
    "at",
    "robustness",
    "environment",
    "save_record",
    "load_record",
    "set_sizes",
    "partial_path",
]

ROOT = Path(__file__).resolve().parents[1]


def result(
    *,
    radii,
    clean: float,
    empirical: dict | None = None,
    certified=None,
    lipschitz: dict | None = None,
    norm: str = "linf",
    attack: dict | None = None,
    seconds: float | None = None,
    sizes: dict | None = None,
    **extra,
) -> dict:
    """One robustness result, the shape every chapter and the bench share (§0.5).

    ``radii`` are the attack radii in the ``norm`` (``"linf"`` or ``"l2"``); ``empirical`` maps an
    attack's name to its accuracies, one per radius; ``certified`` (or ``None``) the certified
    accuracies, one per radius; ``lipschitz`` the bounds of the map the certificate is about:
    ``{"lower": …, "upper": …, "map": "…"}``; ``attack`` the attacks' strength (steps, restarts,
    points attacked); ``seconds`` the training time; ``sizes`` what the run was given. Further
    keywords are kept as they are (histories, a method's own numbers). Raises ``ValueError`` when a
    curve is not aligned with ``radii``."""
    radii = [_validate.nonneg(e, "radius") for e in radii]
    if norm not in attacks.NORMS:
        raise ValueError(f"norm must be one of {attacks.NORMS}, got {norm!r}.")
    empirical = {name: [float(a) for a in curve] for name, curve in (empirical or {}).items()}
    for name, curve in [*empirical.items(), *([("certified", certified)] if certified is not None else [])]:
        if len(curve) != len(radii):
            raise ValueError(f"{name} has {len(curve)} values for {len(radii)} radii.")
    bounds = {"lower": None, "upper": None, "map": "network", **(lipschitz or {})}
    return {
        "norm": norm,
        "radii": radii,
        "clean": float(clean),
        "empirical": empirical,
        "certified": None if certified is None else [float(a) for a in certified],
        "lipschitz": bounds,
        "attack": attack or {},
        "seconds": seconds,
        "sizes": sizes or {},
        **extra,
    }


def at(res: dict, curve: str, radius: float) -> float:
    """The value of ``curve`` (an attack's name, or ``"certified"``) at ``radius`` in a
    :func:`result`. Raises ``KeyError`` naming the curves or radii that exist."""
    values = res["certified"] if curve == "certified" else res["empirical"].get(curve)
    if values is None:
        raise KeyError(
            f"no curve {curve!r}; there are {sorted(res['empirical'])}"
            f"{' and certified' if res['certified'] is not None else ''}."
        )
    for r, v in zip(res["radii"], values):
        if math.isclose(r, radius, rel_tol=1e-9, abs_tol=1e-12):
            return v
    raise KeyError(f"no radius {radius}; the radii are {res['radii']}.")


def robustness(model, test, eps, *, pgd_steps: int = 20, seed: int = 0, device=None, **fields) -> dict:
    """Clean accuracy and accuracy under Gaussian noise, FGSM and PGD (l∞) at each radius in
    ``eps``, as a :func:`result` with the empirical curves ``noise``, ``fgsm`` and ``pgd``
    (§0.5); ``fields`` are passed on to :func:`result`. The noise and PGD's random
    start are seeded by ``seed``."""
    eps = [_validate.nonneg(e, "eps") for e in eps]
    steps = _validate.positive_int(pgd_steps, "pgd_steps")
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    curve = lambda attack: list(attacks.robust_accuracy(model, test, attack, eps, device=device).values())  # noqa: E731
    clean = train.evaluate(model, test, device=device)["accuracy"]
    empirical = {
        "noise": curve(partial(attacks.gaussian_noise, generator=gen())),
        "fgsm": curve(attacks.fgsm),
        "pgd": curve(partial(attacks.pgd, steps=steps, generator=gen())),
    }
    return result(
        radii=eps,
        clean=clean,
        empirical=empirical,
        norm="linf",
        attack={
            "pgd": {"steps": steps, "restarts": 1, "points": len(test)},
            "fgsm": {"points": len(test)},
            "noise": {"points": len(test)},
        },
        **fields,
    )


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device=None) -> dict:
    """Where and with what a result was computed: device (with the GPU's name), threads,
    versions of Python, torch and labkit, platform, git commit and whether the tree had changes."""
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": str(dev),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "labkit": __version__,
        "platform": platform.platform(),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
    }


def save_record(
    path,
    results,
    *,
    mode: str,
    seconds: float,
    device=None,
    sizes: dict | None = None,
    env: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``results`` with their provenance to ``path`` (JSON, atomically: a crash leaves the
    old file intact). ``env`` is :func:`environment` as taken when the run started (default: now,
    which names a later commit if one was made during the run); ``extra``: further top-level
    fields. Raises ``TypeError`` before writing anything if ``results`` is not JSON."""
    record = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "seconds": float(seconds),
        "sizes": sizes or {},
        **(env or environment(device)),
        **(extra or {}),
        "results": results,
    }
    text = json.dumps(record, indent=1, allow_nan=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"the record {path} is not valid JSON ({err}); restore it from git or run again.") from None


def set_sizes(sizes: dict, items) -> dict:
    """``sizes`` with the changes ``items``, each ``"SIZE=VALUE"`` with a JSON value (a bare word is
    taken as a string), as the ``--set`` options of the command lines give them (a shortened
    schedule, say). ``ValueError`` names the sizes that exist when ``SIZE`` is not one of them."""
    sizes = dict(sizes)
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or key not in sizes:
            raise ValueError(f"--set {item!r}: give SIZE=VALUE with SIZE one of {', '.join(sorted(sizes))}.")
        try:
            sizes[key] = json.loads(raw)
        except json.JSONDecodeError:
            sizes[key] = raw
    return sizes


def partial_path(out) -> Path:
    """Where :func:`labkit.chapters.main` keeps the results of an unfinished full run next to its
    record ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".partial.json")
