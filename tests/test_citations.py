"""Every pointer from the code into the book resolves.

labkit's docstrings and comments cite the book as ``§N.M`` (a numbered section), as
``:prf:ref:`label``` (a theorem, definition or algorithm) or as ``(Preface, *Heading*)``. The
section numbers are the ones the build shows (``_toc.yml`` numbers the chapters,
``book/_ext/chapter_numbers.py`` takes the chapter number from the file name), computed here from
the pages' headings. The old style, a chapter and an italic title, is refused: a title can change
without anyone noticing. The ``§`` pointers of the prose are checked the same way.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
PRF = re.compile(r":prf:ref:`([\w-]+)`")
PREFACE = re.compile(r"\(Preface, \*([^*]+)\*\)")
OLD_STYLE = re.compile(r"\(Chapter \d+[,;)]|Chapter \d+, \*")


def _prose(text: str) -> str:
    """The page without its fenced blocks (code cells, directives' code, outputs)."""
    return re.sub(r"^(`{3,}|~{3,})[^\n]*\n.*?^\1\s*$", "", text, flags=re.M | re.S)


def sections() -> set:
    """The numbers of every chapter, section and subsection, as the build numbers them."""
    out = set()
    for page in sorted((ROOT / "book").glob("ch*_*.md")):
        chapter = int(re.match(r"ch(\d+)_", page.name).group(1))
        out.add(str(chapter))
        counts = [0, 0]
        for hashes, _ in re.findall(r"^(#{2,3}) (.+)$", _prose(page.read_text(encoding="utf-8")), flags=re.M):
            level = len(hashes) - 2
            counts[level] += 1
            counts[level + 1 :] = [0] * (1 - level)
            out.add(".".join(str(n) for n in [chapter, *counts[: level + 1]]))
    return out


def labels() -> set:
    return {
        m
        for page in (ROOT / "book").glob("*.md")
        for m in re.findall(r"^:label: ([\w-]+)\s*$", page.read_text(encoding="utf-8"), flags=re.M)
    }


def preface_headings() -> set:
    text = (ROOT / "book" / "preface.md").read_text(encoding="utf-8")
    return {h.strip() for h in re.findall(r"^#{2,3} (.+)$", text, flags=re.M)}


CODE = sorted(p for p in (ROOT / "labkit").rglob("*.py"))


def test_the_section_numbers_are_the_pages_headings():
    numbers = sections()
    # known answers from the current pages: Chapter 1 has seven sections, §4.2 two subsections
    assert {"0.12", "1.5", "1.7", "2.8", "3.8", "4.2.1", "4.2.2", "4.7"} <= numbers
    assert "1.8" not in numbers and "7.1" not in numbers and "4.2.3" not in numbers


@pytest.mark.parametrize("path", CODE, ids=[str(p.relative_to(ROOT)) for p in CODE])
def test_every_pointer_of_the_code_resolves(path):
    text = path.read_text(encoding="utf-8")
    numbers, known, preface = sections(), labels(), preface_headings()
    bad = [f"§{s}" for s in SECTION.findall(text) if s not in numbers]
    bad += [f":prf:ref:`{label}`" for label in PRF.findall(text) if label not in known]
    bad += [f"(Preface, *{h}*)" for h in PREFACE.findall(text) if h not in preface]
    bad += [f"old-style citation {m.group(0)!r}" for m in OLD_STYLE.finditer(text)]
    assert not bad, f"{path.name}: pointers that match nothing in the book: {bad}"


def test_every_section_pointer_of_the_prose_resolves():
    numbers = sections()
    bad = [
        (page.name, s)
        for page in sorted((ROOT / "book").glob("*.md"))
        for s in SECTION.findall(_prose(page.read_text(encoding="utf-8")))
        if s not in numbers
    ]
    assert not bad, f"§ pointers in the prose that match no heading: {bad}"


def test_the_checker_catches_what_it_is_for():
    numbers, known = sections(), labels()
    assert "9.1" not in numbers and "thm-nonexistent" not in known
    assert OLD_STYLE.search("(Chapter 4, *Certificates*)") and OLD_STYLE.search("loop (Chapter 0).")
    assert not OLD_STYLE.search("Chapter 2's evaluation of one model")
