"""Mutants: plausible wrong answers that prove each hidden test checks something.

``solutions/<id>/mutants.yml`` lists them; each replaces one solution cell (found by the name it
defines) with a typical student mistake and says which questions it must lose points on.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from . import notebooks
from .course import Assignment


@dataclass(frozen=True)
class Mutant:
    name: str
    loses: tuple[str, ...]
    code: str
    description: str = ""
    target: str = ""  # optional: a substring that identifies the cell to replace
    extra: tuple[str, ...] = field(default=())


def load_mutants(path: Path) -> list[Mutant]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    out = []
    for i, m in enumerate(data):
        missing = {"name", "loses", "code"} - set(m)
        if missing:
            raise ValueError(f"{path}: mutant #{i + 1} lacks {', '.join(sorted(missing))}")
        out.append(
            Mutant(
                name=m["name"],
                loses=tuple(m["loses"]),
                code=m["code"],
                description=m.get("description", ""),
                target=m.get("target", ""),
            )
        )
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: mutant names must be unique")
    return out


def defined_names(code: str) -> set[str]:
    names: set[str] = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return names
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return names


def apply_mutant(solution: nbformat.NotebookNode, m: Mutant) -> nbformat.NotebookNode:
    """A copy of the solution notebook with the mutant's code in place of its target cell."""
    nb = copy.deepcopy(solution)
    wanted = defined_names(m.code)
    hits = []
    for cell in notebooks.code_cells(nb):
        if m.target:
            if m.target in cell.source:
                hits.append(cell)
        elif wanted & defined_names(cell.source):
            hits.append(cell)
    if len(hits) != 1:
        raise ValueError(
            f"mutant {m.name}: expected exactly one cell defining {sorted(wanted)} "
            f"(or containing target), found {len(hits)}"
        )
    hits[0].source = m.code
    return nb


def submissions(a: Assignment) -> dict[str, bytes]:
    """Honest test submissions: the solution, the untouched student notebook, every mutant."""
    solution = notebooks.read(a.solution)
    subs = {
        "solution": notebooks.dumps(solution).encode(),
        "blank": a.student.read_bytes(),
    }
    if a.mutants.is_file():
        for m in load_mutants(a.mutants):
            subs[f"mutant-{m.name}"] = notebooks.dumps(apply_mutant(solution, m)).encode()
    return subs
