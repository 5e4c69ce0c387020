"""Untrusted text rendered inertly: planted backticks, pipes, <script>, </textarea>, <img onerror>,
newlines and $x$ come out as the same characters and never as markup.

No Markdown renderer is installed here, so the Markdown checks parse the output with the rules
GitHub-style Markdown applies (CommonMark code spans, backslash escapes and entities; GFM's table
cell split on pipes not preceded by a backslash); HTML and XML go through real parsers (the
standard library's HTMLParser and ElementTree), matplotlib's own mathtext test and an SVG it draws.
"""

import csv
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pandas as pd
import pytest

from splitkit.report.escape import (Markdown, clean_text, csv_cell, csv_safe, html_attr, html_text, md_code,
                                    md_row, md_text, mpl_text, one_line)

HOSTILE = [
    "x`<img src=x onerror=alert(1)>`",
    "<script>alert(1)</script>",
    "</textarea><b>bold</b><textarea>",
    "<img src=x onerror=alert(1)>",
    "a | b | c",
    "```fence``` and ``two``",
    "`", "``", "` `", "`x",
    "line1\nline2\r\n- item\r# heading",
    "$x$ and $$y$$ cost $5",
    "a\\|b", "end\\", "\\`",
    "**bold** _it_ ~~s~~ [link](javascript:alert(1)) ![img](x) <https://e.x>",
    "&lt;already&gt; &amp; &#60; &copy;",
    "# heading", "- list", "+ list", "1. ordered", "12) ordered", "=", "==",
    " leading and trailing ",
    "nul\x00 esc\x1b[31m del\x7f c1\x85 tab\tend",
    "=HYPERLINK(\"http://e.x\")",
    "it's \"quoted\" 'single'",
]

# Markdown punctuation that must never appear unescaped in md_text output.
SPECIAL = set("\\`*_[]|~$#<>&")
ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])|&(amp|lt|gt);")


def render_inline(md: str) -> str:
    """What a CommonMark renderer shows for text made only of literals, backslash escapes and the
    three entities md_text writes (anything else in it would be a failure of md_text)."""
    return ESCAPE.sub(lambda m: m[1] if m[1] is not None else {"amp": "&", "lt": "<", "gt": ">"}[m[2]], md)


def unescaped_chars(md: str) -> list[str]:
    """The characters of ``md`` that are not part of a backslash escape or an entity."""
    out, i = [], 0
    while i < len(md):
        m = ESCAPE.match(md, i)
        if m:
            i = m.end()
        else:
            out.append(md[i])
            i += 1
    return out


def parse_code_span(md: str) -> str:
    """The content of ``md`` read as one CommonMark code span; fails if it is not exactly one."""
    n = len(md) - len(md.lstrip("`"))
    assert n > 0, md
    runs = [(m.start(), m.end()) for m in re.finditer(r"`+", md)]
    closing = [r for r in runs[1:] if r[1] - r[0] == n]
    assert closing and closing[0][1] == len(md), f"the span closes early or not at all: {md!r}"
    content = md[n:closing[0][0]]
    if len(content) >= 2 and content[0] == content[-1] == " " and content.strip(" "):
        content = content[1:-1]
    return content


def split_row(row: str) -> list[str]:
    """A GFM table row's cells: split on pipes not preceded by a backslash, trim, then ``\\|`` -> ``|``."""
    assert row.startswith("| ") and row.endswith(" |"), row
    cells = re.split(r"(?<!\\)\|", row[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


@pytest.mark.parametrize("text", HOSTILE)
def test_md_text_renders_literally_and_inertly(text):
    md = md_text(text)
    assert isinstance(md, Markdown)
    assert "\n" not in md and "\r" not in md and "<" not in md and ">" not in md
    bare = unescaped_chars(md)
    assert not SPECIAL & set(bare), f"unescaped markup in {md!r}"
    assert md[:1] not in ("-", "+", "="), md  # no list item or setext underline at a line start
    assert not re.match(r"\d+[.)]", md), md
    assert render_inline(md) == one_line(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_md_code_is_one_span_with_a_longer_fence(text):
    md = md_code(text)
    fence = len(md) - len(md.lstrip("`"))
    assert fence > max((len(r) for r in re.findall(r"`+", one_line(text))), default=0)
    assert "\n" not in md
    assert parse_code_span(md) == one_line(text)


def test_md_code_of_empty_text_is_still_a_span():
    assert parse_code_span(md_code("")) == " "


def test_a_hostile_out_folder_in_a_code_span(tmp_path):
    # issue 22: a folder named x`<img src=x onerror=alert(1)>` became a live <img> in report.md.
    out = tmp_path / "x`<img src=x onerror=alert(1)>`"
    md = md_code(out)
    assert md.startswith("``") and parse_code_span(md) == str(out)


@pytest.mark.parametrize("text", HOSTILE)
def test_table_row_keeps_its_cells(text):
    row = md_row([md_code(text, in_table=True), text, 3.5, -2])
    assert "\n" not in row
    cells = split_row(row)
    assert len(cells) == 4, f"{row!r} splits into {cells!r}"
    assert parse_code_span(cells[0]) == one_line(text)
    assert render_inline(cells[1]) == one_line(text).strip()  # GFM trims a cell's outer spaces
    assert cells[2:] == ["3.5", "-2"]


def test_token_list_joined_with_pipes_stays_in_one_cell():
    # The fault in issue 22: " | "-joined tokens split the row, so column B showed A's second token.
    tokens_a, tokens_b = ["def", "class", "|"], ["import", "from"]
    row = md_row(["A", " | ".join(tokens_a), " | ".join(tokens_b)])
    cells = split_row(row)
    assert [render_inline(c) for c in cells] == ["A", "def | class | |", "import | from"]


def test_md_row_does_not_escape_twice():
    assert md_row([md_text("a*b"), "a*b"]) == "| a\\*b | a\\*b |"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.starts, self.ends, self.data, self.attrs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        self.attrs.append(dict(attrs))

    def handle_endtag(self, tag):
        self.ends.append(tag)

    def handle_data(self, data):
        self.data.append(data)


@pytest.mark.parametrize("text", HOSTILE)
def test_html_text_and_attributes(text):
    for wrapper in ("div", "textarea"):
        p = Tags()
        p.feed(f'<{wrapper} title="{html_attr(text)}" data-x=\'{html_attr(text)}\'>{html_text(text)}</{wrapper}>')
        p.close()
        assert p.starts == [wrapper] and p.ends == [wrapper], (p.starts, p.ends)
        assert p.attrs[0] == {"title": clean_text(text), "data-x": clean_text(text)}
        assert "".join(p.data) == clean_text(text)
    # The same strings are well-formed XML/SVG text and attribute values.
    root = ET.fromstring(f'<svg><text a="{html_attr(text)}">{html_text(text)}</text></svg>')
    assert len(root) == 1 and len(root[0]) == 0
    assert (root[0].text or "") == clean_text(text) and root[0].get("a") == clean_text(text)


def test_clean_text_replaces_controls():
    assert clean_text("a\x00b\x1bc\x7fd\x85e\ud800f\tg\r\nh\ri") == "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf\tg\nh\ni"


def test_clean_text_replaces_bidi_controls():
    # an RLO in a token would display the rest of a label or table row reversed ("Trojan source")
    assert clean_text("exe.\u202etxt") == "exe.\ufffdtxt"
    assert clean_text("\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069") == "\ufffd" * 8
    # ordinary right-to-left text and the zero-width joiner are text, not controls: kept
    assert clean_text("\u05e9\u05dc\u05d5\u05dd \u200d") == "\u05e9\u05dc\u05d5\u05dd \u200d"
    assert one_line("a\u202eb") == "a\ufffdb"
    assert one_line("a\nb\tc") == "a\u23ceb c"
    with pytest.raises(ValueError, match="expected text"):
        clean_text(3)


@pytest.mark.parametrize("text", ["$x$", "cost $5 and $10", "$$\\alpha$$", "a\\$b$c$", "plain", "\\$x\\$"])
def test_mpl_text_is_never_mathtext(text):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.text import Text

    assert Text(0, 0, "$x$")._preprocess_math("$x$")[1]  # unescaped dollars would be mathtext
    shown, is_math = Text(0, 0, "")._preprocess_math(mpl_text(text))
    assert not is_math and shown == text


def test_mpl_text_in_an_svg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = "$x$ <script>alert(1)</script> & </textarea>"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as <text>, so it can be read back
        fig, ax = plt.subplots()
        ax.set_title(mpl_text(label))
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
    svg = buf.getvalue()
    assert "<script" not in svg
    root = ET.fromstring(svg)
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert label in texts, texts


def test_csv_guards_formulas_in_text_columns_only():
    df = pd.DataFrame({"token": ["=1+1", "+SUM(A1)", "-x", "@cmd", "\tt", "plain", "a=b", None],
                       "value": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                       "n": [-1, 2, 3, 4, 5, 6, 7, 8]})
    out = csv_safe(df)
    assert df["token"][0] == "=1+1"  # the input is left alone
    rows = list(csv.reader(io.StringIO(out.to_csv(index=False))))
    assert [r[0] for r in rows[1:]] == ["'=1+1", "'+SUM(A1)", "'-x", "'@cmd", "'\tt", "plain", "a=b", ""]
    assert [r[1] for r in rows[1:3]] == ["-1.5", "2.0"] and rows[1][2] == "-1"  # numbers untouched
    assert csv_cell("-") == "'-" and csv_cell("x-") == "x-"
    with pytest.raises(ValueError, match="no column 'nope'"):
        csv_safe(df, ["nope"])
