"""Reading, normalising and editing notebooks (instructor side: trusted input only)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nbformat


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def normalise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip everything that changes from run to run, so that builds are byte-identical.

    otter assign gives cells random ids; we derive them from position and content instead.
    """
    for i, cell in enumerate(nb.cells):
        digest = hashlib.sha1(f"{i}:{cell.cell_type}:{cell.source}".encode()).hexdigest()[:12]
        cell["id"] = f"c{i:03d}-{digest}"
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(nb), encoding="utf-8")
    tmp.replace(path)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]
