"""pytest configuration for the whole repository.

* Tests and notebooks run in smoke mode, offline, unless the caller says otherwise.
* With ``--nbval-lax``, executable MyST pages of the book (``.md`` files whose front matter
  names a kernel) are run like notebooks: jupytext reads them, nbval executes them with the
  kernel's working directory at the page's own folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

os.environ.setdefault("LABKIT_MODE", "smoke")
os.environ.setdefault("LABKIT_OFFLINE", "1")
os.environ.setdefault("LABKIT_STATIC", "1")  # no widgets: executing them can hang nbclient


def pytest_configure(config):
    """Under pytest-xdist (``make test``: two workers on two cores) each worker computes with one
    thread: with torch's default of a thread per core in both, the workers' threads fight for the
    cores and tests take several times as long. Only the worker's own torch is set; the kernels and
    builds it starts keep their defaults (setting ``OMP_NUM_THREADS`` for them too was followed by
    a hung lab kernel once)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def _is_executable_page(path: Path) -> bool:
    if path.suffix != ".md":
        return False
    head = path.read_text(encoding="utf-8")[:2000]
    return head.startswith("---") and "kernelspec:" in head


def pytest_collect_file(file_path, parent):
    opt = parent.config.option
    if not getattr(opt, "nbval_lax", False) and not getattr(opt, "nbval", False):
        return None
    if not _is_executable_page(file_path):
        return None
    import jupytext
    import nbval.plugin

    class MystPage(nbval.plugin.IPyNbFile):
        """nbval's notebook collector, reading a MyST page through jupytext."""

        def collect(self):
            with mock.patch.object(nbval.plugin.nbformat, "read", lambda path, as_version=4: jupytext.read(path)):
                yield from super().collect()

    return MystPage.from_parent(parent, path=file_path)
