"""Text made to fit on one line: the helpers every display and message of aioflows shares.

Two different jobs, named apart so neither is mistaken for the other:

- :func:`first_line` keeps the first line of a message and cuts it to a width (an error on
  stderr, a cell of a table): the rest is dropped, and ``...`` says so.
- :func:`printable` keeps all of a text but turns every character that would break a line
  (a newline, a tab, a control character) into a space: a name in a Mermaid, DOT or text graph.

:func:`shorten` cuts an already one-line text to a width, ending in :data:`ELLIPSIS`.
"""

from __future__ import annotations

__all__ = ["ELLIPSIS", "first_line", "printable", "shorten"]

#: What ends a text that was cut.
ELLIPSIS = "..."


def shorten(text: str, width: int) -> str:
    """``text`` if it fits in ``width`` characters, else its start and :data:`ELLIPSIS`,
    ``width`` characters in all."""
    if len(text) <= width:
        return text
    return text[: max(0, width - len(ELLIPSIS))] + ELLIPSIS


def first_line(text: str, width: int) -> str:
    """The first line of ``text`` (stripped), cut to ``width`` characters; it ends with
    :data:`ELLIPSIS` when anything was left out (the end of a long line, or later lines)."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) > width or len(lines) > 1:
        line = line[: width - len(ELLIPSIS)].rstrip() + ELLIPSIS
    return line


def printable(text: str) -> str:
    """``text`` with every character that is not printable replaced by a space (same length)."""
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)
