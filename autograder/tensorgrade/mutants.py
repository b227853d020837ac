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


# --- automatic non-answers ------------------------------------------------------------------------
# A non-answer is a notebook whose every graded name (every parameter of a test function) is
# replaced by a function that does no work: it returns zeros of the shape of its first tensor
# input, returns its first input unchanged, or returns a constant of another dtype. A test that
# gives such a notebook a point checks something a wrong answer also has (a dtype alone, a shape
# alone, a range, the student's function against itself), so `tensorgrade audit` fails on it.

NONANSWER_KINDS: dict[str, str] = {
    "zeros": "every graded name returns zeros of the shape, dtype and device of its first tensor "
    "input (torch.zeros(1) when it has none)",
    "identity": "every graded name returns its first input unchanged",
    "other_dtype": "every graded name returns ones of the shape of its first tensor input in "
    "another dtype (float32 for float64 input, float64 otherwise)",
}

_NONANSWER_HELPER = '''
def _tg_nonanswer(kind, args):
    """What a non-answer returns (tensorgrade audit): no work done."""
    import torch

    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if kind == "identity":
        return args[0] if args else None
    if first is None:
        return torch.zeros(1)
    if kind == "zeros":
        return torch.zeros_like(first)
    other = torch.float32 if first.dtype == torch.float64 else torch.float64
    return torch.ones(first.shape, dtype=other, device=first.device)
'''

_NONANSWER_FUNCTION = """
def {name}(*args, **kwargs):
    return _tg_nonanswer({kind!r}, args)
"""

# A class graded through ``Name.apply`` (a torch.autograd.Function): forward does no work, every
# derivative is zero (identity: the derivative of the identity in the first input).
_NONANSWER_CLASS = """
class {name}(torch.autograd.Function):
    @staticmethod
    def forward(*args):
        out = _tg_nonanswer({kind!r}, args)
        return out.clone() if isinstance(out, torch.Tensor) else out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.tg_inputs = [a if isinstance(a, torch.Tensor) else None for a in inputs]

    @staticmethod
    def backward(ctx, *grads):
        out = []
        for i, a in enumerate(ctx.tg_inputs):
            if a is None or not ctx.needs_input_grad[i]:
                out.append(None)
            elif {kind!r} == "identity" and i == 0:
                out.append(grads[0])
            else:
                out.append(torch.zeros_like(a))
        return tuple(out)

    @staticmethod
    def jvp(ctx, *tangents):
        if {kind!r} == "identity":
            return tangents[0]
        first = next(a for a in ctx.tg_inputs if a is not None)
        return torch.zeros_like(first)
"""


def graded_names(specs: list) -> list[str]:
    """Every name a test takes as a parameter (the student's work that is graded), in order."""
    import inspect

    seen: dict[str, None] = {}
    for s in specs:
        for p in inspect.signature(s.func).parameters:
            seen.setdefault(p)
    return list(seen)


def nonanswer_code(kind: str, names: list[str], classes: set[str]) -> str:
    """A cell that redefines each graded name as a non-answer of the given kind."""
    if kind not in NONANSWER_KINDS:
        raise ValueError(f"unknown non-answer kind {kind!r}; known: {', '.join(NONANSWER_KINDS)}")
    parts = ["import torch", _NONANSWER_HELPER]
    for name in names:
        template = _NONANSWER_CLASS if name in classes else _NONANSWER_FUNCTION
        parts.append(template.format(name=name, kind=kind))
    return "\n".join(parts)


def nonanswer_submissions(a: Assignment, specs: list) -> dict[str, bytes]:
    """One notebook per non-answer kind: the solution with a last cell that replaces every graded
    name (the last definition of a name is the one that is called and whose source is read)."""
    solution = notebooks.read(a.solution)
    classes: set[str] = set()
    defined: set[str] = set()
    for cell in notebooks.code_cells(solution):
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        classes |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        defined |= _defined_functions(cell.source)
    # names the notebook imports (``torch``, which a side-effect test may take) are not graded work
    names = [n for n in graded_names(specs) if n in defined]
    out = {}
    for kind in NONANSWER_KINDS:
        nb = copy.deepcopy(solution)
        nb.cells.append(nbformat.v4.new_code_cell(nonanswer_code(kind, names, classes)))
        out[f"nonanswer-{kind}"] = notebooks.dumps(nb).encode()
    return out
