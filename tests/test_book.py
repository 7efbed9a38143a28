"""The book, built once in smoke mode: every page and every lab executed exactly once.

1. Each lab is executed in a kernel, cell by cell. At each exercise the stub (the solution
   replaced by ``raise NotImplementedError()``) runs first and the check cell after it must fail
   with that ``NotImplementedError``; then the solution runs and the check must pass. Every
   exercise must be followed by a check cell. The executed labs keep their outputs.
2. The instructor edition is built with ``-W -n`` from those executed labs (not executed again)
   and the chapter pages, executed through an execution cache (``raise_on_error``: a failing
   cell, such as a ``verify`` of a broken certificate, fails the build).
3. The student edition is built with ``-W -n`` through the same cache, so the pages are not
   executed again; none of its pages shows a solution.

With ``LABKIT_BOOK_OUT`` set (CI sets it), the instructor HTML is kept there.
"""

import copy
import html
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from labkit import course

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
EXERCISE_ID = r'<div class="exercise[^"]*" id="([^"]+)"'


def _is_check(source):
    return "check." in source and not course.has_solution(source)


def execute_lab(path: Path, out: Path) -> nbformat.NotebookNode:
    """Execute the lab at ``path`` with the stub-then-solution test of every exercise (module
    docstring); write the executed notebook to ``out`` and return it."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    exercises = 0
    with client.setup_kernel():
        for k, i in enumerate(code):
            cell = nb.cells[i]
            if course.has_solution(cell.source):
                exercises += 1
                assert k + 1 < len(code) and _is_check(nb.cells[code[k + 1]].source), (
                    f"{path.name}: exercise cell {i} is not followed by a check cell"
                )
                stub = nbformat.v4.new_code_cell(course.stub_source(cell.source))
                client.execute_cell(stub, i, store_history=False)
                check = copy.deepcopy(nb.cells[code[k + 1]])
                with pytest.raises(CellExecutionError) as err:
                    client.execute_cell(check, code[k + 1], store_history=False)
                assert err.value.ename == "NotImplementedError", (
                    f"{path.name}: the check after cell {i} did not fail on the stub with NotImplementedError"
                )
            client.execute_cell(cell, i)
    assert exercises >= 1, f"{path.name} has no exercise"
    nbformat.write(nb, out)
    return nb


def _significant(lines):
    """Lines that carry content: no blanks, no comments."""
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def _visible_text(path):
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_book_and_student_edition_build_in_smoke_mode(tmp_path):
    assert os.environ.get("LABKIT_MODE") == "smoke", "the book test runs in smoke mode (conftest sets it)"
    labs = tmp_path / "labs"
    labs.mkdir()
    for path in LABS:
        execute_lab(path, labs / path.name)
    cache = tmp_path / "cache"

    book = course.build_book(tmp_path / "book", labs=labs, execute_labs=False, cache=cache)
    pages = {p.relative_to(book).as_posix(): _visible_text(p) for p in book.rglob("*.html")}
    for page in (
        "book/ch00_foundations.html",
        "book/ch01_lognorm.html",
        "book/ch02_clip.html",
        "book/ch04_convex.html",
        "book/ch05_structured.html",
        "book/ch06_bench.html",
        "labs/lab00_foundations.html",
        "labs/lab05_structured.html",
        "labs/lab06_bench.html",
    ):
        assert page in pages, f"{page} was not built"
    for name, text in pages.items():  # every glued number and every table came out of a run
        if name == "book/api.html":  # report.glue_all's docstring shows the syntax
            continue
        assert "{glue" not in text and "glue:text" not in text, f"{name} shows an unresolved glue reference"
    assert "Full mode: cpu" in pages["book/ch01_lognorm.html"]  # the committed record is shown
    # numbered by the table of contents, with the chapter numbers of the file names
    assert "1.5. Reproduction" in pages["book/ch01_lognorm.html"]
    assert "4.2.1. Certificates" in pages["book/ch04_convex.html"]
    # theorem-like directives take the chapter number of the file name too
    assert "Definition 2.1" in pages["book/ch02_clip.html"] and "Definition 3.1" in pages["book/ch03_snode.html"]
    assert "Definition 4.1" in pages["book/ch04_convex.html"] and "Definition 5.1" not in pages["book/ch04_convex.html"]
    ch05_page = pages["book/ch05_structured.html"]
    assert "Definition 5.1" in ch05_page and "Theorem 5.1" in ch05_page
    ch06_page = pages["book/ch06_bench.html"]
    assert "Definition 6.1" in ch06_page and "Proposition 6.1" in ch06_page and "VIOLATION" not in ch06_page
    assert "No full-mode record yet" in ch06_page or "Full mode" in ch06_page
    assert "0. Foundations" in pages["book/ch01_lognorm.html"]  # the link to the previous chapter
    assert "| data |" not in pages["book/ch01_lognorm.html"]  # tables are rendered, not shown as source
    assert pages["labs/lab00_foundations.html"].count("Exercise 1 passed") >= 2  # source and executed output
    exercises = {  # every exercise of the instructor edition, by page: it must be in the student edition
        p.relative_to(book).as_posix(): set(
            re.findall(r'<div class="exercise[^"]*" id="([^"]+)"', p.read_text(encoding="utf-8"))
        )
        for p in book.rglob("*.html")
    }
    lab_exercises = {
        name: re.findall(r"Exercise \d+ ·[^\n<]*", text) for name, text in pages.items() if name.startswith("labs/")
    }
    assert sum(len(ids) for ids in exercises.values()) >= 15 and sum(map(len, lab_exercises.values())) >= 4
    if os.environ.get("LABKIT_BOOK_OUT"):
        target = Path(os.environ["LABKIT_BOOK_OUT"])
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(book, target)

    student = course.build_student_book(tmp_path / "student", cache=cache)
    for name, ids in exercises.items():
        source = (student / name).read_text(encoding="utf-8") if ids else ""
        missing = sorted(i for i in ids if f'id="{i}"' not in source)
        assert not missing, f"the student edition of {name} lacks the exercises {missing}"
    for name, titles in lab_exercises.items():
        text = _visible_text(student / name)
        assert all(t in text for t in titles), f"the student edition of {name} lacks an exercise of {titles}"
    pages = {p: _visible_text(p) for p in student.rglob("*.html")}
    assert any("student edition" in t for t in pages.values())
    assert not (student / "_sources").exists()
    distinctive = []
    for path in LABS:
        nb = nbformat.read(path, as_version=4)
        shared = "\n".join(course.stub_source(c.source) for c in nb.cells)
        distinctive += [
            l
            for l in _significant(l for c in nb.cells for l in course.solution_lines(c.source))
            if len(l) >= 12 and l not in shared
        ]
    # chapter exercises: the first line of each {solution} block
    for md in (ROOT / "book").glob("*.md"):
        for block in re.findall(r"```\{solution\}[^\n]*\n(?::[^\n]*\n)*\n?(.*?)```", md.read_text(), re.S):
            first = next(l.strip() for l in block.splitlines() if l.strip())
            distinctive.append(re.sub(r"\$([^$]*)\$", r"\\(\1\\)", first).strip()[:60])  # math as the HTML shows it
    assert len(distinctive) >= 5
    for line in distinctive:
        hits = [p.name for p, t in pages.items() if line in t]
        assert not hits, f"solution text {line!r} appears in {hits}"
    lab_page = (student / "labs" / f"{LABS[0].stem}.html").read_text(encoding="utf-8")
    assert "blob/student/labs/" in lab_page  # launch links open the student notebooks
