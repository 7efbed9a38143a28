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
import pkgutil

from ._version import __version__ as __version__
from .runtime import MODES as MODES
from .runtime import Config as Config
from .runtime import by_mode as by_mode
from .runtime import device as device
from .runtime import live as live
from .runtime import mode as mode
from .runtime import progress_enabled as progress_enabled
from .runtime import seed_everything as seed_everything
from .runtime import setup as setup

#: The modules of the package (the private ones, named with ``_``, left out), found, not listed: a new
#: idea module needs no entry here. ``import labkit`` reaches each as ``labkit.<name>``, imported on
#: first use, so that ``python -m labkit.chapters`` does not find its module imported already by the
#: package (runpy warns of that).
_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it on the package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES))


__all__ = sorted(
    [
        "MODES",
        "Config",
        "__version__",
        "by_mode",
        "device",
        "live",
        "mode",
        "progress_enabled",
        "seed_everything",
        "setup",
        *_MODULES,
    ]
)
