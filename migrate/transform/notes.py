"""Pipedrive HTML (notes, activity notes, product descriptions) → markdown Customermates accepts.

Customermates parses notes with markdown-it (``html: false``) and rejects a document that holds a
GFM table or an image; a single newline is only a soft break, raw HTML shows as literal text and
the hard limit is 65,535 characters (CONTRACT §8 and "Observed on the real server"). The converter
is markdownify with a customised converter class; a final pass makes sure no line pair can be read
as a table and nothing as an image, so :func:`is_acceptable_notes` always agrees with our output.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from typing import Any

from bs4 import (
    BeautifulSoup,
    CData,
    Comment,
    Declaration,
    Doctype,
    MarkupResemblesLocatorWarning,
    NavigableString,
    ProcessingInstruction,
    Tag,
)
from markdownify import ATX, SPACES, STRIP, MarkdownConverter, chomp

__all__ = [
    "NOTES_LIMIT",
    "Composed",
    "NoteEntry",
    "compose_notes",
    "html_to_markdown",
    "is_acceptable_notes",
    "notes_length",
    "removed_characters",
    "truncate_notes",
]

#: Customermates' maximum markdown notes length (counted like JavaScript does: UTF-16 code units).
NOTES_LIMIT = 65_535
#: Maximum serialised length of a Tiptap JSON document (CONTRACT §8).
_TIPTAP_LIMIT = 262_144

_REMOVED_TAGS = (
    "script", "style", "iframe", "noscript", "template", "head", "title", "meta", "link", "base",
    "svg", "math", "object", "embed", "canvas", "frameset", "frame", "applet",
)
_ROW = "\x1e"  # table row sentinel inside converter output (control chars are removed from input)
_CELL = "\x1f"  # table cell sentinel
# A void tag written without "/" (``<br>``): html.parser then makes BeautifulSoup remember it in a
# list it scans on every end tag, which is quadratic on long notes; ``<br/>`` is parsed the same way
# without that bookkeeping.
_VOID_TAG = re.compile(
    r"<(br|hr|wbr|img|input|col|source|track|area)"
    r"((?:\s+[^\s<>/=\"']+(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'<>=`]+))?)*)\s*>",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[\ud800-\udfff]")
_ODD_SPACES = re.compile(r"[\xa0\u2028\u2029]")
_ESCAPE_ANYWHERE = re.compile(r"([\\`*\[\]<|~])")
_ESCAPE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
_ESCAPE_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")
_LINE_START_MARK = re.compile(r"^(\s*)([-+=#>])")
_LINE_START_ORDERED = re.compile(r"^(\s*[0-9]{1,9})([.)])")
_SAFE_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_BAD_SCHEME = re.compile(r"^\s*(javascript|vbscript|data|file):", re.IGNORECASE)
_URL_ESCAPES = {" ": "%20", "(": "%28", ")": "%29", "<": "%3C", ">": "%3E", "\\": "%5C", "\n": "", "\r": "", "\t": ""}
_WHITESPACE = re.compile(r"\s+")
_CREATED = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2})(?::[0-9]{2}(?:\.[0-9]+)?)?Z")


def _parse(html: str) -> BeautifulSoup:
    """The HTML as a soup, without scripts/styles/frames (and their text) or comments, and with
    no-break and line-separator spaces outside ``<pre>`` turned into plain spaces."""
    html = _CONTROL.sub("", html.replace("\r\n", "\n").replace("\r", "\n"))
    with warnings.catch_warnings():
        # a note that is only "https://…" or "offer.pdf" is text, not a locator to fetch
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(_VOID_TAG.sub(r"<\1\2 />", html), "html.parser")
    removed: list[Any] = []
    spaced: list[NavigableString] = []
    for node in soup.descendants:  # one pass; the tree is changed afterwards
        if isinstance(node, Tag):
            if node.name in _REMOVED_TAGS:
                removed.append(node)
        elif isinstance(node, (Comment, CData, Declaration, Doctype, ProcessingInstruction)):
            removed.append(node)
        elif _ODD_SPACES.search(node):
            spaced.append(node)
    for node in removed:
        if isinstance(node, Tag):
            if not node.decomposed:
                node.decompose()
        else:
            node.extract()
    for node in spaced:
        if node.parent is not None and node.find_parent("pre") is None and not getattr(node, "decomposed", False):
            node.replace_with(NavigableString(_ODD_SPACES.sub(" ", node)))
    return soup


def removed_characters(text: str) -> str:
    """The characters the conversion takes out of ``text`` (NUL and the other control characters but
    tab and line breaks), each once, as ``U+0000, U+007F``; "" for none."""
    return ", ".join(dict.fromkeys(f"U+{ord(ch):04X}" for ch in _CONTROL.findall(text)))


def notes_length(markdown: str) -> int:
    """Length as Customermates (JavaScript ``String.length``) counts it: UTF-16 code units."""
    return len(markdown.encode("utf-16-le", "surrogatepass")) // 2


# --------------------------------------------------------------------------------------------
# Escaping of plain text


def _escape_text(text: str) -> str:
    """Backslash-escape what markdown would misread in a run of plain text.

    Always: backslash, backtick, ``*``, brackets, ``<``, ``|``, ``~``, ``_`` unless inside a word,
    ``&`` that starts an entity. At the start of the run (which may be the start of a line): block
    markers ``- + = # >`` and ordered-list numbers. At the end: ``!`` (a link may follow).
    """
    if not text:
        return ""
    text = _ESCAPE_ANYWHERE.sub(r"\\\1", text)
    text = _ESCAPE_UNDERSCORE.sub(r"\\_", text)
    text = _ESCAPE_ENTITY.sub(r"\\&", text)
    text = _LINE_START_MARK.sub(r"\1\\\2", text, count=1)
    text = _LINE_START_ORDERED.sub(r"\1\\\2", text, count=1)
    if text.endswith("!"):  # never escaped above, so always a bare "!"
        text = text[:-1] + "\\!"
    return text


def _safe_url(url: str) -> str:
    """A URL usable as a markdown link destination (no spaces, parentheses, angle brackets, backslashes)."""
    return "".join(_URL_ESCAPES.get(ch, ch) for ch in url.strip())


# --------------------------------------------------------------------------------------------
# The converter


class _NotesConverter(MarkdownConverter):
    """markdownify, tuned for Customermates: no tables, no images, ATX headings, "-" bullets."""

    class Options(MarkdownConverter.DefaultOptions):
        autolinks = True
        bullets = "-"
        heading_style = ATX
        newline_style = SPACES
        strip_document = STRIP
        strip_pre = STRIP
        strong_em_symbol = "*"
        wrap = True  # HTML newlines in text are spaces; only <br>/blocks make markdown line breaks
        wrap_width = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._li_numbers: dict[int, dict[int, int]] = {}

    # -- input preparation -------------------------------------------------------------------

    def convert(self, html: str) -> str:
        return self.convert_soup(_parse(html))

    def escape(self, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002 - markdownify API
        return _escape_text(text)

    # -- inline ------------------------------------------------------------------------------

    def convert_a(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if "_noformat" in parent_tags:
            return text
        prefix, suffix, text = chomp(text)
        if not text:
            return ""
        href = _safe_url(el.get("href") or "")  # checked without tabs and line breaks, as a URL parser reads it
        if not href or href.startswith("#") or _BAD_SCHEME.match(href):
            return f"{prefix}{text}{suffix}"
        if text.replace("\\_", "_") == href and _SAFE_SCHEME.match(href):
            return f"{prefix}<{href}>{suffix}"
        return f"{prefix}[{text}]({href}){suffix}"

    def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        src = _safe_url(el.get("src") or "")
        alt = _escape_text(_WHITESPACE.sub(" ", el.get("alt") or "").strip())
        if src.lower().startswith("data:"):
            return "\\[image omitted\\]"
        if "a" in parent_tags:
            return alt or "image"  # the surrounding link carries the target
        if not src or _BAD_SCHEME.match(src):
            return alt
        return f"[{alt or 'image'}]({src})"

    def convert_video(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        src = _safe_url(el.get("src") or "")
        if not src:
            source = el.find("source", src=True)
            src = _safe_url(source.get("src") or "") if source else ""
        label = text.strip() or "video"
        if not src or _BAD_SCHEME.match(src) or "a" in parent_tags:
            return text
        return f"[{label}]({src})"

    convert_audio = convert_video

    def convert_code(self, el: Any, text: str, parent_tags: set[str]) -> str:
        # an inline code span stays on one line (markdown would end it at a block boundary)
        if "_noformat" not in parent_tags:
            text = _WHITESPACE.sub(" ", text)
        return super().convert_code(el, text, parent_tags)

    def _code_span(self, text: str) -> str:
        return super().convert_code(None, _WHITESPACE.sub(" ", text), set())

    convert_kbd = convert_samp = convert_code

    def convert_br(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if "pre" in parent_tags:
            return "\n"
        return super().convert_br(el, text, parent_tags)

    convert_strike = MarkdownConverter.convert_del

    # -- blocks ------------------------------------------------------------------------------

    def convert_hN(self, n: int, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: N802
        if not text.strip():
            return ""
        return super().convert_hN(n, el, text, parent_tags)

    def convert_pre(self, el: Any, text: str, parent_tags: set[str]) -> str:
        if not text.strip():
            return ""
        if "_inline" in parent_tags:  # e.g. inside a table cell: keep it code, on one line
            return " " + self._code_span(text.strip()) + " "
        text = text.strip("\n")
        longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"\n\n{fence}\n{text}\n{fence}\n\n"

    def convert_li(self, el: Any, text: str, parent_tags: set[str]) -> str:
        parent = el.parent
        if parent is not None and parent.name == "ol":
            # markdownify counts previous siblings for every item (quadratic); number once per list
            numbers = self._li_numbers.get(id(parent))
            if numbers is None:
                start = str(parent.get("start") or "1")
                first = int(start) if start.isdigit() else 1
                items = parent.find_all("li", recursive=False)
                numbers = {id(item): first + index for index, item in enumerate(items)}
                self._li_numbers[id(parent)] = numbers
            text = (text or "").strip()
            if not text:
                return "\n"
            bullet = f"{numbers.get(id(el), 1)}. "
            indent = " " * len(bullet)
            lines = text.split("\n")
            body = "\n".join([lines[0]] + [indent + line if line else "" for line in lines[1:]])
            return f"{bullet}{body}\n"
        return super().convert_li(el, text, parent_tags)

    def convert_dt(self, el: Any, text: str, parent_tags: set[str]) -> str:
        text = _WHITESPACE.sub(" ", text or "").strip()
        if "_inline" in parent_tags:
            return f" {text} "
        return f"\n\n**{text}**\n\n" if text else ""

    def convert_dd(self, el: Any, text: str, parent_tags: set[str]) -> str:
        return self.convert_div(el, text, parent_tags)

    # block-level tags markdownify does not know: a paragraph each (their text is kept)
    convert_center = convert_main = convert_header = convert_footer = convert_nav = MarkdownConverter.convert_div
    convert_aside = convert_address = convert_details = convert_summary = MarkdownConverter.convert_div
    convert_fieldset = convert_form = convert_hgroup = MarkdownConverter.convert_div

    # -- tables: each row one bullet line, cells joined with " · " ---------------------------

    def convert_td(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        return _CELL + _WHITESPACE.sub(" ", text).strip()

    convert_th = convert_td

    def convert_tr(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        cells = el.find_all(["td", "th"], recursive=False)
        header = bool(cells) and (
            all(cell.name == "th" for cell in cells) or (el.parent is not None and el.parent.name == "thead")
        )
        return _ROW + ("H" if header else "D") + text

    def convert_table(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        chunks = text.split(_ROW)
        caption = _WHITESPACE.sub(" ", chunks[0].replace(_CELL, " ")).strip()
        rows: list[tuple[bool, list[str]]] = []
        for chunk in chunks[1:]:
            kind, body = chunk[:1], chunk[1:]
            stray, *cells = body.split(_CELL)  # stray: text inside <tr> but outside any cell
            cells = [cell.strip() for cell in ([stray] if stray.strip() else []) + cells]
            while cells and not cells[-1]:
                cells.pop()
            if any(cells):
                rows.append((kind == "H", cells))
        if "_inline" in parent_tags:  # a table inside a table cell or heading: flatten
            flat = "; ".join(" · ".join(c for c in cells if c) for _, cells in rows)
            return " " + " ".join(p for p in (caption, flat) if p) + " "
        single_column = all(len(cells) <= 1 for _, cells in rows)
        lines: list[str] = []
        for is_header, cells in rows:
            shown = [(_bold(c) if is_header else c) or "—" for c in cells]
            lines.append(shown[0] if single_column else "- " + " · ".join(shown))
        separator = "\n\n" if single_column else "\n"
        body = separator.join(lines)
        parts = [p for p in (_bold(caption) if caption else "", body) if p]
        return "\n\n" + "\n\n".join(parts) + "\n\n" if parts else ""

    def convert_caption(self, el: Any, text: str, parent_tags: set[str]) -> str:  # noqa: ARG002
        return _WHITESPACE.sub(" ", text).strip()


def _bold(text: str) -> str:
    if not text or (text.startswith("**") and text.endswith("**")):
        return text
    return f"**{text}**"


# --------------------------------------------------------------------------------------------
# Markdown structure helpers shared by the checker and the safety pass

_NORMAL, _OPENER, _INSIDE = 0, 1, 2  # line states in and around fenced code blocks
_PREFIX = re.compile(r"[ \t]*(?:>[ \t]?|(?:[-+*]|[0-9]{1,9}[.)])(?:[ \t]+|$))")
_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
_DELIM_CELL = re.compile(r":?-+:?")
_IMAGE_OPEN = re.compile(r"!\[")
# what JavaScript's String.prototype.trim removes
_JS_WHITESPACE = "\t\n\v\f\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"

# The checks below follow markdown-it (what Customermates parses notes with). Where a faithful
# copy would need a full block and inline parser they err on the side of finding a table or an
# image, never the other way round:
# - code is only skipped inside fences whose extent is certain: a fence opened in column 0 is
#   top-level whatever precedes it, as long as no other fence-like line (indented, or inside a
#   quote or list item, whose reading depends on list context) came before it outside such a fence;
#   from the first such line on, nothing is treated as code;
# - a line is tried as a table row under every reading of its quote/list prefixes (markdown-it
#   tries the table rule before fences, quotes and lists);
# - every unescaped ``![`` outside a skipped fence counts as an image, even inside an inline code span.


def _fence_like(line: str) -> bool:
    """Could ``line`` open or close a fence under some reading of its quote/list prefixes?"""
    at = 0
    while True:
        body = line[at:].lstrip(" \t")
        if body.startswith(("```", "~~~")):
            return True
        prefix = _PREFIX.match(line, at)
        if prefix is None or prefix.end() == at:
            return False
        at = prefix.end()


def _fence_state(lines: list[str]) -> tuple[list[int], str]:
    """Per line ``_NORMAL``, ``_OPENER`` (opens a certain fenced block, see above) or ``_INSIDE``
    (its content or closing fence), plus the fence still open at the end ("" if none)."""
    states = [_NORMAL] * len(lines)
    fence = ""
    for index, line in enumerate(lines):
        if fence:
            states[index] = _INSIDE
            close = _FENCE_CLOSE.fullmatch(line)
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                fence = ""
            continue
        opening = _FENCE_OPEN.fullmatch(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            states[index] = _OPENER
            fence = opening.group(1)
        elif _fence_like(line):
            break  # uncertain from here on: treat the rest as text
    return states, fence


def _lines(markdown: str) -> list[str]:
    """The lines as markdown-it sees them (it turns CR LF and lone CR into LF first)."""
    return markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _escaped(text: str, position: int) -> bool:
    """Is the character at ``position`` preceded by an odd number of backslashes?"""
    before = position - 1
    while before >= 0 and text[before] == "\\":
        before -= 1
    return (position - 1 - before) % 2 == 1


def _escaped_split(text: str) -> list[str]:
    """markdown-it's table cell split: ``|`` right after a backslash does not separate."""
    cells, current, escaped = [], [], False
    for ch in text:
        if ch == "|" and not escaped:
            cells.append("".join(current))
            current = []
        elif ch == "|":
            current[-1:] = ["|"]  # drop the backslash, keep the pipe
        else:
            current.append(ch)
        escaped = ch == "\\"
    cells.append("".join(current))
    return cells


def _readings(line: str) -> list[int]:
    """Start positions of ``line`` under each nesting of quote/list prefixes (0 = as it stands)."""
    starts = [0]
    while (prefix := _PREFIX.match(line, starts[-1])) is not None and prefix.end() > starts[-1]:
        starts.append(prefix.end())
    return starts


def _delimiter_columns(text: str) -> int:
    """Column count if ``text`` is a GFM table delimiter row (markdown-it rules), else 0."""
    body = text.lstrip(" \t")
    if len(body) < 2 or body[0] not in "|:-":
        return 0
    if body[1] not in "|:- \t" or (body[0] == "-" and body[1] in " \t"):
        return 0
    if any(ch not in "|:- \t" for ch in body):
        return 0
    columns = body.split("|")
    count = 0
    for index, column in enumerate(columns):
        column = column.strip()
        if not column:
            if index in (0, len(columns) - 1):
                continue
            return 0
        if not _DELIM_CELL.fullmatch(column):
            return 0
        count += 1
    return count


def _header_columns(text: str) -> set[int]:
    """Column counts of ``text`` as a table header row (none if it has no pipe). JavaScript's
    ``trim`` and Python's ``strip`` disagree on a few characters, so both are tried."""
    counts = set()
    for body in (text.strip(), text.strip(_JS_WHITESPACE)):
        if "|" not in body:
            continue
        cells = _escaped_split(body)
        if cells and cells[0] == "":
            cells.pop(0)
        if cells and cells[-1] == "":
            cells.pop()
        counts.add(len(cells))
    return counts - {0}


def _table_delimiters(lines: list[str], states: list[int]) -> list[tuple[int, int]]:
    """(line index, position) of every delimiter row that makes a table with the line above it;
    the position is where the row starts under the first reading that makes it one."""
    found = []
    for index in range(1, len(lines)):
        if states[index - 1] == _INSIDE or "|" not in lines[index - 1]:
            continue
        header = set().union(*(_header_columns(lines[index - 1][at:]) for at in _readings(lines[index - 1])))
        if not header:
            continue
        line = lines[index]
        for at in _readings(line):
            if _delimiter_columns(line[at:]) in header:
                found.append((index, at + len(line[at:]) - len(line[at:].lstrip(" \t"))))
                break
    return found


def _image_starts(lines: list[str], states: list[int]) -> list[int]:
    """Positions (in the joined text) of each unescaped ``!`` followed by ``[`` outside fences."""
    starts, offset = [], 0
    for line, state in zip(lines, states, strict=True):
        if state == _NORMAL and "![" in line:
            starts.extend(offset + m.start() for m in _IMAGE_OPEN.finditer(line) if not _escaped(line, m.start()))
        offset += len(line) + 1
    return starts


def _json_object(text: str) -> Any:
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _neutralise(markdown: str) -> str:
    """Make sure nothing in ``markdown`` reads as a table, an image or a Tiptap JSON document.

    A delimiter row gets a backslash before its first character; an image's ``!`` gets one too
    (leaving a link); a JSON object gets one before its ``{``. Nothing else changes.
    """
    lines = _lines(markdown.replace("\x00", ""))
    states, _ = _fence_state(lines)
    while tables := _table_delimiters(lines, states):  # one pass suffices; loop to be sure
        for index, at in tables:
            lines[index] = lines[index][:at] + "\\" + lines[index][at:]
    text = "\n".join(lines)
    starts = _image_starts(lines, states)
    if starts:
        pieces, last = [], 0
        for start in starts:
            pieces.append(text[last:start])
            pieces.append("\\")
            last = start
        pieces.append(text[last:])
        text = "".join(pieces)
    if _json_object(text) is not None:
        at = len(text) - len(text.lstrip())
        text = text[:at] + "\\" + text[at:]
    return text


# --------------------------------------------------------------------------------------------
# Whitespace tidy

_QUOTE_BLANK = re.compile(r"^[ \t]*(?:>[ \t]*)+$")


def _tidy(markdown: str) -> str:
    """At most one blank line in a row, no trailing spaces except hard breaks, stripped ends."""
    lines = markdown.split("\n")
    states, _ = _fence_state(lines)
    out: list[str] = []
    hard: list[bool] = []
    for line, state in zip(lines, states, strict=True):
        in_fence = state != _NORMAL
        stripped = line.rstrip()
        if not stripped:
            if out and out[-1] == "":
                continue
            out.append("")
            hard.append(False)
            continue
        if not in_fence and out and _QUOTE_BLANK.match(stripped) and out[-1] == stripped:
            continue
        out.append(stripped)
        hard.append(not in_fence and line.endswith("  ") and not _QUOTE_BLANK.match(stripped))
    for index in range(len(out) - 1):
        if hard[index] and out[index + 1] and not _QUOTE_BLANK.match(out[index + 1]):
            out[index] += "  "
    return "\n".join(out).strip("\n").strip()


def _plain_text_fallback(html: str) -> str:
    """For HTML nested too deeply for markdownify's recursion: the text, a paragraph per block."""
    soup = _parse(html)
    for tag in soup.find_all(["br", "p", "div", "li", "tr", "td", "th", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6"]):
        if tag.name == "br":
            tag.replace_with(_ROW)
        else:
            tag.insert_after(_ROW)
    paragraphs = (_WHITESPACE.sub(" ", part).strip() for part in soup.get_text().split(_ROW))
    return "\n\n".join(_escape_text(p) for p in paragraphs if p)


# Converted note bodies are kept in the state file under this name: change it whenever a change
# here changes what a note converts to, so that kept conversions are made again.
MARKDOWN_VERSION = "notes-2"


def html_to_markdown(html: str) -> str:
    """Customermates-safe markdown for a Pipedrive HTML body (see module docstring).

    Scripts, styles, iframes and comments disappear with their text; unknown tags keep their
    text. Tables become one bullet line per row (cells joined by " · ", header cells bold; a
    one-column table becomes plain paragraphs), images become links (``[alt](src)``, alt defaulting
    to "image"; ``data:`` images become the text "[image omitted]"). ``<br>`` is a hard break, each
    ``<p>``/``<div>`` a paragraph. Deterministic; never returns a table, an image or raw HTML.
    """
    if not html or not html.strip():
        return ""
    try:
        markdown = _NotesConverter().convert(html)
    except RecursionError:
        markdown = _plain_text_fallback(html)
    return _neutralise(_tidy(markdown))


def markdown_of(texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`html_to_markdown` of each (key, HTML) pair, keyed alike."""
    return [(key, html_to_markdown(html)) for key, html in texts]


# --------------------------------------------------------------------------------------------
# Checking, composing, truncating


def _tiptap_problem(doc: dict) -> str | None:
    if len(json.dumps(doc, ensure_ascii=False, separators=(",", ":"))) > _TIPTAP_LIMIT:
        return f"Tiptap JSON notes exceed {_TIPTAP_LIMIT} characters"
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") in {"table", "tableRow", "tableCell", "tableHeader"}:
                return "Tiptap JSON notes contain a table node"
            if node.get("type") == "image":
                return "Tiptap JSON notes contain an image node"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def is_acceptable_notes(markdown: str) -> str | None:
    """``None`` if Customermates would accept ``markdown`` as notes, else the reason.

    Mirrors what the real server did (``recorded/09_notes.yaml``): more than 65,535 UTF-16 code
    units, a GFM table (a line with ``|`` followed by a matching delimiter row, outside code) or a
    markdown image (``![alt](url)``, outside code) is rejected. A string that parses as a Tiptap
    JSON document is judged as one (size, table and image nodes). Blank notes are accepted (they
    clear the field).
    """
    doc = _json_object(markdown)
    if doc is not None and doc.get("type") == "doc":
        return _tiptap_problem(doc)
    length = notes_length(markdown)
    if length > NOTES_LIMIT:
        return f"notes are {length} characters long, more than the {NOTES_LIMIT} allowed"
    if "\x00" in markdown:
        return "notes contain a NUL character"
    lines = _lines(markdown)
    states, _ = _fence_state(lines)
    tables = _table_delimiters(lines, states)
    if tables:
        return f"notes contain a GFM table (delimiter row on line {tables[0][0] + 1})"
    images = _image_starts(lines, states)
    if images:
        return f"notes contain a markdown image (at character {images[0]})"
    return None


@dataclass(frozen=True)
class NoteEntry:
    """One Pipedrive note (or activity note, description) to merge into a record's notes.

    ``created`` is already ``YYYY-MM-DDTHH:MM:SSZ`` (or ``None``); ``title`` is an optional tag
    shown in the header, e.g. "Pinned" or "Activity note"; ``markdown`` lets a caller that
    converted ``html`` already (a note attached to several records) skip the conversion.
    """

    author: str | None
    created: str | None
    html: str
    title: str | None = None
    markdown: str | None = None  # the converted html, when the caller already has it
    replaced: str | None = None  # the fields where staging replaced half of a character cut in two (a lone surrogate), e.g. "content"
    removed: str | None = None  # the fields control characters are taken out of, and which, e.g. "content (U+0000)"
    source: str | None = None  # what the note is, for issues: "Pipedrive note 7", "Contact notes"

    def name(self) -> str:
        """The note as an issue names it: its source, else its author, date and title."""
        return self.source or " · ".join(filter(None, (self.author, self.created, self.title))) or "an untitled note"


def _header(entry: NoteEntry) -> str:
    parts = []
    author = _WHITESPACE.sub(" ", entry.author or "").strip()
    if author:
        parts.append(f"**{_escape_text(author)}**")
    created = (entry.created or "").strip()
    if created:
        match = _CREATED.fullmatch(created)
        parts.append(f"{match.group(1)} {match.group(2)} UTC" if match else _escape_text(created))
    title = _WHITESPACE.sub(" ", entry.title or "").strip()
    if title:
        parts.append(_escape_text(title))
    return " · ".join(parts)


def _marker(dropped: int) -> str:
    return f"_[truncated: {dropped} characters not migrated]_"


def _prefix_within(text: str, units: int) -> int:
    """Largest index ``i`` with ``notes_length(text[:i]) <= units``."""
    if units <= 0:
        return 0
    index = min(len(text), units)
    excess = notes_length(text[:index]) - units
    while excess > 0:  # each code point is 1 or 2 units, so dropping `excess` code points suffices
        index -= excess
        excess = notes_length(text[:index]) - units
    return index


def _cut(text: str, units: int) -> str:
    """The longest prefix within ``units`` that ends at a paragraph, else a line, else a word boundary."""
    index = _prefix_within(text, units)
    floor = index // 2
    for separator in ("\n\n", "\n", " "):
        at = text.rfind(separator, 0, index + len(separator))
        if at >= max(floor, 1):
            return text[:at].rstrip()
    return text[:index].rstrip()


def _close_fence(kept: str) -> str:
    """``kept`` with a fenced code block left open at its end closed again."""
    _, closer = _fence_state(kept.split("\n"))
    return kept + "\n" + closer if closer else kept


def _fitted(markdown: str, limit: int = NOTES_LIMIT) -> str | None:
    """``markdown`` made acceptable (see :func:`_neutralise`) if it fits ``limit`` whole, else ``None``."""
    if notes_length(markdown) > limit:
        return None
    if is_acceptable_notes(markdown) is None:
        return markdown
    markdown = _neutralise(markdown)
    return markdown if notes_length(markdown) <= limit else None


def _cut_body(body: str, units: int) -> tuple[str, int]:
    """``body``, longer than ``units``, cut as :func:`truncate_notes` cuts to fit ``units`` with its
    marker (only the marker when ``units`` is too few); returns (text, characters left out)."""
    budget = units - notes_length("\n\n" + _marker(len(body)))
    while budget > 0:
        kept = _cut(body, budget)
        if not kept:
            break
        text = _neutralise(_close_fence(kept)) + "\n\n" + _marker(len(body) - len(kept))
        over = notes_length(text) - units
        if over <= 0:
            return text, len(body) - len(kept)
        budget = notes_length(kept) - over  # a shorter cut next time: `_cut` may stop well below the budget
    return _marker(len(body)), len(body)


def truncate_notes(markdown: str, limit: int = NOTES_LIMIT) -> tuple[str, bool]:
    """``markdown`` fitted into ``limit`` UTF-16 units; returns (text, truncated).

    When it is too long it is cut at a paragraph boundary where possible (else a line, else a word),
    an open code fence is closed, and a last line ``_[truncated: N characters not migrated]_`` is
    added (N counts the characters of ``markdown`` left out). Whatever fits is made safe the way
    :func:`html_to_markdown` makes its output safe, so with ``limit=NOTES_LIMIT`` the result is
    always acceptable to :func:`is_acceptable_notes`.
    """
    if (fitted := _fitted(markdown, limit)) is not None:
        return fitted, False
    total = len(markdown)
    reserve = notes_length("\n\n" + _marker(total)) + 16
    budget = limit - reserve
    for _ in range(16):
        kept = _cut(markdown, budget)
        dropped = total - len(kept)
        text = _neutralise(_close_fence(kept)) if kept else ""
        result = (text + "\n\n" if text else "") + _marker(dropped)
        over = notes_length(result) - limit
        if over <= 0 and is_acceptable_notes(result) is None:
            return result, True
        budget -= max(over, 0) + 64
        if budget <= 0:
            break
    return (_marker(total) if notes_length(_marker(total)) <= limit else ""), True


@dataclass(frozen=True)
class Composed:
    """A record's notes as one document, and what was left out to fit it into ``NOTES_LIMIT``."""

    text: str
    cut: tuple[tuple[NoteEntry, int], ...] = ()  # notes whose content was cut, with how many characters each lost
    end_cut: bool = False  # even headers and markers alone did not fit: the end of the whole text was cut instead


_SEPARATOR = "\n\n---\n\n"


def compose_notes(entries: list[NoteEntry]) -> Composed:
    """One markdown document from several notes, within ``NOTES_LIMIT``.

    Entries are sorted by ``created`` (``None`` last, otherwise stable); each gets a header line
    ``**Author** · YYYY-MM-DD HH:MM UTC · Title`` (missing parts left out), a blank line and its
    converted body; entries are separated by ``---`` with blank lines around. Entries with neither
    header nor body are skipped. When the whole is too long, every body is cut to at most the
    largest length that fits (so a long note cannot push the later ones out, and the longest lose
    most), each with its own marker (see :func:`truncate_notes`). Only when the headers and markers
    alone do not fit (hundreds of notes) is the end of the whole text cut instead.
    """
    ordered = sorted(entries, key=lambda entry: (entry.created is None, entry.created or ""))
    items: list[tuple[NoteEntry, str, str, int]] = []
    for entry in ordered:
        header = _header(entry)
        body = entry.markdown if entry.markdown is not None else html_to_markdown(entry.html)
        if header or body:
            items.append((entry, header, body, notes_length(body)))
    whole = _SEPARATOR.join("\n\n".join(part for part in (header, body) if part) for _, header, body, _ in items)
    if (text := _fitted(whole)) is not None:
        return Composed(text)
    low, high = 0, min(NOTES_LIMIT, max(length for *_, length in items))
    best = _compose_within(items, low)
    if best is None:
        return Composed(truncate_notes(whole)[0], end_cut=True)
    while low + 1 < high:  # `best` is the cap `low`'s; no cap from `high` on is tried (nothing cut, or one body alone too long)
        middle = (low + high) // 2
        if (composed := _compose_within(items, middle)) is None:
            high = middle
        else:
            low, best = middle, composed
    return best


def _compose_within(items: list[tuple[NoteEntry, str, str, int]], cap: int) -> Composed | None:
    """The notes with each body cut to at most ``cap`` units, if that fits ``NOTES_LIMIT``."""
    blocks, cut, used = [], [], -len(_SEPARATOR)
    for entry, header, body, length in items:
        if length > cap:
            body, dropped = _cut_body(body, cap)
            cut.append((entry, dropped))
        blocks.append("\n\n".join(part for part in (header, body) if part))
        used += len(_SEPARATOR) + notes_length(blocks[-1])
        if used > NOTES_LIMIT:
            return None
    text = _fitted(_SEPARATOR.join(blocks))
    return None if text is None else Composed(text, tuple(cut))
