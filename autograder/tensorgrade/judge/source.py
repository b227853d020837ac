"""Static lookups in the submitted notebook's text: parsed with ``ast``, never executed."""

from __future__ import annotations

import ast
import functools
import re

_MAGIC = re.compile(r"^\s*[%!]")


@functools.lru_cache(maxsize=256)  # every test that reads a definition parses every cell again
def parse_cell(source: str) -> ast.Module | None:
    """Parse a cell, blanking IPython magics and shell lines so the rest still parses (the tree
    is shared between callers: read it, never change it)."""
    lines = ["" if _MAGIC.match(line) else line for line in source.splitlines()]
    if lines and lines[0].startswith("%%"):
        return None
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def definition_source(cells: list[str], name: str) -> str | None:
    """Source of the last top-level ``def``/``class`` called ``name`` in the cells."""
    found = None
    for src in cells:
        tree = parse_cell(src)
        if tree is None:
            continue
        text = "\n".join("" if _MAGIC.match(ln) else ln for ln in src.splitlines())
        for node in tree.body:
            defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if isinstance(node, defs) and node.name == name:
                found = ast.get_source_segment(text, node, padded=True)
                if node.decorator_list:
                    start = node.decorator_list[0].lineno - 1
                    found = "\n".join(text.splitlines()[start : node.end_lineno])
    return found
