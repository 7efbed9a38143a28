"""Chapter numbers from the file names: ``book/chNN_*.md`` is Chapter NN.

The table of contents numbers the chapters and their sections (``numbered: true`` in
``_toc.yml``), so no number is typed by hand in a heading. Sphinx counts the numbered chapters
1, 2, 3, …; the book's chapters are 0, 1, 2, 4, … (each after its paper, with room for the ones
still to come), so this extension replaces the first component of every section number of a
chapter page by the number in its file name, after Sphinx has assigned them.
``tests/test_citations.py`` computes the same numbers from the pages, so a ``§N.M`` in a
docstring or in the prose can be checked against the headings.
"""

import re

_CHAPTER = re.compile(r"(?:^|/)ch(\d+)_")


def chapter_of(docname: str):
    """The chapter number of a page, or ``None`` for a page that is not a chapter."""
    match = _CHAPTER.search(docname)
    return int(match.group(1)) if match else None


def _renumber(app, env):
    for docname, numbers in env.toc_secnumbers.items():
        chapter = chapter_of(docname)
        if chapter is None:
            continue
        env.toc_secnumbers[docname] = {anchor: (chapter, *number[1:]) if number else number
                                       for anchor, number in numbers.items()}
    return []


def setup(app):
    app.connect("env-get-updated", _renumber, priority=900)  # after Sphinx's own numbering (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
