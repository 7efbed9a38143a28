"""otter-grader round trip on two labs, with the real tool: `python -m labkit.course otter`'s
notebooks, then `otter assign` (student and autograder versions, the Gradescope zip) and `otter run`
on each submission (labkit.course.round_trip_otter). The solution gets full marks, the student
version none, and a submission with a wrong answer, an exercise that raises and a tampered check
cell loses exactly those exercises' points: otter grades with the autograder's tests."""

from pathlib import Path

import pytest

from labkit import course

ROOT = Path(__file__).resolve().parents[1]
LABS = ["lab00_foundations", "lab04_convex"]


def lab(name):
    return course.read_lab(ROOT / "labs" / f"{name}.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("otter")
    return root, course.round_trip_otter(root, LABS)


@pytest.mark.parametrize("name", LABS)
@pytest.mark.parametrize("kind", ["solution", "stub", "broken"])
def test_otter_scores_each_exercise(graded, name, kind):
    _, scores = graded
    assert scores[name, kind] == course.expected_points(lab(name), kind)


def test_otter_assign_makes_the_student_version_and_the_gradescope_zip(graded):
    root, _ = graded
    for name in LABS:
        student = (root / name / "dist" / "student" / f"{name}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in student and "grader.check(" in student
        for ex in lab(name).exercises:  # no line of a solution reaches the student version
            lines = course.solution_lines(lab(name).notebook.cells[ex.cell].source)
            assert not any(len(line) > 20 and line in student for line in lines), ex.id
        assert list((root / name / "dist" / "autograder").glob("*.zip"))


def test_hidden_tests_are_marked_hidden():
    def tests(nb):
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        return [s for s in code if s.removeprefix("# HIDDEN\n").startswith("check.")]

    hidden, public = course.otter_notebook(lab(LABS[0]), hidden=True), course.otter_notebook(lab(LABS[0]))
    assert len(tests(hidden)) == len(lab(LABS[0]).exercises)
    assert all(t.startswith("# HIDDEN\n") for t in tests(hidden))
    assert not any(t.startswith("# HIDDEN") for t in tests(public))
