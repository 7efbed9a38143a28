"""Course tools: student and solution editions of the labs (book page *For instructors*).

Instructor sources in ``labs/`` hold each exercise's solution between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the markers nbgrader uses, so nbgrader and
otter-grader courses can take the sources as they are). An *exercise* is a cell with such a
region; its title is the nearest heading above it that names an exercise, and the code cell after
it must call ``labkit.check``.

    python -m labkit.course editions OUTDIR      # OUTDIR/student, OUTDIR/solutions, OUTDIR/manifest.json
    python -m labkit.course student-book         # the book without solutions, _build/student/html
    python -m labkit.course nbgrader DIR         # a ready nbgrader course: DIR/source/labNN/labNN.ipynb
    python -m labkit.course otter DIR [--hidden] # otter-assign notebooks: DIR/labNN/labNN.ipynb

Points come from one place, :data:`TIER_POINTS`, by the exercise's tier: every lab exercise
implements a function that its check grades, so its tier is *Implement*.

Every notebook is read and checked before anything is written; a marker that is not closed, is
nested, or closes nothing stops the command with the notebook and cell named, and nothing is
written.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = [
    "BEGIN",
    "END",
    "MarkerError",
    "Exercise",
    "Lab",
    "stub_source",
    "has_solution",
    "read_lab",
    "student_notebook",
    "solution_notebook",
    "write_editions",
    "TIER_POINTS",
    "nbgrader_notebook",
    "otter_notebook",
    "write_nbgrader",
    "write_otter",
    "BROKEN",
    "broken_submission",
    "expected_points",
    "round_trip_nbgrader",
    "round_trip_otter",
    "build_book",
    "build_student_book",
]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END_RE = re.compile(r"^\s*### END SOLUTION\s*$")
_CHECK_RE = re.compile(r"\bcheck\.(\w+)\(")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*Exercise.*)$", re.IGNORECASE | re.MULTILINE)
ROOT = Path(__file__).resolve().parents[1]


#: Points of an exercise by its tier (the tiers of the book's exercises; every lab exercise is graded
#: by a check and is of tier *Implement*). The one place to change what an exercise is worth.
TIER_POINTS = {"Understand": 1, "Derive": 2, "Implement": 2, "Explore": 1}


class MarkerError(ValueError):
    """Solution markers that do not pair up, or an exercise without a check cell."""


def has_solution(source: str) -> bool:
    """True when ``source`` holds a ``### BEGIN SOLUTION`` line."""
    return any(_BEGIN_RE.match(line) for line in source.splitlines())


def stub_source(source: str, *, where: str = "cell", markdown: bool = False) -> str:
    """Replace every solution region of ``source`` by a stub; keep everything else.

    Code regions become ``raise NotImplementedError()`` (indented like the BEGIN marker);
    with ``markdown=True`` they become a placeholder line for a written answer.
    """
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), start=1):
        begin, end = _BEGIN_RE.match(line), _END_RE.match(line)
        if begin:
            if inside:
                raise MarkerError(f"{where}, line {number}: nested '{BEGIN}'.")
            inside, indent = True, begin.group(1)
        elif end:
            if not inside:
                raise MarkerError(f"{where}, line {number}: '{END}' without '{BEGIN}'.")
            inside = False
            out.append(f"{indent}*Write your answer here.*" if markdown else f"{indent}raise NotImplementedError()")
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: '{BEGIN}' is never closed.")
    return "\n".join(out)


def solution_lines(source: str) -> list[str]:
    """The lines inside the solution regions of ``source`` (stripped)."""
    lines, inside = [], False
    for line in source.splitlines():
        if _BEGIN_RE.match(line):
            inside = True
        elif _END_RE.match(line):
            inside = False
        elif inside:
            lines.append(line.strip())
    return lines


@dataclass
class Exercise:
    """One exercise of a lab: id, title, cell index, kind, the check it is graded by and the index
    of the cell that calls it, its tier and its points (:data:`TIER_POINTS`)."""

    id: str
    title: str
    cell: int
    kind: str
    check: str | None
    check_cell: int | None = None
    tier: str = "Implement"

    @property
    def points(self) -> int:
        return TIER_POINTS[self.tier]


@dataclass
class Lab:
    """A lab notebook read and validated: its title and exercises."""

    path: Path
    title: str
    exercises: list = field(default_factory=list)
    notebook: object = None

    @property
    def name(self) -> str:
        return self.path.stem


def read_lab(path) -> Lab:
    """Read a lab notebook and validate its markers and check cells (raises MarkerError)."""
    import nbformat

    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises JSON, validation and encoding errors alike
        raise MarkerError(f"{path} is not a readable notebook ({type(err).__name__}: {str(err)[:200]}).") from None
    title, heading = path.stem, None
    lab = Lab(path=path, title=title, notebook=nb)
    for i, cell in enumerate(nb.cells):
        where = f"{path.name}, cell {i}"
        if cell.cell_type == "markdown":
            first = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if first and lab.title == path.stem:
                lab.title = first.group(1).strip()
            found = _HEADING_RE.findall(cell.source)
            if found:
                heading = found[-1].strip()
        stub_source(cell.source, where=where, markdown=cell.cell_type == "markdown")  # validates
        if not has_solution(cell.source):
            continue
        check = check_cell = None
        if cell.cell_type == "code":
            check_cell = next((j for j in range(i + 1, len(nb.cells)) if nb.cells[j].cell_type == "code"), None)
            following = nb.cells[check_cell] if check_cell is not None else None
            match = _CHECK_RE.search(following.source) if following is not None else None
            if match is None or has_solution(following.source):
                raise MarkerError(f"{where}: the exercise is not followed by a labkit.check cell.")
            check = match.group(1)
        number = len(lab.exercises) + 1
        lab.exercises.append(
            Exercise(
                id=f"{path.stem}.ex{number}",
                title=heading or f"Exercise {number}",
                cell=i,
                kind=cell.cell_type,
                check=check,
                check_cell=check_cell,
                tier="Implement" if cell.cell_type == "code" else "Understand",
            )
        )
    return lab


def _cleared(nb):
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def student_notebook(lab: Lab):
    """The student edition: solutions replaced by stubs, outputs and widget state cleared."""
    nb = _cleared(lab.notebook)
    for i, cell in enumerate(nb.cells):
        if has_solution(cell.source):
            cell.source = stub_source(
                cell.source, where=f"{lab.path.name}, cell {i}", markdown=cell.cell_type == "markdown"
            )
    return nb


def solution_notebook(lab: Lab):
    """The solution edition: the complete notebook with outputs cleared."""
    return _cleared(lab.notebook)


def write_editions(outdir, labs_dir=ROOT / "labs") -> dict:
    """Write ``student/``, ``solutions/`` and ``manifest.json`` into ``outdir``; return the manifest.

    All labs are read and validated first; on any error nothing is written. The three outputs
    replace earlier ones in ``outdir`` only once all are written.
    """
    labs, outdir = _labs(labs_dir), Path(outdir)
    manifest = {
        "labs": [
            {
                "name": lab.name,
                "title": lab.title,
                "file": f"{lab.name}.ipynb",
                "exercises": [asdict(e) for e in lab.exercises],
            }
            for lab in labs
        ]
    }
    files = {"manifest.json": json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"}
    for lab in labs:
        files[f"student/{lab.name}.ipynb"] = student_notebook(lab)
        files[f"solutions/{lab.name}.ipynb"] = solution_notebook(lab)
    _write_staged(outdir, files)
    return manifest


def _grade_id(exercise: Exercise) -> str:
    return exercise.id.replace(".", "-")


def nbgrader_notebook(lab: Lab):
    """The nbgrader source of ``lab``: outputs cleared; each exercise cell an autograded answer
    (``solution``, its markers nbgrader's own), each check cell a read-only autograder test worth
    the exercise's points; grade ids ``<lab>-exN`` and ``<lab>-exN-check``. Written answers
    (Markdown exercises) become manually graded answers."""
    nb = _cleared(lab.notebook)
    for ex in lab.exercises:
        meta = {"schema_version": 3, "grade_id": _grade_id(ex), "solution": True, "locked": False, "task": False}
        if ex.kind == "markdown":
            meta.update(grade=True, points=ex.points)
        else:
            meta.update(grade=False)
            nb.cells[ex.check_cell].metadata["nbgrader"] = {
                "schema_version": 3,
                "grade_id": f"{_grade_id(ex)}-check",
                "grade": True,
                "solution": False,
                "locked": True,
                "task": False,
                "points": ex.points,
            }
        nb.cells[ex.cell].metadata["nbgrader"] = meta
    return nb


NBGRADER_CONFIG = """\
# nbgrader configuration of the Lipschitz Flows labs, written by `python -m labkit.course nbgrader`.
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "lipschitz-flows"
# Lab cells train small networks: nbgrader's default of 30 s per cell is too short in book mode.
c.Execute.timeout = 600
"""


def _otter_cell(source: str):
    import nbformat

    return nbformat.v4.new_raw_cell(source)


def otter_notebook(lab: Lab, *, hidden: bool = False):
    """The otter-assign notebook of ``lab``: an assignment configuration, then every exercise as a
    question worth its points (the exercise cell its solution, with otter's ``# BEGIN SOLUTION``
    markers; its check as the question's test, hidden with ``hidden``), the other cells as they are.
    The lab's check cells become the tests, so otter's autograder grades with them."""
    import nbformat

    nb = _cleared(lab.notebook)
    by_cell = {ex.cell: ex for ex in lab.exercises}
    checks = {ex.check_cell for ex in lab.exercises}
    config = "\n".join(
        [
            "# ASSIGNMENT CONFIG",
            f"name: {lab.name}",
            "init_cell: true",
            "check_all_cell: false",
            "export_cell: false",
            "generate: true",
            "requirements: requirements.txt",
            "overwrite_requirements: true",
        ]
    )
    cells = [_otter_cell(config)]
    for i, cell in enumerate(nb.cells):
        if i in checks:
            continue
        ex = by_cell.get(i)
        if ex is None or ex.kind != "code":
            cells.append(cell)
            continue
        number = ex.id.rsplit(".ex", 1)[1]
        cells.append(_otter_cell(f"# BEGIN QUESTION\nname: ex{number}\npoints: {ex.points}"))
        cells.append(nbformat.v4.new_markdown_cell(f"**{ex.title}** ({ex.tier}, {ex.points} points)"))
        cells.append(_otter_cell("# BEGIN SOLUTION"))
        cell.source = re.sub(r"^(\s*)### (BEGIN|END) SOLUTION", r"\1# \2 SOLUTION", cell.source, flags=re.MULTILINE)
        cells.append(cell)
        cells.append(_otter_cell("# END SOLUTION"))
        cells.append(_otter_cell("# BEGIN TESTS"))
        calls = [line for line in nb.cells[ex.check_cell].source.splitlines() if _CHECK_RE.search(line)]
        cells.append(nbformat.v4.new_code_cell(("# HIDDEN\n" if hidden else "") + "\n".join(calls)))
        cells.append(_otter_cell("# END TESTS"))
        cells.append(_otter_cell("# END QUESTION"))
    nb.cells = cells
    return nb


#: What otter's autograder installs beside itself: the labs need labkit (and with it PyTorch); point
#: this at the course's copy of the repository (a wheel, a git URL or a path) before uploading the zip.
OTTER_REQUIREMENTS = "# labkit and its dependencies, for example:\n# labkit @ git+https://…/lipschitz-flows\n"


def _write_staged(outdir: Path, files: dict) -> None:
    """Write ``{relative path: notebook or text}`` into ``outdir`` through a staging folder, replacing
    only the paths named, once everything is written."""
    import nbformat

    outdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".course-", dir=outdir))
    try:
        for rel, content in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content, encoding="utf-8")
            else:
                nbformat.write(content, path)
        for top in {Path(rel).parts[0] for rel in files}:
            target = outdir / top
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging / top, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _labs(labs_dir) -> list:
    paths = sorted(Path(labs_dir).glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no lab notebooks in {labs_dir}.")
    return [read_lab(p) for p in paths]  # raises before anything is written


def write_nbgrader(outdir, labs_dir=ROOT / "labs") -> list:
    """Write a ready nbgrader course into ``outdir``: ``source/<lab>/<lab>.ipynb`` for every lab
    (:func:`nbgrader_notebook`) and ``nbgrader_config.py``. Then, in ``outdir``, ``nbgrader
    generate_assignment <lab>`` makes the student version and ``nbgrader autograde <lab>`` grades
    the submissions, with no hand edits. All labs are validated first; returns them."""
    labs = _labs(labs_dir)
    files = {f"source/{lab.name}/{lab.name}.ipynb": nbgrader_notebook(lab) for lab in labs}
    _write_staged(Path(outdir), {**files, "nbgrader_config.py": NBGRADER_CONFIG})
    return labs


def write_otter(outdir, labs_dir=ROOT / "labs", *, hidden: bool = False) -> list:
    """Write an otter-assign notebook per lab into ``outdir/<lab>/<lab>.ipynb`` (:func:`otter_notebook`)
    with a ``requirements.txt`` beside it. Then ``otter assign <lab>.ipynb dist`` makes the student
    and autograder versions and the Gradescope zip, and ``otter run -a dist/autograder/<zip>
    submission.ipynb`` scores a submission. Tests are public unless ``hidden``. Returns the labs."""
    labs = _labs(labs_dir)
    files = {}
    for lab in labs:
        files[f"{lab.name}/{lab.name}.ipynb"] = otter_notebook(lab, hidden=hidden)
        files[f"{lab.name}/requirements.txt"] = OTTER_REQUIREMENTS
    _write_staged(Path(outdir), files)
    return labs


#: What :func:`broken_submission` does to each exercise, by number; the others stay correct.
BROKEN = {1: "wrong", 2: "raises", 3: "tampered"}


def broken_submission(nb, lab: Lab, check_call):
    """``nb`` (a graded notebook that holds the solutions) broken as :data:`BROKEN` says, for the
    round trips of the graders: exercise 1 a wrong answer (its solution replaced by ``return None``),
    exercise 2 a cell that raises before it defines anything, exercise 3 a wrong answer whose check
    cell was replaced by a print of success. ``check_call(exercise)`` is the text that finds the
    submission's own check cell of an exercise (``check.<name>(`` in nbgrader, ``grader.check("exN")``
    in otter). The labs need at least four exercises, so that one stays correct."""
    if len(lab.exercises) <= max(BROKEN):
        raise ValueError(
            f"{lab.name} has {len(lab.exercises)} exercises; a broken submission needs at least "
            f"{max(BROKEN) + 1}, so that one stays correct."
        )
    nb = copy.deepcopy(nb)

    def cell_with(text):
        found = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
        if len(found) != 1:
            raise ValueError(f"{len(found)} cells of the submission hold {text!r}.")
        return found[0]

    for number, how in BROKEN.items():
        ex = lab.exercises[number - 1]
        lines = solution_lines(lab.notebook.cells[ex.cell].source)
        cell = cell_with(lines[0])
        if how == "raises":
            cell.source = 'raise RuntimeError("a submission that breaks here")\n' + cell.source
            continue
        kept, placed = [], False
        for line in cell.source.splitlines():
            if line.strip() in lines or re.match(r"^\s*#+ (BEGIN|END) SOLUTION", line):
                if not placed:
                    kept.append(re.match(r"^(\s*)", line).group(1) + "return None")
                    placed = True
                continue
            kept.append(line)
        cell.source = "\n".join(kept)
        if how == "tampered":
            cell_with(check_call(ex)).source = f'print("Exercise {number} passed")'
    return nb


def expected_points(lab: Lab, kind: str) -> list:
    """The points each exercise of ``lab`` must get from a grader: all for the ``"solution"``, none
    for the ``"stub"`` (the student version) and, for the ``"broken"`` submission, none where
    :data:`BROKEN` broke it and all elsewhere."""
    if kind == "solution":
        return [ex.points for ex in lab.exercises]
    if kind == "stub":
        return [0 for _ in lab.exercises]
    return [0 if number in BROKEN else ex.points for number, ex in enumerate(lab.exercises, start=1)]


def _tool_run(cmd, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900, env=env, stdin=subprocess.DEVNULL
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: pip install -e '.[grading]' (the quick start does).")
    return found


def round_trip_nbgrader(root, names, labs_dir=ROOT / "labs") -> dict:
    """Grade with nbgrader, in a new course at ``root``, the solution, the student version and the
    :func:`broken_submission` of each lab of ``names``: ``nbgrader generate_assignment`` and
    ``nbgrader autograde``, no hand edits. Returns ``{(lab, kind): points per exercise}``."""
    import nbformat
    from nbgrader.api import Gradebook

    root = Path(root)
    write_nbgrader(root, labs_dir)
    nbgrader, scores = _tool("nbgrader"), {}
    for name in names:
        lab = read_lab(Path(labs_dir) / f"{name}.ipynb")
        _tool_run([nbgrader, "generate_assignment", name, "--force"], root)
        source = nbformat.read(root / "source" / name / f"{name}.ipynb", as_version=4)
        submissions = {
            "solution": source,
            "stub": nbformat.read(root / "release" / name / f"{name}.ipynb", as_version=4),
            "broken": broken_submission(source, lab, lambda ex: f"check.{ex.check}("),
        }
        for who, nb in submissions.items():
            (root / "submitted" / who / name).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, root / "submitted" / who / name / f"{name}.ipynb")
        _tool_run([nbgrader, "autograde", name, "--force"], root)
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            for who in submissions:
                by_id = {g.name: g.score for g in gb.find_submission_notebook(name, name, who).grades}
                scores[name, who] = [by_id[f"{_grade_id(ex)}-check"] for ex in lab.exercises]
    return scores


def round_trip_otter(root, names, labs_dir=ROOT / "labs", *, run_tests: bool = False) -> dict:
    """Grade with otter-grader, in ``root``, the solution, the student version and the
    :func:`broken_submission` of each lab of ``names``: ``otter assign`` (``--no-run-tests`` unless
    ``run_tests``), then ``otter run`` with the autograder zip on each. Returns ``{(lab, kind): points
    per exercise}``."""
    import nbformat

    root = Path(root)
    write_otter(root, labs_dir)
    otter, scores = _tool("otter"), {}
    for name in names:
        lab, folder = read_lab(Path(labs_dir) / f"{name}.ipynb"), root / name
        _tool_run([otter, "assign", f"{name}.ipynb", "dist", *([] if run_tests else ["--no-run-tests"])], folder)
        (zipfile,) = (folder / "dist" / "autograder").glob("*.zip")
        solution = nbformat.read(folder / "dist" / "autograder" / f"{name}.ipynb", as_version=4)
        submissions = {
            "solution": solution,
            "stub": nbformat.read(folder / "dist" / "student" / f"{name}.ipynb", as_version=4),
            "broken": broken_submission(solution, lab, lambda ex: f'grader.check("ex{ex.id.rsplit(".ex", 1)[1]}")'),
        }
        for who, nb in submissions.items():
            path = folder / "submissions" / who / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, path)
            _tool_run([otter, "run", "-a", zipfile, "-o", path.parent, path], folder)
            tests = json.loads((path.parent / "results.json").read_text(encoding="utf-8"))["tests"]
            by_name = {t["name"]: t["score"] for t in tests if "score" in t}
            scores[name, who] = [by_name[f"ex{k}"] for k in range(1, len(lab.exercises) + 1)]
    return scores


def _build(src: Path, out: Path, config_changes, extra_args) -> Path:
    """Write ``src/_config.yml`` (the book's, changed by ``config_changes(config)``), build ``src``
    with ``-W -n`` into ``out`` and move the HTML to ``out/html``; returns that folder."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    config_changes(config)
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [
        str(jb) if jb.exists() else "jupyter-book",
        "build",
        str(src),
        "--path-output",
        str(out),
        "-W",
        "-n",
        "--keep-going",
        *extra_args,
    ]
    subprocess.run(cmd, check=True)
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    os.replace(out / "_build" / "html", html)
    return html


def _stage(out: Path, labs: Path) -> Path:
    """A copy of the book's sources in ``out/src`` with ``labs/`` taken from ``labs``."""
    src = out / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("book", "labkit"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "_build"))
    shutil.copy(ROOT / "_toc.yml", src / "_toc.yml")
    shutil.copytree(labs, src / "labs")
    return src


def _execution(config, *, labs: bool, cache) -> None:
    execute = config.setdefault("execute", {})
    if not labs:
        execute["exclude_patterns"] = ["labs/*"]
    if cache is not None:  # pages whose code is unchanged are not executed again (same mode only!)
        execute["execute_notebooks"] = "cache"
        execute["cache"] = str(cache)


def build_book(out, *, labs=ROOT / "labs", execute_labs: bool = True, cache=None, extra_args=()) -> Path:
    """Build the instructor edition from a staging copy of the sources in ``out/src`` with the labs
    taken from ``labs``: executed by the build (``execute_labs``), or shown as they are (for labs
    that were executed already, with their outputs). With ``cache`` (a folder) the pages are
    executed through that execution cache, so a later build with the same cache, such as
    :func:`build_student_book`, does not execute them again. The cache ignores ``LABKIT_MODE``:
    use one cache per mode. Returns the HTML folder ``out/html``."""
    out = Path(out)
    src = _stage(out, Path(labs))
    return _build(src, out, lambda c: _execution(c, labs=execute_labs, cache=cache), extra_args)


def build_student_book(out=ROOT / "_build" / "student", *, extra_args=(), cache=None) -> Path:
    """Build the student edition of the book: exercise solutions hidden, labs as student editions.

    A staging copy of the sources is made in ``out/src`` with ``labs/`` replaced by the student
    notebooks (shown, not executed) and ``hide_solutions`` switched on; the HTML lands in
    ``out/html``. Returns that folder. ``cache``: as in :func:`build_book`.
    """
    out = Path(out)
    write_editions(out / "editions")
    src = _stage(out, out / "editions" / "student")

    def changes(config):
        config["title"] = f"{config.get('title', '')} (student edition)"
        _execution(config, labs=False, cache=cache)
        config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True

    return _build(src, out, changes, extra_args)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labkit.course", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ed = sub.add_parser("editions", help="write student and solution editions and a manifest")
    ed.add_argument("outdir", type=Path)
    ed.add_argument("--labs", type=Path, default=ROOT / "labs", help="folder of instructor sources")
    sb = sub.add_parser("student-book", help="build the book without solutions")
    sb.add_argument("--out", type=Path, default=ROOT / "_build" / "student")
    ng = sub.add_parser("nbgrader", help="write a ready nbgrader course (source/ and nbgrader_config.py)")
    ng.add_argument("outdir", type=Path)
    ng.add_argument("--labs", type=Path, default=ROOT / "labs", help="folder of instructor sources")
    ot = sub.add_parser("otter", help="write otter-assign notebooks, one folder per lab")
    ot.add_argument("outdir", type=Path)
    ot.add_argument("--labs", type=Path, default=ROOT / "labs", help="folder of instructor sources")
    ot.add_argument("--hidden", action="store_true", help="hide the tests from students (default: public)")
    args = parser.parse_args(argv)
    try:
        if args.command == "editions":
            manifest = write_editions(args.outdir, args.labs)
            n = sum(len(lab["exercises"]) for lab in manifest["labs"])
            print(
                f"{len(manifest['labs'])} labs, {n} exercises -> {args.outdir}/student, "
                f"{args.outdir}/solutions, {args.outdir}/manifest.json"
            )
        elif args.command == "nbgrader":
            labs = write_nbgrader(args.outdir, args.labs)
            print(
                f"{len(labs)} labs -> {args.outdir}/source; then, in {args.outdir}: nbgrader generate_assignment "
                f"{labs[0].name}, and nbgrader autograde {labs[0].name}"
            )
        elif args.command == "otter":
            labs = write_otter(args.outdir, args.labs, hidden=args.hidden)
            print(f"{len(labs)} labs -> {args.outdir}/<lab>/<lab>.ipynb; then: otter assign <lab>.ipynb dist")
        else:
            print(f"student edition: {build_student_book(args.out) / 'index.html'}")
    except (MarkerError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
