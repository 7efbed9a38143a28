"""Chapter numbers from the file names: ``book/chNN_*.md`` is Chapter NN.

The table of contents numbers the chapters and their sections (``numbered: true`` in
``_toc.yml``), so no number is typed by hand in a heading. Sphinx counts the numbered chapters
1, 2, 3, …; the book's chapters are 0, 1, 2, 4, … (each after its paper, with room for the ones
still to come), so this extension replaces the first component of every section number of a
chapter page by the number in its file name, after Sphinx has assigned them, and does the same
for the numbers of figures, tables and the theorem-like directives (``Definition 2.1``).
``tests/test_citations.py`` computes the same numbers from the pages, so a ``§N.M`` in a
docstring or in the prose can be checked against the headings.
"""

import re

_CHAPTER = re.compile(r"(?:^|/)ch(\d+)_")


def chapter_of(docname: str):
    """The chapter number of a page, or ``None`` for a page that is not a chapter."""
    match = _CHAPTER.search(docname)
    return int(match.group(1)) if match else None


def _renumbered(number, chapter):
    return number if not number else type(number)([chapter, *number[1:]])


def _renumber(app, env):
    from docutils import nodes

    for docname, numbers in env.toc_secnumbers.items():
        chapter = chapter_of(docname)
        if chapter is None:
            continue
        # the numbers of the page's own headings, the ones stamped on its entries in the tables of
        # contents (sidebar), and the one on its title (previous / next links)
        env.toc_secnumbers[docname] = {anchor: _renumbered(number, chapter) for anchor, number in numbers.items()}
        for reference in env.tocs[docname].findall(nodes.reference):
            if reference.get("secnumber"):
                reference["secnumber"] = _renumbered(reference["secnumber"], chapter)
        title = env.titles.get(docname)
        if title is not None and title.get("secnumber"):
            title["secnumber"] = _renumbered(title["secnumber"], chapter)
    # numbered figures, tables and proof directives (Definition 2.1, Theorem 4.1, …) carry the
    # chapter's section number as their first component too
    for docname, kinds in env.toc_fignumbers.items():
        chapter = chapter_of(docname)
        if chapter is None:
            continue
        for kind, numbers in kinds.items():
            kinds[kind] = {node_id: _renumbered(number, chapter) for node_id, number in numbers.items()}
    return []


def setup(app):
    app.connect("env-get-updated", _renumber, priority=900)  # after Sphinx's own numbering (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
