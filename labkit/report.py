"""Report helpers: Markdown tables, the banner of a record and glue names (Preface, *Modes*).

Every chapter page shows its results through these, so a table, a record's provenance line and
the names under which numbers are glued into the prose look and behave the same everywhere::

    from labkit import report
    report.table(rows, [("data", "data"), ("clean", "clean", "{:.3f}")])
    report.banner(record, command="make full CH=ch01")
    report.glue_all(values)          # {name: value}, names made by report.glue_name
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["Table", "table", "banner", "changed_sizes", "glue_name", "glue_all", "numbers", "fmt"]


class Table(str):
    """A Markdown table: a ``str`` that Jupyter displays as Markdown (and prints as its source)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def fmt(value, spec: str = "{}") -> str:
    """``spec.format(value)``; ``None`` and missing values print as an en dash."""
    if value is None:
        return "–"
    return spec.format(value)


def table(rows, columns, *, caption: str | None = None) -> Table:
    """A Markdown table with one line per row.

    ``rows`` is a list of dicts (or any objects ``columns`` can read); ``columns`` is a list of
    ``(header, key)`` or ``(header, key, spec)``: ``key`` is a dict key or a function of the row,
    ``spec`` a format string (default ``"{}"``). A ``caption`` goes above the table. Raises
    ``ValueError`` for a column without a header or key, ``KeyError`` naming the missing key."""
    cols = []
    for col in columns:
        if not isinstance(col, (tuple, list)) or len(col) not in (2, 3):
            raise ValueError(f"a column is (header, key) or (header, key, spec), got {col!r}.")
        header, key, spec = (*col, "{}") if len(col) == 2 else col
        cols.append((str(header), key, spec))
    if not cols:
        raise ValueError("a table needs at least one column.")
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for i, row in enumerate(rows):
        cells = []
        for header, key, spec in cols:
            if callable(key):
                value = key(row)
            else:
                try:
                    value = row[key]
                except (KeyError, IndexError, TypeError):
                    raise KeyError(f"row {i} has no {key!r} (column {header!r}).") from None
            cells.append(fmt(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    return Table(f"{caption}\n\n{text}" if caption else text)


def banner(record, *, command: str, missing: str | None = None) -> Table:
    """One line that says where and when a record was computed: device, date, duration, torch,
    commit (and whether the tree had local changes, and whether the run was resumed). Without a
    record (``None``), a line that says which ``command`` makes one, followed by ``missing``."""
    if record is None:
        text = f"*No full-mode record yet: run `{command}`.*"
        return Table(text + (f" {missing}" if missing else ""))
    minutes = float(record.get("seconds", 0.0)) / 60
    duration = f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.0f} min"
    line = (
        f"Full mode: {record.get('device')} ({record.get('device_name')}), {str(record.get('created'))[:10]}, "
        f"{duration}, torch {record.get('torch')}, commit {str(record.get('commit'))[:10]}"
        f"{' (with local changes)' if record.get('dirty') else ''}"
    )
    resumed = record.get("resumed")
    if resumed:
        line += (
            f"; resumed after an interruption, {len(resumed.get('runs', []))} run(s) from commit "
            f"{str(resumed.get('commit'))[:10]}"
        )
    return Table(line + ".")


def changed_sizes(sizes: dict, reference: dict) -> Table:
    """One line naming every size of a record (``sizes``) that differs from the mode's table
    (``reference``), so that a shortened schedule is said where its numbers are shown."""
    changed = {k: v for k, v in (sizes or {}).items() if reference.get(k) != v}
    if not changed:
        return Table("The record ran with the full-mode sizes.")
    return Table("Sizes changed from the full-mode table: " + ", ".join(f"{k} = {v}" for k, v in changed.items()) + ".")


_GREEK = {
    "α": "alpha",
    "β": "beta",
    "γ": "gamma",
    "δ": "delta",
    "ε": "eps",
    "λ": "lambda",
    "μ": "mu",
    "σ": "sigma",
    "τ": "tau",
}


def glue_name(*parts) -> str:
    """The glue name of a result: the parts joined by ``_``, Greek letters spelt out, every other
    run of characters outside ``a-z0-9`` made one ``_``, lower case. For example
    ``glue_name("mnist/δ = 0.5", "clean") == "mnist_delta_0_5_clean"``."""
    text = "_".join(str(p) for p in parts)
    text = "".join(_GREEK.get(c, c) for c in text.lower())
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    if not name:
        raise ValueError(f"no glue name can be made of {parts!r}.")
    return name


def numbers(values: dict) -> dict:
    """The entries of ``values`` that are numbers (not flags): the sizes a page glues for its prose."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def glue_all(values: dict, *, prefix: str = "") -> None:
    """Glue every ``{name: value}`` for the page's prose (``{glue:text}`name```), not displayed.
    Names are passed through :func:`glue_name` (with ``prefix`` in front); two values that end up
    with the same name raise ``ValueError``. NumPy and torch scalars are glued as Python numbers,
    so that format specs such as ``:.2f`` apply to them."""
    from myst_nb import glue

    seen = {}
    for key, value in values.items():
        name = glue_name(prefix, key) if prefix else glue_name(key)
        if name in seen:
            raise ValueError(f"{key!r} and {seen[name]!r} both glue as {name!r}.")
        seen[name] = key
        if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a NumPy or torch scalar
            value = value.item()
        glue(name, value, display=False)
