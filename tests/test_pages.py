"""The pages' source: directive fences that balance, no exercise inside a solution, and a notation
page that covers every symbol the chapters use, each with one meaning.

A MyST directive is opened by a fence (three or more backticks or colons) with ``{name}`` and
closed by a bare fence of the same character, at least as long. A directive opened *inside*
another with a fence as long as the outer one's means the outer fence was never closed (MyST
would then swallow the rest of the page into it: the class of the referee's error E5, where an
exercise ended up inside the previous solution's dropdown and so vanished from the student
edition).
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
PAGES = sorted(BOOK.glob("*.md"))
CHAPTERS = sorted(BOOK.glob("ch[0-9][0-9]_*.md"))
LABS = sorted((ROOT / "labs").glob("*.ipynb"))

#: Directives whose body is not Markdown: nothing inside them opens a directive.
LITERAL = {"code-cell", "code", "code-block", "literalinclude", "math", "raw"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})(.*)$")


def fence_problems(text: str, where: str = "") -> list[str]:
    """The fence errors of one Markdown text: unclosed or unmatched fences, a directive opened
    inside another with a fence at least as long (the outer one was not closed), and an exercise
    nested inside a solution or another exercise."""
    problems, stack = [], []  # stack of (char, length, name, line)
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if not m:
            continue
        fence, info = m.group(1), m.group(2).strip()
        char, length = fence[0], len(fence)
        top = stack[-1] if stack else None
        closes = top is not None and not info and char == top[0] and length >= top[1]
        if top is not None and top[2] in LITERAL:
            if closes:
                stack.pop()
            continue
        if closes:
            stack.pop()
            continue
        if not info:  # a bare fence that closes nothing opens a plain code block
            if char == ":":
                problems.append(f"{where}:{number}: a bare ':::' fence closes nothing")
            stack.append((char, length, "code", number))
            continue
        name = re.match(r"\{([^}]*)\}", info)
        name = name.group(1) if name else "code"
        for outer in stack:
            if outer[0] == char and length >= outer[1]:
                problems.append(
                    f"{where}:{number}: {{{name}}} is opened inside {{{outer[2]}}} (line {outer[3]}) with a fence "
                    f"as long as its own: the {{{outer[2]}}} is not closed"
                )
                break
        if name == "exercise":
            for outer in stack:
                if outer[2] in ("solution", "exercise"):
                    problems.append(f"{where}:{number}: an exercise inside the {{{outer[2]}}} of line {outer[3]}")
        stack.append((char, length, name, number))
    problems += [f"{where}:{line}: {{{name}}} is never closed" for _, _, name, line in stack]
    return problems


def _markdown_sources():
    for page in PAGES:
        yield page.relative_to(ROOT).as_posix(), page.read_text(encoding="utf-8")
    for lab in LABS:
        for i, cell in enumerate(json.loads(lab.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                yield f"{lab.relative_to(ROOT).as_posix()} cell {i}", "".join(cell["source"])


@pytest.mark.parametrize("where,text", list(_markdown_sources()), ids=lambda v: v if len(v) < 60 else "")
def test_fences_balance_and_no_exercise_hides_in_a_solution(where, text):
    assert fence_problems(text, where) == []


def test_the_fence_check_catches_the_class_of_e5():
    broken = (
        "```{exercise} One\n:label: a\nText\n```\n\n```{solution} a\n:class: dropdown\nAnswer\n"
        "```{exercise} Two\n:label: b\nText\n```\n"
    )
    problems = fence_problems(broken)
    assert any("not closed" in p for p in problems) and any("inside the {solution}" in p for p in problems)
    nested = "````{solution} a\n```{exercise} b\nText\n```\n````\n"
    assert any("inside the {solution}" in p for p in fence_problems(nested))
    assert any("never closed" in p for p in fence_problems("```{note}\ntext\n"))
    fine = "````{prf:proof}\ntext\n```{code-cell} ipython3\n```{not a fence inside code}\n```\n````\n"
    assert fence_problems(fine) == []


# --- notation -----------------------------------------------------------------------------------

#: Macros that are grammar, not symbols: relations, operators, delimiters, spacing, big operators,
#: fonts and accents that make no new symbol.
_GRAMMAR = r"""\le \ge \ne \in \notin \subset \subseteq \to \mapsto \iff \approx \lesssim \equiv \preceq \succeq \mid
    \cdot \circ \times \pm \mp \ast \star \top \infty \partial \nabla \dots \ldots \cdots \downarrow \leftarrow
    \rightarrow \sum \prod \int \max \min \sup \inf \lim \limsup \arg \exp \log \det \tanh \sin \cos \sinh \cosh \odot
    \frac \tfrac \dfrac \sqrt \big \Big \bigl \bigr \left \right \lVert \rVert \lvert \rvert \langle \rangle
    \quad \qquad \ker \mathrel \text \mathrm \rm \operatorname \dot \boldsymbol \mathbf \begin \end \limits"""
GRAMMAR = set(_GRAMMAR.split())
_DECORATIONS = r"\\(?:hat|bar|tilde|underline|overline)"


def math_spans(markdown: str) -> list[str]:
    """The math of a page's prose: ``$…$`` and ``$$…$$``, outside code cells, code blocks and
    indented code examples (fences tracked as in :func:`fence_problems`)."""
    keep, stack = [], []
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        literal = bool(stack) and stack[-1][2] in LITERAL | {"code"}
        if m:
            fence, info = m.group(1), m.group(2).strip()
            top = stack[-1] if stack else None
            if top is not None and not info and fence[0] == top[0] and len(fence) >= top[1]:
                stack.pop()
                continue
            if not literal:
                name = re.match(r"\{([^}]*)\}", info)
                stack.append((fence[0], len(fence), name.group(1) if name else "code"))
                continue
        if literal or (line.startswith("    ") and "$" not in line):
            continue
        keep.append(line)
    text = re.sub(r"`[^`\n]*`", " ", "\n".join(keep))  # inline code and roles
    return [a or b for a, b in re.findall(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", text, re.S)]


def symbols(tex: str) -> set[str]:
    """The symbols of a math span: Greek letters and other symbol macros, calligraphic and
    blackboard letters, Latin letters; a decorated letter (hat, bar, tilde, underline) and a
    starred or subscripted log norm or ℓ are symbols of their own."""
    tex = re.sub(r"\\(?:operatorname|text|mathrm|rm|mathbf)\s*\{[^}]*\}", " ", tex)
    tex = re.sub(r"\{\\rm [^}]*\}", " ", tex)
    tex = re.sub(r"\\r(Vert|angle)_(?:\{[^}]*\}|\\?\w)", r"\\r\1", tex)  # a norm's index is part of the norm
    tex = re.sub(r"\\frac\s*\{?d\}?\s*\{d[a-z]\}", " ", tex)  # d/dt
    out = set()
    patterns = [  # (pattern, how the symbol is written)
        (rf"({_DECORATIONS})\s*\{{?(\\[A-Za-z]+|[A-Za-z])\}}?", lambda m: f"{m[1]}{{{m[2]}}}"),
        (r"\\(mu|ell)_(\{[^}]*\}|\\infty|[0-9A-Za-z])", lambda m: f"\\{m[1]}_{m[2].strip('{}')}"),
        (r"\\mu\^\\star", lambda m: r"\mu^\star"),
        (r"\\(mathcal|mathbb)\s*\{?([A-Za-z])\}?", lambda m: f"\\{m[1]}{{{m[2]}}}"),
        (r"(?<![A-Za-z\\])C\^(1|\{1\})", lambda m: "C^1"),
        (r"(?<![A-Za-z\\])D\^\+", lambda m: "D^+"),
        (r"(?<![A-Za-z\\])M_f", lambda m: "M_f"),
        (r"\\lambda_\{?\\max\}?", lambda m: r"\lambda_{\max}"),
    ]
    for pattern, name in patterns:
        out |= {name(m) for m in re.finditer(pattern, tex)}
        tex = re.sub(pattern, " ", tex)
    out |= {m.group(0) for m in re.finditer(r"\\[A-Za-z]+", tex)} - GRAMMAR
    tex = re.sub(r"\\[A-Za-z]+", " ", tex)
    out |= {m.group(1) for m in re.finditer(r"(?<![A-Za-z])([A-Za-z])(?![A-Za-z])", tex)}
    return out


def notation_tables() -> dict[str, list[tuple[set, str]]]:
    """The notation page's tables by scope: ``"book"`` for the table that holds throughout, and
    ``"ch00"`` … for each chapter's own; each a list of (symbols of the first column, meaning)."""
    tables, scope = {}, None
    for line in (BOOK / "notation.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^##\s+(.*)", line)
        if heading:
            chapter = re.search(r"Chapter (\d+)", heading.group(1))
            scope = f"ch{int(chapter.group(1)):02d}" if chapter else "book"
            tables.setdefault(scope, [])
        elif scope and line.startswith("|") and not re.match(r"^\|\s*-", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "symbol":
                continue
            syms = set().union(*(symbols(m) for m in math_spans(cells[0]))) if "$" in cells[0] else set()
            tables[scope].append((syms, cells[1] if len(cells) > 1 else ""))
    return tables


def test_the_symbol_reader():
    assert symbols(r"\mu^\star(A) = \max_{D\in\Omega}\mu_2(DA)") == {r"\mu^\star", "A", "D", r"\Omega", r"\mu_2"}
    assert symbols(r"\lVert\Delta\rVert_F\ge\underline\eta,\ \hat w_y") == {
        r"\Delta",
        r"\underline{\eta}",
        r"\hat{w}",
        "y",
    }
    assert symbols(r"\operatorname{Lip}(f)\le\prod_{k}\lVert W_k\rVert_2") == {"f", "k", "W"}
    assert symbols(r"\mathcal X_{\rm Lip}\subset\mathbb R^d") == {r"\mathcal{X}", r"\mathbb{R}", "d"}
    assert symbols(r"F\in C^1,\ \ell_\infty,\ \mu_{2}") == {"F", "C^1", r"\ell_\infty", r"\mu_2"}
    assert symbols(r"D^+u\le M_f(x,y)+\lambda_{\max}(S)") == {"D^+", "u", "M_f", "x", "y", r"\lambda_{\max}", "S"}


def test_notation_gives_each_symbol_one_meaning():
    tables = notation_tables()
    assert "book" in tables and all(f"ch{p.name[2:4]}" in tables for p in CHAPTERS), sorted(tables)
    seen = {}
    for scope, rows in tables.items():
        for syms, _ in rows:
            assert syms, f"a row of the {scope} table names no symbol"
            for s in syms:
                clash = seen.get(s)
                assert clash is None or (clash != "book" and scope != "book" and clash != scope), (
                    f"{s} is defined twice in notation.md ({clash} and {scope})"
                )
                seen[s] = scope


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_notation_covers_every_symbol_of_the_chapter(page):
    tables = notation_tables()
    scope = f"ch{page.name[2:4]}"
    book = set().union(*(s for s, _ in tables["book"]))
    own = set().union(*(s for s, _ in tables.get(scope, [])))
    used = set().union(*(symbols(m) for m in math_spans(page.read_text(encoding="utf-8"))))
    assert not used - book - own, (
        f"{page.name} uses symbols that notation.md does not list: {sorted(used - book - own)}"
    )
    assert not own - used, f"notation.md lists symbols for {page.name} that it does not use: {sorted(own - used)}"


TIERS = ("Understand", "Derive", "Implement", "Explore")


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_every_exercise_has_a_tier_and_a_solution(page):
    text = page.read_text(encoding="utf-8")
    exercises = re.findall(r"^(`{3,}|:{3,})\{exercise\}\s*(.*)\n:label:\s*(\S+)", text, re.M)
    solutions = set(re.findall(r"^(?:`{3,}|:{3,})\{solution\}\s*(\S+)", text, re.M))
    assert exercises, f"{page.name} has no exercise"
    for _, title, label in exercises:
        assert title.split(":")[0] in TIERS, f"{page.name}: exercise {label} has no tier ({TIERS}) in its title"
        assert label in solutions, f"{page.name}: exercise {label} has no solution"


#: What a reader sees of a chapter's code (DESIGN §4): the labkit calls that make a number or a figure,
#: in a few lines that the HTML shows whole.
VISIBLE_LINES, VISIBLE_WIDTH = 12, 88
_HIDDEN = ("hide-input", "remove-input", "hide-cell", "remove-cell")


def visible_cells(text: str) -> list[tuple[int, list[str]]]:
    """The code cells of a page that a reader sees, as (first line, non-blank source lines): those
    without a tag that hides their input, their options (``:tags:`` lines or a ``---`` block) left out."""
    cells = []
    for m in re.finditer(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", text, re.S | re.M):
        lines, options = m.group(1).split("\n"), []
        while lines and lines[0].startswith(":"):
            options.append(lines.pop(0))
        if lines and lines[0].strip() == "---":
            end = lines.index("---", 1)
            options, lines = options + lines[: end + 1], lines[end + 1 :]
        if not any(tag in line for line in options for tag in _HIDDEN):
            cells.append((text[: m.start()].count("\n") + 2, [line for line in lines if line.strip()]))
    return cells


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_visible_cells_are_short_and_fit_the_page(page):
    text = page.read_text(encoding="utf-8")
    problems = []
    for line_no, lines in visible_cells(text):
        if len(lines) > VISIBLE_LINES:
            problems.append(f"line {line_no}: {len(lines)} lines (at most {VISIBLE_LINES})")
        problems += [f"line {line_no}: {len(s)} characters: {s.strip()[:50]}…" for s in lines if len(s) > VISIBLE_WIDTH]
    assert not problems, f"{page.name}: visible cells to shorten (move the rest to the chapter module): {problems}"


def test_the_cell_reader_sees_only_visible_cells():
    text = "```{code-cell} ipython3\nx = 1\n\ny = 2\n```\n\n```{code-cell} ipython3\n:tags: [hide-input]\nz = 3\n```\n"
    assert visible_cells(text) == [(2, ["x = 1", "y = 2"])]
