"""The directive ``chapter-modules``: the API reference of every chapter's experiment module,
``labkit.chapters.chNN``, one ``automodule`` each, in the order of :data:`labkit.chapters.CHAPTERS`,
which finds them; a new chapter's module appears in the API appendix with no edit of it."""

from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


class ChapterModules(Directive):
    has_content = False

    def run(self):
        from docutils import nodes

        from labkit import chapters

        lines = []
        for name in chapters.CHAPTERS:
            lines += [f".. automodule:: labkit.chapters.{name}", "   :members:", ""]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source="chapter-modules"), self.content_offset, node)
        return node.children


def setup(app):
    app.add_directive("chapter-modules", ChapterModules)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
