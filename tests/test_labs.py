"""The labs' shape. That each exercise's check fails on the stub and passes on the solution is
tested where every lab is executed once, in ``test_book.py``; wrong answers (not stubs) are tested
against each check in ``test_check.py``."""

from pathlib import Path

import matplotlib
import nbformat
import pytest

from labkit import course

matplotlib.use("Agg")
LABS = sorted((Path(__file__).resolve().parents[1] / "labs").glob("*.ipynb"))


def _code_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _is_check(source):
    return "check." in source and not course.has_solution(source)


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_lab_starts_with_setup(path):
    first = _code_cells(path)[0]
    assert "labkit.setup(" in first


def test_stub_source_keeps_indentation_and_rejects_bad_markers():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n"
    assert course.stub_source(src) == "def f(x):\n    raise NotImplementedError()"
    with pytest.raises(course.MarkerError, match="never closed"):
        course.stub_source("### BEGIN SOLUTION\nx = 1\n", where="lab.ipynb cell 3")
    with pytest.raises(course.MarkerError, match="nested"):
        course.stub_source("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n")
    with pytest.raises(course.MarkerError, match="without"):
        course.stub_source("x = 1\n### END SOLUTION\n")
