"""Render untrusted text (corpus tokens, paths, command lines, user options) inertly in each format
splitkit writes: Markdown, HTML/SVG/XML, matplotlib text and CSV.

Every function takes the raw text and returns text that shows the same characters as literal text
in that format, never as markup. Conventions shared by all of them:

- ``clean_text`` first: characters that XML 1.0 forbids or a terminal would act on (C0 controls other
  than tab/LF/CR, DEL, C1 controls, lone surrogates, U+FFFE/U+FFFF) and the bidirectional embedding,
  override and isolate controls (U+202A-U+202E, U+2066-U+2069), which reorder the text shown after
  them in a label, a table or Gephi, become U+FFFD; CRLF/CR become LF. A NUL, an ESC or a
  right-to-left override from a corpus cannot end up in a file or on a terminal.
- One-line formats (Markdown inline text, table cells, code spans, plot labels) show a line break as
  ``⏎`` (U+23CE) and a tab as a space, so a token ``"\\n"`` stays visible and cannot end a table row.
- The Markdown helpers return :class:`Markdown`, a ``str`` marking text that is already safe, so
  :func:`md_row` escapes plain strings and passes those through: nothing is escaped twice.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable

REPLACEMENT = "\ufffd"
NEWLINE_MARK = "\u23ce"

# C0 except \t \n \r, DEL, C1, lone surrogates, the two non-characters XML 1.0 excludes, and the bidi
# embedding/override/isolate controls (a token "\u202e" would show the rest of its line reversed).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e\u2066-\u2069]")
# Backslash-escaped wherever they appear: code, emphasis, links, tables, strikethrough, math ($ on
# GitHub), headings. ``<``, ``>`` and ``&`` are written as entities instead (see md_text).
_MD_PUNCT = re.compile(r"([\\`*_\[\]|~$#])")
# Block syntax that only matters at the start of a line: list markers, setext underline, ordered lists.
_MD_LEADING = re.compile(r"^([+\-=])|^(\d+)([.)])")
# Spreadsheet formula triggers (OWASP's list): the cell gets a leading apostrophe.
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class Markdown(str):
    """Text already rendered as safe Markdown (returned by the ``md_*`` helpers)."""


def clean_text(text: str) -> str:
    """``text`` (or a path) with forbidden control characters replaced by U+FFFD and line ends made LF."""
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str):
        raise ValueError(f"expected text (str), got {type(text).__name__}; convert it with str() first")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(REPLACEMENT, text)


def one_line(text: str) -> str:
    """``clean_text`` on one line: LF shown as ``⏎``, tab as a space."""
    return clean_text(text).replace("\n", NEWLINE_MARK).replace("\t", " ")


def md_text(text: str) -> Markdown:
    """Inline Markdown text (a paragraph, list item or table cell) that renders as exactly ``text``.

    Markdown punctuation is backslash-escaped (pipes included, so the result is also a safe table
    cell); ``&``, ``<`` and ``>`` become entities, so ``<script>``, ``</textarea>`` or
    ``<img onerror=...>`` stay text in renderers that pass HTML through; ``$`` is escaped against
    GitHub's math; a leading ``-``, ``+``, ``=`` or ``1.`` cannot start a list or a heading.
    """
    s = one_line(text)
    s = html.escape(s, quote=False)  # & < > first: the backslashes added next contain none of them
    s = _MD_PUNCT.sub(r"\\\1", s)
    s = _MD_LEADING.sub(lambda m: "\\" + m[1] if m[1] else m[2] + "\\" + m[3], s)
    return Markdown(s)


def md_code(text: str, *, in_table: bool = False) -> Markdown:
    """An inline code span showing ``text`` literally (paths, command lines, tokens).

    The fence is one backtick longer than the longest backtick run inside, and padded with a space
    where the content starts or ends with a backtick or a space (CommonMark strips one such space from
    each side). Inside a code span nothing else is markup, so ``<`` stays as it is. ``in_table=True``
    writes pipes as ``\\|``: GitHub-style tables split cells on pipes even inside code spans and drop
    the backslash before rendering, so the cell shows ``|``. (Outside a table that backslash would
    show, hence the flag.)
    """
    s = one_line(text)
    if in_table:
        s = s.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    if s.strip(" ") and (s[0] in "` " or s[-1] in "` "):
        s = f" {s} "
    elif not s:
        s = " "  # CommonMark has no empty code span; one space is the nearest
    return Markdown(f"{fence}{s}{fence}")


def md_cell(value) -> Markdown:
    """One table cell: ``Markdown`` passes through, numbers as ``str()``, anything else via ``md_text``."""
    if isinstance(value, Markdown):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return md_text(value if isinstance(value, str) else str(value))
    return Markdown(str(value))


def md_row(cells: Iterable) -> Markdown:
    """A table row ``| a | b |`` with each cell through :func:`md_cell`.

    Use ``md_code(x, in_table=True)`` for a cell meant as code; a plain ``str`` is escaped as text.
    """
    return Markdown("| " + " | ".join(md_cell(c) for c in cells) + " |")


def html_text(text: str) -> str:
    """Text for HTML, SVG or any XML element content: ``& < > " '`` as entities, controls cleaned.

    Safe in element content and inside quoted attribute values; not in ``<script>``/``<style>``
    bodies or unquoted attributes, where splitkit never puts untrusted text.
    """
    return html.escape(clean_text(text), quote=True)


def html_attr(text: str) -> str:
    """A quoted attribute value: as :func:`html_text`, with LF and tab as character references so an
    XML parser's attribute normalisation keeps them."""
    return html_text(text).replace("\n", "&#10;").replace("\t", "&#9;")


def mpl_text(text: str, *, multiline: bool = False) -> str:
    """A matplotlib label, title or annotation showing ``text`` literally.

    Matplotlib renders a string with an even number of unescaped ``$`` as mathtext; every ``$``
    becomes ``\\$``, which it counts as escaped and draws as ``$`` (a ``\\`` already before a ``$``
    stays a visible backslash). Assumes ``text.usetex`` is off, as in splitkit's figures.
    """
    s = clean_text(text) if multiline else one_line(text)
    return s.replace("$", r"\$")


def csv_cell(text: str) -> str:
    """A text cell for a CSV meant for spreadsheets: a leading ``'`` where the text starts with
    ``= + - @``, tab or CR, which Excel, LibreOffice and Google Sheets would read as a formula.

    Only for text columns (numbers are left alone, a negative number is not a formula); quoting
    commas, quotes and newlines is the CSV writer's job. The Parquet table beside a CSV keeps the
    exact text.
    """
    return "'" + text if text.startswith(CSV_FORMULA_PREFIXES) else text


def csv_safe(df, columns: Iterable[str] | None = None):
    """A copy of DataFrame ``df`` with :func:`csv_cell` applied to every ``str`` value of its text
    columns (object or string dtype; or only ``columns``). Non-string values are kept as they are."""
    import pandas as pd

    out = df.copy()
    if columns is None:
        columns = [c for c in out.columns
                   if pd.api.types.is_object_dtype(out[c]) or pd.api.types.is_string_dtype(out[c])]
    for c in columns:
        if c not in out.columns:
            raise ValueError(f"csv_safe: no column {c!r}; the columns are {list(out.columns)}")
        out[c] = out[c].map(lambda v: csv_cell(v) if isinstance(v, str) else v)
    return out
