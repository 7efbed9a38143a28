"""labkit: the small library behind *Lipschitz Flows*.

The book and the labs import it; every public function's docstring names the section of the
book that defines it. Start every notebook with::

    import labkit
    cfg = labkit.setup()

which seeds every random generator, picks the device and prints one line that says what runs.

Layout: the runtime (mode, device, seeds, progress) is :mod:`labkit.runtime`; each idea has one
method module (:mod:`labkit.lognorm`, :mod:`labkit.clip`, :mod:`labkit.convex`, …); each
chapter's experiment (its sizes per mode, its runs and its record) is :mod:`labkit.chapters`;
tables, banners and glue names come from :mod:`labkit.report`.
"""

import importlib

from ._version import __version__
from .runtime import MODES, Config, by_mode, device, mode, progress_enabled, seed_everything, setup

#: The idea modules. ``import labkit`` reaches each as ``labkit.<name>``, imported on first use, so that
#: ``python -m labkit.experiment`` (or ``labkit.bench``) does not find its module imported already by
#: the package (runpy warns of that).
_MODULES = ("attacks", "audit", "bench", "certify", "chapters", "check", "clip", "convex", "course", "data",
            "experiment", "lipschitz", "lognorm", "odes", "report", "runtime", "snode", "structured",
            "train")  # fmt: skip


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES))


__all__ = [
    "MODES",
    "Config",
    "__version__",
    "attacks",
    "audit",
    "bench",
    "by_mode",
    "certify",
    "chapters",
    "check",
    "clip",
    "convex",
    "course",
    "data",
    "device",
    "experiment",
    "lipschitz",
    "lognorm",
    "mode",
    "odes",
    "progress_enabled",
    "report",
    "runtime",
    "snode",
    "structured",
    "seed_everything",
    "setup",
    "train",
]
