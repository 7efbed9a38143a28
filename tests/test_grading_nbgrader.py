"""nbgrader round trip on two labs, with the real tool: `python -m labkit.course nbgrader`'s course,
then `nbgrader generate_assignment` and `nbgrader autograde` with no hand edits
(labkit.course.round_trip_nbgrader). The solution gets full marks, the student version none, and a
submission with a wrong answer, an exercise that raises and a tampered check cell loses exactly
those exercises' points: nbgrader restores the original check."""

from pathlib import Path

import nbformat
import pytest

from labkit import course

ROOT = Path(__file__).resolve().parents[1]
LABS = ["lab00_foundations", "lab04_convex"]  # four exercises each, quick to execute


def lab(name):
    return course.read_lab(ROOT / "labs" / f"{name}.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbgrader")
    return root, course.round_trip_nbgrader(root, LABS)


@pytest.mark.parametrize("name", LABS)
@pytest.mark.parametrize("kind", ["solution", "stub", "broken"])
def test_nbgrader_scores_each_exercise(graded, name, kind):
    _, scores = graded
    assert scores[name, kind] == course.expected_points(lab(name), kind)


def test_nbgrader_course_has_metadata_and_config(graded):
    root, _ = graded
    assert "Execute.timeout" in (root / "nbgrader_config.py").read_text()
    for name in LABS:
        nb = nbformat.read(root / "source" / name / f"{name}.ipynb", as_version=4)
        meta = [c.metadata["nbgrader"] for c in nb.cells if "nbgrader" in c.metadata]
        ids = [m["grade_id"] for m in meta]
        assert len(ids) == len(set(ids)) == 2 * len(lab(name).exercises)
        tests = [m for m in meta if m["grade"]]
        assert all(m["locked"] and m["points"] == course.TIER_POINTS["Implement"] for m in tests)
        released = (root / "release" / name / f"{name}.ipynb").read_text()
        assert "### BEGIN SOLUTION" not in released and "raise NotImplementedError()" in released


def test_broken_submission_needs_four_exercises_and_refuses_an_unknown_cell():
    three = lab("lab01_lognorm")
    nb = course.nbgrader_notebook(three)
    with pytest.raises(ValueError, match="at least 4"):
        course.broken_submission(nb, three, lambda ex: f"check.{ex.check}(")
    with pytest.raises(ValueError, match="0 cells"):
        course.broken_submission(course.nbgrader_notebook(lab(LABS[0])), lab(LABS[0]), lambda ex: "no such text")
