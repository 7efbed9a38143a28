"""labkit.course: student and solution editions, manifest, bad markers, the student book."""

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from labkit import course

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))


def _significant(lines):
    """Lines that carry content: no blanks, no comments."""
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


@pytest.fixture(scope="module")
def editions(tmp_path_factory):
    out = tmp_path_factory.mktemp("course")
    manifest = course.write_editions(out, ROOT / "labs")
    return out, manifest


def test_editions_and_manifest(editions):
    out, manifest = editions
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in (out / "student").iterdir()) == sorted(p.name for p in LABS)
    assert sorted(p.name for p in (out / "solutions").iterdir()) == sorted(p.name for p in LABS)
    for path in LABS:
        entry = next(lab for lab in manifest["labs"] if lab["file"] == path.name)
        source = nbformat.read(path, as_version=4)
        regions = [i for i, c in enumerate(source.cells) if course.has_solution(c.source)]
        assert [e["cell"] for e in entry["exercises"]] == regions  # every exercise is listed
        for e in entry["exercises"]:
            assert e["title"] and e["id"].startswith(path.stem)
            assert e["kind"] == "markdown" or e["check"]  # each code exercise names its check


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_student_edition_has_no_solution_line(editions, path):
    out, _ = editions
    source = nbformat.read(path, as_version=4)
    student = nbformat.read(out / "student" / path.name, as_version=4)
    solution = _significant(l for c in source.cells for l in course.solution_lines(c.source))
    kept = set(_significant(l for c in source.cells for l in course.stub_source(c.source).splitlines()))
    student_lines = set(_significant(l for c in student.cells for l in c.source.splitlines()))
    leaked = [l for l in solution if l in student_lines and l not in kept]
    assert solution and not leaked
    assert "BEGIN SOLUTION" not in json.dumps(student)
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert "widgets" not in student.metadata
    # the solution edition is complete, with outputs cleared
    solved = nbformat.read(out / "solutions" / path.name, as_version=4)
    assert [c.source for c in solved.cells] == [c.source for c in source.cells]
    assert all(c.get("outputs", []) == [] for c in solved.cells)


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_student_edition_stops_at_first_exercise_with_not_implemented(editions, path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out, manifest = editions
    nb = nbformat.read(out / "student" / path.name, as_version=4)
    first = next(lab for lab in manifest["labs"] if lab["file"] == path.name)["exercises"][0]
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "labs")}}
    )
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert err.value.ename == "NotImplementedError"
    failed = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert len(failed) == 1
    # the failure is the check right after the first exercise: everything before it ran cleanly
    next_code = next(i for i in range(first["cell"] + 1, len(nb.cells)) if nb.cells[i].cell_type == "code")
    assert failed[0] == next_code


def _bad_lab(tmp_path, source, name="broken.ipynb"):
    labs = tmp_path / "labs"
    labs.mkdir(exist_ok=True)
    shutil.copy(LABS[0], labs / LABS[0].name)
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Broken"),
            nbformat.v4.new_code_cell("import labkit"),
            nbformat.v4.new_code_cell(source),
            nbformat.v4.new_code_cell("labkit.check.lognorm_2(f)"),
        ]
    )
    nbformat.write(nb, labs / name)
    return labs


@pytest.mark.parametrize(
    "source,message",
    [
        ("def f(A):\n    ### BEGIN SOLUTION\n    return A\n", "never closed"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "nested"),
        ("x = 1\n### END SOLUTION\n", "without"),
    ],
)
def test_bad_markers_stop_with_notebook_and_cell_and_write_nothing(tmp_path, capsys, source, message):
    labs = _bad_lab(tmp_path, source)
    out = tmp_path / "out"
    assert course._main(["editions", str(out), "--labs", str(labs)]) == 2
    err = capsys.readouterr().err
    assert "broken.ipynb, cell 2" in err and message in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_markers_do_not_touch_earlier_editions(tmp_path):
    out = tmp_path / "out"
    course.write_editions(out, ROOT / "labs")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    labs = _bad_lab(tmp_path, "x = 1\n### END SOLUTION\n")
    with pytest.raises(course.MarkerError):
        course.write_editions(out, labs)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_exercise_without_check_is_an_error(tmp_path):
    labs = tmp_path / "labs"
    labs.mkdir()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"),
            nbformat.v4.new_code_cell("print(f())"),
        ]
    )
    nbformat.write(nb, labs / "nocheck.ipynb")
    with pytest.raises(course.MarkerError, match="nocheck.ipynb, cell 0.*check"):
        course.write_editions(tmp_path / "out", labs)


def test_markdown_answers_get_a_placeholder():
    md = "Why?\n\n### BEGIN SOLUTION\nBecause the margin is 1.1.\n### END SOLUTION\n"
    assert course.stub_source(md, markdown=True) == "Why?\n\n*Write your answer here.*"
