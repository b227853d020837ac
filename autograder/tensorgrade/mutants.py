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
from .errors import UsageError


class MutantError(UsageError, ValueError):
    """A mutants.yml that cannot be applied: printed as ``error: <message>`` (exit status 2)."""


@dataclass(frozen=True)
class Mutant:
    name: str
    loses: tuple[str, ...]
    code: str
    description: str = ""
    target: str = ""  # optional: a substring that identifies the cell to replace
    extra: tuple[str, ...] = field(default=())


def load_mutants(path: Path) -> list[Mutant]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as e:
        raise MutantError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, list):
        raise MutantError(f"{path}: expected a list of mutants, got {type(data).__name__}")
    out = []
    for i, m in enumerate(data):
        if not isinstance(m, dict):
            raise MutantError(f"{path}: mutant #{i + 1} is not a mapping (name, loses, code)")
        missing = {"name", "loses", "code"} - set(m)
        if missing:
            raise MutantError(f"{path}: mutant #{i + 1} lacks {', '.join(sorted(missing))}")
        loses = m["loses"]
        if isinstance(loses, str) or not isinstance(loses, list):
            raise MutantError(f"{path}: mutant {m['name']}: loses must be a list, e.g. [q1]")
        out.append(
            Mutant(
                name=str(m["name"]),
                loses=tuple(str(q) for q in loses),
                code=str(m["code"]),
                description=m.get("description", ""),
                target=m.get("target", ""),
            )
        )
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise MutantError(f"{path}: mutant names must be unique")
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
    """A copy of the solution notebook with the mutant's code in place of its target cell.

    A mutant that matches no cell, or several, is a ``MutantError`` that says which names the
    mutant defines and which the solution does.
    """
    nb = copy.deepcopy(solution)
    wanted = defined_names(m.code)
    hits = []
    for cell in notebooks.code_cells(nb):
        if m.target:
            if m.target in cell.source:
                hits.append(cell)
        elif wanted & defined_names(cell.source):
            hits.append(cell)
    if len(hits) == 1:
        hits[0].source = m.code
        return nb
    if m.target:
        where = f"cell containing target {m.target!r}"
    elif not wanted:
        raise MutantError(
            f"mutant {m.name}: its code defines no top-level function, class or variable "
            "(is it valid Python?), so it replaces no cell of the solution"
        )
    else:
        where = f"cell defining {', '.join(sorted(wanted))}"
    if not hits:
        known = sorted(
            set().union(*(_defined_functions(c.source) for c in notebooks.code_cells(nb)))
        )
        raise MutantError(
            f"mutant {m.name}: the solution has no {where}; its functions and classes are "
            f"{', '.join(known) or 'none'} (a misspelt name in mutants.yml?)"
        )
    raise MutantError(
        f"mutant {m.name}: {len(hits)} cells of the solution match (each a {where}), expected "
        "one: give the mutant a `target:` that only the cell to replace contains"
    )


def _defined_functions(code: str) -> set[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    kinds = (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)
    return {n.name for n in tree.body if isinstance(n, kinds)}


def submissions(a: Assignment) -> dict[str, bytes]:
    """Honest test submissions: the solution, the untouched student notebook, every mutant."""
    solution = notebooks.read(a.solution)
    subs = {
        "solution": notebooks.dumps(solution).encode(),
        "blank": a.student.read_bytes(),
    }
    if a.mutants.is_file():
        for m in load_mutants(a.mutants):
            try:
                mutated = apply_mutant(solution, m)
            except MutantError as e:
                raise MutantError(f"{a.mutants}: {e}") from None
            subs[f"mutant-{m.name}"] = notebooks.dumps(mutated).encode()
    return subs
