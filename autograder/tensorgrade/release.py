"""`tensorgrade release`: the course as students receive it, to publish as its own repository.

The instructor's repository holds masters, solutions and hidden tests: students never clone it.
A release holds only what a student needs:

* ``assignments/<id>/``: the student notebooks and their data, exactly as ``tensorgrade build``
  makes them (the release refuses stale ones);
* ``src/tensorgrade/``: the modules of tensorgrade that the notebooks' public checks import
  (``testing``, ``portable``; found by reading the imports), installable as the distribution
  ``tensorgrade-student`` with the ``pyproject.toml`` at the top of the release;
* ``requirements.txt`` (``pip install -r requirements.txt``: torch pinned, JupyterLab, otter-grader,
  the helpers), ``student_env.yml`` (conda) and a ``README.md`` with the pip, conda and Colab routes.

Before anything is written, the release is searched for every solution line and every hidden test
name of the masters; one found is an error, never a published secret.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import __version__, notebooks
from .build import build_one, master_tests, release_url, stale_files
from .course import Assignment
from .errors import TensorgradeError, UsageError
from .zips import write_zip

# The only modules of tensorgrade that may reach students: what public tests use. Everything else
# (the grader, judge/, root/, confined/, the hidden tests) stays with the instructor.
STUDENT_MODULES = ("testing", "portable")
DIST_NAME = "tensorgrade-student"
MARKER = ".tensorgrade-release"  # marks a folder `release -o` may replace (all but .git/)
# packages of student_env.yml that are not needed in Colab (it has its own notebook UI)
_NOT_FOR_COLAB = {"jupyterlab", "python", "pip"}
_CONDA_TO_PIP = {"pytorch": "torch"}


class ReleaseError(TensorgradeError, RuntimeError):
    """The release cannot be made (it would give students what they must not see); exit 1."""


@dataclass
class Release:
    files: dict[str, bytes]  # path inside the release -> content
    assignments: list[str]
    notes: list[str] = field(default_factory=list)


# --- which helper modules -------------------------------------------------------------------------


def _imports_of(source: str) -> set[str]:
    """Modules of tensorgrade imported by ``source``: {"testing", ...}; "" for the package itself."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "tensorgrade" or alias.name.startswith("tensorgrade."):
                    found.add(alias.name.partition(".")[2].split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # inside the package: from . import x, from .x import y
                mod = (node.module or "").split(".")[0]
                found |= {mod} if mod else {a.name for a in node.names}
            elif node.module == "tensorgrade":
                found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("tensorgrade."):
                found.add(node.module.split(".")[1])
    return found


def helper_modules(notebook_sources: dict[str, list[str]], package_dir: Path) -> list[str]:
    """The modules of tensorgrade that the given sources (per assignment) need, imports followed.

    Names imported from the package that are not modules (``from tensorgrade import __version__``)
    count as the package itself. A module outside ``STUDENT_MODULES`` is an error.
    """
    wanted: dict[str, str] = {}  # module -> who imports it first
    for who, sources in notebook_sources.items():
        for src in sources:
            for mod in _imports_of(src):
                wanted.setdefault(mod, who)
    todo = list(wanted)
    while todo:
        mod = todo.pop()
        path = package_dir / f"{mod}.py"
        if mod and not path.is_file():
            if (package_dir / mod).is_dir():  # a subpackage: never for students
                _refuse(mod, wanted[mod])
            wanted.pop(mod)  # an attribute of the package, not a module
            continue
        if mod and mod not in STUDENT_MODULES:
            _refuse(mod, wanted[mod])
        if mod:
            for dep in _imports_of(path.read_text(encoding="utf-8")):
                if dep not in wanted:
                    wanted[dep] = f"tensorgrade.{mod}"
                    todo.append(dep)
    return sorted(m for m in wanted if m)


def _refuse(mod: str, who: str) -> None:
    raise ReleaseError(
        f"{who} imports tensorgrade.{mod}, which is not for students (only "
        f"{', '.join('tensorgrade.' + m for m in STUDENT_MODULES)} are released): public tests "
        "and student cells may use only those"
    )


def _student_sources(nb_bytes: bytes) -> list[str]:
    nb = json.loads(nb_bytes)
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    sources += [str(t) for t in nb.get("metadata", {}).get("otter", {}).get("tests", {}).values()]
    return sources


# --- what the student installs --------------------------------------------------------------------


def _env_file(root: Path) -> dict:
    path = root / "student_env.yml"
    if not path.is_file():
        raise ReleaseError(f"no student_env.yml at {root}: the release's environment comes from it")
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(env, dict) or not isinstance(env.get("dependencies"), list):
        raise ReleaseError(f"{path}: expected a conda environment with a dependencies list")
    return env


def _req_name(req: str) -> str:
    return re.split(r"[<>=!~;\[\s]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _conda_to_pip(dep: str) -> str:
    m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", dep.strip())
    name, spec = (m.group(1), m.group(2).strip()) if m else (dep.strip(), "")
    name = _CONDA_TO_PIP.get(name, name)
    if re.fullmatch(r"=[^=<>!].*", spec):  # conda's "=1.26" means 1.26.*
        spec = f"=={spec[1:]}.*"
    return name + spec


def requirements(root: Path) -> list[str]:
    """requirements.txt: student_env.yml's packages for pip, with the helpers as ``.``."""
    out: list[str] = []
    for dep in _env_file(root)["dependencies"]:
        items = dep.get("pip", []) if isinstance(dep, dict) else [_conda_to_pip(str(dep))]
        for item in items:
            item = str(item).strip()
            if item in ("-e .", "."):
                item = "."
            elif _req_name(item) in ("python", "pip"):
                continue
            if item not in out:
                out.append(item)
    if "." not in out:
        out.append(".")
    if not any(_req_name(r) == "torch" and "==" in r for r in out):
        raise ReleaseError(
            "student_env.yml must pin torch (torch==...): an open requirement can "
            "pull a multi-GB CUDA build"
        )
    return out


def helper_dependencies(root: Path) -> list[str]:
    """What ``pip install <release>`` brings: the packages of student_env.yml that a notebook
    needs also in Colab, with tensorgrade's own version ranges (torch is not pinned here: Colab
    brings its own)."""
    ranges = {}
    for req in importlib.metadata.requires("tensorgrade") or []:
        if ";" not in req:
            ranges[_req_name(req)] = req.strip()
    deps = []
    for item in requirements(root):
        name = _req_name(item)
        if item == "." or name in _NOT_FOR_COLAB:
            continue
        deps.append(ranges.get(name, name))
    return deps


def _pyproject(deps: list[str]) -> str:
    meta = importlib.metadata.metadata("tensorgrade")
    requires_python = meta["Requires-Python"] or ">=3.11"
    lines = "".join(f'    "{d}",\n' for d in deps)
    return f"""\
# The course's test helpers (tensorgrade.testing, tensorgrade.portable) as an installable package:
# `pip install .` here, or `pip install <address of this release's zip>`.
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{DIST_NAME}"
version = "{__version__}"
description = "The helpers that the public checks of the course's notebooks import (no grader)"
readme = "README.md"
requires-python = "{requires_python}"
dependencies = [
{lines}]

[tool.setuptools]
package-dir = {{"" = "src"}}
packages = ["tensorgrade"]
"""


_INIT = f'''\
"""The test helpers of the course, for students: what the notebooks' public checks import.

``tensorgrade.testing`` compares results with tolerances that know the dtype;
``tensorgrade.portable`` holds the functions that tests hand to your code. The grader is not here.
Made by `tensorgrade release` from tensorgrade {__version__}.
"""

__version__ = "{__version__}"
'''

_GITIGNORE = """\
.venv/
__pycache__/
*.egg-info/
build/
.ipynb_checkpoints/
.OTTER_LOG
# written by a notebook's first cell in Google Colab
assignments/*/tests/
"""


def _student_env(root: Path) -> str:
    """The course's student_env.yml for the release: the same packages, the helpers from here."""
    text = (root / "student_env.yml").read_text(encoding="utf-8")
    body = text[text.index("name:") :] if "name:" in text else text
    body = re.sub(r"(?m)^([ \t]*-[ \t]*)-e[ \t]+\.[ \t]*$", r"\1.", body)
    name = _env_file(root).get("name", "tensorgrade")
    header = (
        "# The conda environment for the course's notebooks. In this folder:\n"
        f"#   conda env create -f student_env.yml && conda activate {name}\n"
        "# (the last line below installs the course's test helpers from this folder).\n"
    )
    return header + body


# --- the student README ---------------------------------------------------------------------------

_GITHUB_ZIP = re.compile(
    r"^https://github\.com/([\w.-]+)/([\w.-]+)/archive/refs/(?:heads|tags)/(.+)\.zip$"
)


def _github(url: str) -> tuple[str, str, str] | None:
    m = _GITHUB_ZIP.match(url)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _title(nb_bytes: bytes, aid: str) -> str:
    nb = json.loads(nb_bytes)
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            for line in "".join(c["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return aid


def student_readme(
    title: str, rows: list[tuple[str, str, str]], req: list[str], env_name: str
) -> str:
    """The students' README. rows: (id, title, release_url) per assignment."""
    urls = {u for _, _, u in rows if u}
    gh = _github(next(iter(urls))) if len(urls) == 1 else None
    table = [
        "| assignment | notebook |" + (" Colab |" if gh else ""),
        "|---|---|" + "---|" * bool(gh),
    ]
    for aid, name, url in rows:
        path = f"assignments/{aid}/{aid}.ipynb"
        line = f"| {name} | [`{path}`]({path}) |"
        g = _github(url)
        if gh and g:
            link = f"https://colab.research.google.com/github/{g[0]}/{g[1]}/blob/{g[2]}/{path}"
            line += f" [open in Colab]({link}) |"
        elif gh:
            line += " |"
        table.append(line)
    torch = next(r for r in req if _req_name(r) == "torch")
    if gh:
        get = (
            f"`git clone https://github.com/{gh[0]}/{gh[1]}.git`, or download the zip from "
            "GitHub and unzip it"
        )
    else:
        get = "clone it with git, or download the zip and unzip it, as your instructor says"
    no_colab = [aid for aid, _, url in rows if not url]
    if len(no_colab) == len(rows):
        colab = (
            "These notebooks are not set up for Colab (your instructor has not said where the "
            "course is published, so their first cell stops there): use one of the ways above."
        )
    else:
        how = (
            "use the *open in Colab* link in the table above, or in Colab *File → Open notebook "
            "→ GitHub* paste this repository's address"
            if gh
            else "in Colab, *File → Open notebook → Upload* and pick the notebook from this folder"
        )
        colab = (
            f"Open the notebook in Colab ({how}) and run its first cell. In Colab, and only "
            "there, that cell downloads this course, installs otter-grader and the course's test "
            "helpers, and sets up the public checks; elsewhere it does nothing. Then run the "
            "cells in order. A Colab session is temporary: save your work with *File → Download "
            "→ Download .ipynb*."
        )
        if no_colab:
            colab += f" (Not set up for Colab: {', '.join(no_colab)}.)"
    return f"""\
# {title}

The notebooks of the course. Each is a series of questions: fill in each `...`, run the cell,
then run the `grader.check("qN")` cell under it.

{chr(10).join(table)}

## Getting started

Everything you need is in this folder: {get}. Then pick one of three ways to work.

### On your computer, with pip

Python 3.11 or newer. In this folder:

```bash
python3 -m venv .venv
source .venv/bin/activate
pip install -r requirements.txt
jupyter lab
```

On Windows use `py -m venv .venv` and `.venv\\Scripts\\activate` for the first two lines. The
install line brings {torch}, JupyterLab, otter-grader (which runs the checks) and
`{DIST_NAME}` (the course's test helpers, from `src/`). Later, in a new terminal, run
`source .venv/bin/activate` and `jupyter lab` in this folder.

On Linux without an NVIDIA GPU, torch from PyPI is a CUDA build of several GB; the CPU build is
much smaller: run `pip install {torch} --index-url https://download.pytorch.org/whl/cpu`
before the install line.

### On your computer, with conda

```bash
conda env create -f student_env.yml
conda activate {env_name}
jupyter lab
```

### In Google Colab

{colab}

## Checks and grading

A failed check says what was expected ("the density on a float64 grid has dtype torch.float32,
expected torch.float64"). The public checks are a first hint only: the grader also runs hidden
tests on random shapes, in float32 and float64, and on a GPU where one is present. Keep the dtype
and device of your inputs and you will be fine. Submit the notebook (`.ipynb`) as your instructor
says.

## What is here

```
assignments/<id>/   the notebooks (and any data they read)
src/tensorgrade/    the test helpers the checks import: testing (comparisons with tolerances
                    that know the dtype), portable (functions a test hands to your code)
requirements.txt    for pip (the last line installs the helpers from this folder)
student_env.yml     for conda
pyproject.toml      the helpers as a package (tensorgrade-student)
```
"""


# --- making the release ---------------------------------------------------------------------------


def make_release(root: Path, assignments: list[Assignment], title: str = "") -> Release:
    """Everything the release holds, checked: no stale notebook, no module or secret that is not
    for students."""
    import tensorgrade

    if not assignments:
        raise ReleaseError(f"no assignments to release under {root / 'solutions'}")
    files: dict[str, bytes] = {}
    sources: dict[str, list[str]] = {}
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for a in assignments:
        built = build_one(a, write_dist=False)
        stale = stale_files(built)
        if stale:
            raise ReleaseError(
                f"{a.id}: the committed student files are stale "
                f"({', '.join(str(p.relative_to(root)) for p in stale)}): run `tensorgrade "
                "build`, review and commit them, then release"
            )
        for rel, content in built.student_files.items():
            files[f"assignments/{a.id}/{rel}"] = content
            if rel.endswith(".ipynb"):
                sources[f"{a.id}/{rel}"] = _student_sources(content)
        url = release_url(a, notebooks.read(a.master))
        if not url:
            notes.append(
                f"{a.id} has no release_url in its master's ASSIGNMENT CONFIG: in Google Colab its "
                "first cell stops with a message (see docs/release.md)"
            )
        rows.append((a.id, _title(built.student_files[f"{a.id}.ipynb"], a.id), url))

    package_dir = Path(tensorgrade.__file__).parent
    for mod in helper_modules(sources, package_dir):
        files[f"src/tensorgrade/{mod}.py"] = (package_dir / f"{mod}.py").read_bytes()
    files["src/tensorgrade/__init__.py"] = _INIT.encode()

    req = requirements(root)
    env_name = str(_env_file(root).get("name", "tensorgrade"))
    files["requirements.txt"] = (
        "# The course's packages: `pip install -r requirements.txt` in this folder.\n"
        "# torch is pinned: an open requirement can pull a multi-GB CUDA build.\n"
        "# The last line installs the course's test helpers (src/tensorgrade) from this folder.\n"
        + "".join(f"{r}\n" for r in req)
    ).encode()
    files["student_env.yml"] = _student_env(root).encode()
    files["pyproject.toml"] = _pyproject(helper_dependencies(root)).encode()
    files["README.md"] = student_readme(title or "Course notebooks", rows, req, env_name).encode()
    files[".gitignore"] = _GITIGNORE.encode()
    files[MARKER] = (
        f"Made by `tensorgrade release` (tensorgrade {__version__}) from "
        f"{', '.join(a.id for a in assignments)}.\n"
        "`tensorgrade release -o` into this folder replaces everything in it but .git/.\n"
    ).encode()
    release = Release(files, [a.id for a in assignments], notes)
    release.notes += check_no_secrets(release, assignments)
    return release


def _code_lines(master, skip: frozenset[int] = frozenset()) -> Iterator[tuple[str, str]]:
    """Each code line of the master outside the cells in ``skip``, as ``(text, where)``: where is
    ``"region"`` inside ``# BEGIN/END SOLUTION``, ``"marked"`` for a line ending in ``# SOLUTION``
    (its text without the marker), ``"given"`` otherwise. The region markers are left out."""
    inside = False
    for i, cell in enumerate(master.cells):
        if cell.cell_type != "code" or i in skip:
            continue
        for line in cell.source.splitlines():
            s = line.strip()
            if s.endswith("# END SOLUTION"):
                inside = False
            elif inside:
                yield line, "region"
            elif s.endswith("# BEGIN SOLUTION"):
                inside = True
            elif s.endswith("# SOLUTION"):
                yield s[: -len("# SOLUTION")].strip(), "marked"
            else:
                yield line, "given"


def _given_code(master) -> str:
    """The code a master gives students as it is: its code cells outside solution regions and
    outside test cells (a line there is public by its author's choice, in whatever assignment)."""
    tests = frozenset(t.cell for t in master_tests(master))
    return "\n".join(line for line, where in _code_lines(master, tests) if where == "given")


def _solution_lines(master) -> set[str]:
    """Code lines of the master's solutions: in ``# BEGIN/END SOLUTION`` regions, or ``# SOLUTION``."""
    lines = set()
    for line, where in _code_lines(master):
        s = line.strip()
        if where == "marked" or (where == "region" and not s.startswith("#")):
            lines.add(s)
        elif where == "region" and s.endswith("# SOLUTION"):  # a marked comment in a region
            lines.add(s[: -len("# SOLUTION")].strip())
    return {s for s in lines if len(s) > 12}


_OTTER_BLOCK = re.compile(
    r"\s*#\s+((begin|end)\s+(question|prompt|solution|tests)|assignment\s+config)\b", re.I
)


def check_no_secrets(release: Release, assignments: list[Assignment]) -> list[str]:
    """Refuse a release that holds a master's solution line, a hidden test or a master notebook.

    A solution line that the master's own public tests contain is published by its author, and
    the helper modules are tensorgrade's own code, public by design: a solution line found there
    is not an error but a note for the author (that test or helper gives the line away).
    """
    solutions: dict[str, str] = {}
    hidden: dict[str, str] = {}
    notes: list[str] = []
    masters = {a.id: notebooks.read(a.master) for a in assignments}
    given = {aid: _given_code(m) for aid, m in masters.items()}
    for a in assignments:
        master = masters[a.id]
        tests = master_tests(master)
        public = "\n".join(master.cells[t.cell].source for t in tests if not t.hidden)
        for line in sorted(_solution_lines(master)):
            shown = [aid for aid, code in given.items() if line in code]
            if line in public:
                notes.append(f"{a.id}: a public test holds this line of the solution: {line!r}")
            elif shown:  # a generic line (a loop header...) that some master gives students
                notes.append(f"{a.id}: the given code of {', '.join(shown)} holds: {line!r}")
            else:
                solutions[line] = a.id
        hidden |= {t.name: f"{a.id} {t.question}" for t in tests if t.hidden and t.name}
    for path, data in release.files.items():
        text = data.decode("utf-8", "replace")
        code = text
        if path.endswith(".ipynb"):
            nb = json.loads(text)
            if any(
                c["cell_type"] == "raw" and _OTTER_BLOCK.match("".join(c["source"]))
                for c in nb["cells"]
            ):
                raise ReleaseError(f"{path} looks like a master notebook (otter's config cells)")
            tests = nb.get("metadata", {}).get("otter", {}).get("tests", {})
            code = "\n".join(
                ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
                + [str(t) for t in tests.values()]
            )
        for line, aid in solutions.items():
            if line not in code:
                continue
            if path.startswith("src/tensorgrade/") and path != "src/tensorgrade/__init__.py":
                notes.append(
                    f"{aid}: the helper {path} (released as it is) holds this line of the "
                    f"solution: {line!r}; check that the helper does not give the answer away"
                )
            else:
                raise ReleaseError(f"{path} holds a line of the solution of {aid}: {line!r}")
        for name, where in hidden.items():
            if re.search(rf"\b{re.escape(name)}\b", text):
                raise ReleaseError(f"{path} names the hidden test {name} ({where})")
        if "hidden=True" in text or "# BEGIN SOLUTION" in text:
            raise ReleaseError(f"{path} holds a hidden test or a solution marker")
    return notes


def output_path(out: Path, root: Path, as_zip: bool = False) -> Path:
    """Where the release goes, checked before anything is built or written.

    A folder must be new, empty, a clone holding only .git, or an earlier release; a zip gets
    ``.zip`` added if missing. Neither may be the course itself or inside its sources.
    """
    if as_zip and out.suffix != ".zip":
        out = out.with_name(out.name + ".zip")
    full, course = out.resolve(), root.resolve()
    if full == course or course.is_relative_to(full):
        raise UsageError(f"{out} holds the course itself: release to a folder of its own")
    for inner in ("solutions", "assignments", "autograder"):
        if full.is_relative_to(course / inner):
            raise UsageError(f"{out} is inside the course's {inner}/: release elsewhere")
    if as_zip:
        if out.is_dir():
            raise UsageError(f"{out} is a folder: name the zip file to write")
        return out
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder")
    if out.is_dir():
        entries = [p for p in out.iterdir() if p.name != ".git"]
        if entries and not (out / MARKER).is_file():
            raise UsageError(
                f"{out} is not empty and holds no earlier release ({MARKER}): release to a new "
                "folder, an empty one or a clone of the course's student repository"
            )
    return out


def write_folder(release: Release, out: Path, root: Path) -> Path:
    """Write the release to ``out`` (see ``output_path``); of an earlier release everything but
    .git/ is replaced, so files that are gone from the course go from the release too."""
    out = output_path(out, root)
    if out.is_dir():
        for p in out.iterdir():
            if p.name == ".git":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for rel, data in release.files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return out


def write_release_zip(release: Release, out: Path, root: Path) -> Path:
    """Write the release as a reproducible zip, its files in one folder named after the zip."""
    out = output_path(out, root, as_zip=True)
    return write_zip(out, {f"{out.stem}/{rel}": data for rel, data in release.files.items()})
