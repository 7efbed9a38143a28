"""Course tools: student and solution editions of the labs (book page *For instructors*).

Instructor sources in ``labs/`` hold each exercise's solution between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the markers nbgrader uses, so nbgrader and
otter-grader courses can take the sources as they are). An *exercise* is a cell with such a
region; its title is the nearest heading above it that names an exercise, and the code cell after
it must call ``labkit.check``.

    python -m labkit.course editions OUTDIR      # OUTDIR/student, OUTDIR/solutions, OUTDIR/manifest.json
    python -m labkit.course student-book         # the book without solutions, _build/student/html

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
    """One exercise of a lab: id, title, cell index, kind and the check it is graded by."""

    id: str
    title: str
    cell: int
    kind: str
    check: str | None


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
        check = None
        if cell.cell_type == "code":
            following = next((c for c in nb.cells[i + 1 :] if c.cell_type == "code"), None)
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
    import nbformat

    labs_dir, outdir = Path(labs_dir), Path(outdir)
    paths = sorted(labs_dir.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no lab notebooks in {labs_dir}.")
    labs = [read_lab(p) for p in paths]  # raises before anything is written
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
    outdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".editions-", dir=outdir))
    try:
        for sub in ("student", "solutions"):
            (staging / sub).mkdir()
        for lab in labs:
            nbformat.write(student_notebook(lab), staging / "student" / f"{lab.name}.ipynb")
            nbformat.write(solution_notebook(lab), staging / "solutions" / f"{lab.name}.ipynb")
        (staging / "manifest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        for name in ("student", "solutions", "manifest.json"):
            target = outdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


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
    args = parser.parse_args(argv)
    try:
        if args.command == "editions":
            manifest = write_editions(args.outdir, args.labs)
            n = sum(len(lab["exercises"]) for lab in manifest["labs"])
            print(
                f"{len(manifest['labs'])} labs, {n} exercises -> {args.outdir}/student, "
                f"{args.outdir}/solutions, {args.outdir}/manifest.json"
            )
        else:
            print(f"student edition: {build_student_book(args.out) / 'index.html'}")
    except (MarkerError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
