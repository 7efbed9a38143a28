"""Every lab: each exercise's check fails on the stub and passes on the solution.

The lab is executed cell by cell in one namespace (smoke mode). At each exercise cell the
stubbed version (solution replaced by ``raise NotImplementedError()``) is run first and the
following check cell must fail with that ``NotImplementedError``; then the solution is run and
the check must pass. Every exercise must be followed by a check cell. Wrong answers (not stubs)
are tested against each check in ``test_check.py``.
"""
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
def test_checks_fail_on_stub_and_pass_on_solution(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    cells = _code_cells(path)
    ns = {"__name__": "__lab__"}
    exercises = 0
    i = 0
    while i < len(cells):
        src = cells[i]
        if course.has_solution(src):
            exercises += 1
            assert i + 1 < len(cells) and _is_check(cells[i + 1]), \
                f"{path.name}: exercise cell {i} is not followed by a check cell"
            exec(compile(course.stub_source(src), f"{path.name}:stub{i}", "exec"), ns)
            with pytest.raises(NotImplementedError):
                exec(compile(cells[i + 1], f"{path.name}:check{i + 1}", "exec"), ns)
            exec(compile(src, f"{path.name}:cell{i}", "exec"), ns)
            exec(compile(cells[i + 1], f"{path.name}:check{i + 1}", "exec"), ns)
            i += 2
            continue
        if not src.lstrip().startswith(("%", "!")):
            exec(compile(src, f"{path.name}:cell{i}", "exec"), ns)
        i += 1
    assert exercises >= 1, f"{path.name} has no exercise"


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
