"""Making text from submissions safe to store, print and put into spreadsheets.

Student code decides what its cells print, what its exceptions say and how its files are named,
so any of that may hold lone surrogates (which no UTF-8 writer accepts), NULs and terminal control
characters, or a leading ``=`` that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 control characters except \t (0x09) and \n (0x0a); \r\n is turned into \n first
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")
# what Excel, LibreOffice and Google Sheets treat as the start of a formula (OWASP's list)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a valid pair becomes its one
    character); no UTF-8 writer accepts a lone surrogate. Everything else is kept."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean_text(text: str) -> str:
    """``text`` without lone surrogates (see ``replace_surrogates``) and without control
    characters other than newline and tab (NUL, terminal escapes, carriage returns)."""
    text = replace_surrogates(text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text.replace("\r\n", "\n"))
    return text


def sheet_text(text: str) -> str:
    """A clean text cell that a spreadsheet shows as text, never runs as a formula."""
    text = clean_text(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def sheet_row(cells: Iterable[object], number: Callable[[float], str]) -> list[str]:
    """One CSV row: numbers (int or float) formatted by ``number`` and left as numbers, every
    other cell made a safe text cell. Numbers are told apart by type, not by how they look, so a
    file named "-1" is still quoted and a score is never."""
    out = []
    for c in cells:
        if isinstance(c, (int, float)) and not isinstance(c, bool):
            out.append(number(c))
        else:
            out.append(sheet_text("" if c is None else str(c)))
    return out


def cut(text: str, limit: int) -> str:
    """At most about ``limit`` characters of ``text``, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters cut)"


def cut_lines(text: str, max_lines: int, max_chars: int) -> str:
    """The first ``max_lines`` lines (notes) of ``text``, at most about ``max_chars`` of them
    (``cut``), then "... and N more" if lines were left out."""
    lines = text.splitlines()
    more = len(lines) - max_lines
    if more > 0:
        text = "\n".join(lines[:max_lines])
    text = cut(text, max_chars)
    return f"{text}\n... and {more} more" if more > 0 else text
