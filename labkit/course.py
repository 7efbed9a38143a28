"""Course tools: student editions of the labs (For instructors).

Instructor sources in ``labs/`` hold each exercise's solution between the lines
``### BEGIN SOLUTION`` and ``### END SOLUTION`` (the markers nbgrader and otter-grader share).
:func:`stub_source` replaces each region by ``raise NotImplementedError()`` at the region's
indentation; unbalanced or nested markers are an error that names the place.
"""
from __future__ import annotations

import re

__all__ = ["BEGIN", "END", "MarkerError", "stub_source", "has_solution"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_BEGIN_RE = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END_RE = re.compile(r"^\s*### END SOLUTION\s*$")


class MarkerError(ValueError):
    """Solution markers that do not pair up."""


def has_solution(source: str) -> bool:
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
            out.append(f"{indent}_Write your answer here._" if markdown
                       else f"{indent}raise NotImplementedError()")
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: '{BEGIN}' is never closed.")
    return "\n".join(out)
