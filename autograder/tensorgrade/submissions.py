"""Finding submissions on disk and checking they are notebooks we can grade.

Everything here treats the file as hostile: size caps, no symlinks followed, clear reasons.
A bad file always ends as ``Ungradable`` with a reason the student can act on: the JSON is
parsed with bounded nesting and number sizes, the notebook is checked against nbformat's schema
and by type before anything reads it, and every read of a zip is guarded.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .safetext import clean_text, replace_surrogates

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_ZIP_MEMBERS = 1000
MAX_ZIP_RATIO = 200  # uncompressed / compressed; beyond this a zip is treated as a bomb
MAX_JSON_DEPTH = 100  # a notebook Jupyter writes nests about 10 levels (outputs in cells)
MAX_NUMBER_CHARS = 100  # digits of one JSON number; int() refuses beyond 4300 anyway
MAX_CELLS = 2000
MAX_CELL_CHARS = 1_000_000  # source of one cell
CELL_TYPES = {"code", "markdown", "raw"}
# where keys become folder names next to these, they must not take them
RESERVED_KEYS = {"grades.csv", "reports"}
RESAVE = "open it in Jupyter, save it, and resubmit the .ipynb file"
# what the standard library's zip reader raises on damaged or hostile bytes
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,  # UnicodeDecodeError of a member name among them
    RuntimeError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    OverflowError,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class Submission:
    key: str  # the student's name in the batch (file stem, or folder name); unique in a batch
    path: Path


class Ungradable(Exception):
    """The submission cannot be graded; the message says why, for the student and the staff."""


def collect(paths: list[Path]) -> list[Submission]:
    """Notebooks named directly, or found in folders (one level of student folders allowed).

    Every submission gets its own key (its results folder): when two files map to the same
    name, the first in sorted path order keeps it and the others get the next free ``name-N``,
    so no result can overwrite another's, and a rerun gives every file the same key again.
    Keys are compared without case (a case-insensitive disk would merge their folders).
    """
    found: dict[Path, str] = {}  # path -> wanted key; a file named twice is graded once
    for p in paths:
        if p.is_dir():
            hits = [*p.rglob("*.ipynb"), *p.rglob("*.zip")]
            for nb in sorted(hits):
                if ".ipynb_checkpoints" in nb.parts:
                    continue
                rel = nb.relative_to(p)
                found.setdefault(nb, rel.parts[0] if len(rel.parts) > 1 else nb.stem)
        elif p.exists():
            found.setdefault(p, p.stem)
        else:
            raise FileNotFoundError(f"no such submission: {p}")
    return [Submission(k, p) for p, k in unique_keys(sorted(found.items())).items()]


def unique_keys(wanted: list[tuple[Path, str]]) -> dict[Path, str]:
    """Path -> a safe key, unique without case: the first path asking for a key gets it (a
    later one asking for its own name, e.g. "ada-2", keeps it too); the others get the next
    free "key-N"."""
    safe = [(p, _safe_key(k)) for p, k in wanted]
    taken = {k.casefold() for k in RESERVED_KEYS}
    keys: dict[Path, str] = {}
    for p, k in safe:  # first come: everyone who can keep the name they asked for
        if k.casefold() not in taken:
            taken.add(k.casefold())
            keys[p] = k
    for p, k in safe:
        if p in keys:
            continue
        n = 2
        while f"{k}-{n}".casefold() in taken:
            n += 1
        taken.add(f"{k}-{n}".casefold())
        keys[p] = f"{k}-{n}"
    return {p: keys[p] for p, _ in safe}


def _safe_key(name: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._") or "submission"
    return key[:100]


def read_bytes(path: Path) -> bytes:
    """The file's bytes, if it is a regular file (not a link, folder or pipe) within the limit."""
    name = clean_text(path.name)
    if path.is_symlink():
        raise Ungradable(f"{name} is a symbolic link, not a notebook file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise Ungradable(f"{name} cannot be opened ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Ungradable(f"{name} is not a regular file")
        _check_size(info.st_size, name)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_NOTEBOOK_BYTES + 1)  # the file may grow after the check
    finally:
        os.close(fd)
    _check_size(len(data), name)
    return data


def _check_size(size: int, name: str) -> None:
    if size > MAX_NOTEBOOK_BYTES:
        raise Ungradable(
            f"{name} is {size / 2**20:.1f} MiB, over the {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB "
            "limit: clear the outputs (Kernel > Restart & Clear Output) and resubmit"
        )


def notebook_bytes(raw: bytes, path: Path) -> bytes:
    """The notebook inside a submission's bytes: the file itself, or the one notebook of a zip."""
    if path.suffix.lower() != ".zip":
        return raw
    return _notebook_from_zip(raw, clean_text(path.name))


def _notebook_from_zip(data: bytes, name: str) -> bytes:
    """The one notebook in a zip; every read of the zip is guarded, a damaged or hostile zip
    is Ungradable."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = _the_notebook(z.infolist(), name)
            if info.flag_bits & 0x1:
                raise Ungradable(
                    f"{name}: {_quote(info.filename)} is password-protected; zip it again "
                    "without a password, or submit the .ipynb file itself"
                )
            with z.open(info) as f:
                out = f.read(MAX_NOTEBOOK_BYTES + 1)
    except _ZIP_ERRORS as e:
        raise Ungradable(
            f"{name} is not a readable zip file ({_quote(str(e), 120)}): zip the notebook again, "
            "or submit the .ipynb file itself"
        ) from None
    if len(out) > MAX_NOTEBOOK_BYTES:
        raise Ungradable(f"{name}: the notebook is larger than the limit")
    return out


def _the_notebook(infos: list[zipfile.ZipInfo], name: str) -> zipfile.ZipInfo:
    if len(infos) > MAX_ZIP_MEMBERS:
        raise Ungradable(f"{name} holds {len(infos)} files; submit the notebook alone")
    notebooks = []
    for info in infos:
        member = info.filename
        parts = member.replace("\\", "/").split("/")
        if member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise Ungradable(f"{name} contains an unsafe path {_quote(member)}; it was not opened")
        if info.file_size > MAX_NOTEBOOK_BYTES or (
            info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO
        ):
            raise Ungradable(
                f"{name}: {_quote(member)} expands too much (a zip bomb?); it was not opened"
            )
        if (
            member.endswith(".ipynb")
            and "__MACOSX" not in parts
            and ".ipynb_checkpoints" not in parts
        ):
            notebooks.append(info)
    if not notebooks:
        raise Ungradable(f"{name} contains no notebook (.ipynb)")
    if len(notebooks) > 1:
        names = ", ".join(_quote(i.filename, 60) for i in notebooks[:5])
        raise Ungradable(
            f"{name} contains {len(notebooks)} notebooks ({names}): submit exactly one"
        )
    return notebooks[0]


def _quote(value: object, limit: int = 80) -> str:
    """A value from the submission, quoted for a message: clean, and short."""
    text = clean_text(value if isinstance(value, str) else repr(value))
    return repr(text if len(text) <= limit else text[:limit] + "...")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _NumberTooLong(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(len(text))
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(len(text))
    return float(text)


def _too_deep(value: object, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iteratively: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, dict) else v
        for c in children:
            if isinstance(c, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((c, depth + 1))
    return False


def parse_notebook(data: bytes, name: str) -> dict:
    """Parse and validate a notebook without executing anything: a dict whose structure the
    grader can rely on (metadata a dict, cells a list of dicts with a str cell_type and a str or
    list-of-str source), or Ungradable with a reason."""
    name = clean_text(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Ungradable(
            f"{name} is not UTF-8 text (byte {e.start}): it may be corrupted"
        ) from None
    try:
        nb = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=float)
    except json.JSONDecodeError as e:
        raise Ungradable(
            f"{name} is not valid notebook JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "the file may be truncated or edited by hand"
        ) from None
    except _NumberTooLong as e:
        raise Ungradable(
            f"{name} holds a number {e.args[0]} characters long, which no notebook needs; {RESAVE}"
        ) from None
    except RecursionError:  # nested far beyond MAX_JSON_DEPTH
        raise Ungradable(
            f"{name} nests its JSON more than {MAX_JSON_DEPTH} levels deep; {RESAVE}"
        ) from None
    except ValueError as e:
        raise Ungradable(f"{name} is not valid notebook JSON ({_quote(str(e))})") from None
    if isinstance(nb, (dict, list)) and _too_deep(nb, MAX_JSON_DEPTH):
        raise Ungradable(f"{name} nests its JSON more than {MAX_JSON_DEPTH} levels deep; {RESAVE}")
    _check_structure(nb, name)
    _check_schema(nb, name)
    for cell in nb["cells"]:  # a lone surrogate is not text: it would fail the sandbox's pipe
        if isinstance(cell["source"], str):
            cell["source"] = replace_surrogates(cell["source"])
        else:
            cell["source"] = [replace_surrogates(s) for s in cell["source"]]
    return nb


def _check_structure(nb: object, name: str) -> None:
    """The types the grader relies on, with messages naming the cell (before the schema, whose
    messages are less clear, and whose code must not meet a wrong type either)."""
    if not isinstance(nb, dict):
        raise Ungradable(f"{name} is JSON but not a Jupyter notebook (no list of cells)")
    major = nb.get("nbformat")
    if isinstance(major, int) and not isinstance(major, bool) and major != 4:
        raise Ungradable(
            f"{name} uses notebook format v{major}; save it with a current Jupyter (format v4)"
        )
    if not isinstance(nb.get("cells"), list):
        raise Ungradable(f"{name} is JSON but not a Jupyter notebook (no list of cells)")
    if major != 4 or isinstance(major, bool):
        raise Ungradable(f"{name} does not say it is a format v4 notebook (nbformat: 4); {RESAVE}")
    cells = nb["cells"]
    if len(cells) > MAX_CELLS:
        raise Ungradable(f"{name} has {len(cells)} cells, over the limit of {MAX_CELLS}")
    for i, cell in enumerate(cells, start=1):
        kind = cell.get("cell_type") if isinstance(cell, dict) else None
        if not isinstance(kind, str) or kind not in CELL_TYPES:
            raise Ungradable(f"{name}: cell {i} is malformed")
        src = cell.get("source")
        if not (isinstance(src, str) or (isinstance(src, list) and _all_str(src))):
            raise Ungradable(f"{name}: cell {i} has a malformed source (not text)")
        size = len(src) if isinstance(src, str) else sum(map(len, src))
        if size > MAX_CELL_CHARS:
            raise Ungradable(
                f"{name}: cell {i} holds {size} characters, over the limit of {MAX_CELL_CHARS}; "
                "load large data from a file instead of pasting it into a cell"
            )
        if not isinstance(cell.get("metadata", {}), dict):
            raise Ungradable(f"{name}: cell {i} has malformed metadata; {RESAVE}")
        if "id" in cell and not isinstance(cell["id"], str):
            raise Ungradable(f"{name}: cell {i} has a malformed id; {RESAVE}")
        if cell["cell_type"] == "code" and not isinstance(cell.get("outputs", []), list):
            raise Ungradable(f"{name}: cell {i} has malformed outputs; {RESAVE}")
    minor = nb.get("nbformat_minor")
    if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
        raise Ungradable(f"{name} has no valid nbformat_minor (a number); {RESAVE}")
    if not isinstance(nb.get("metadata"), dict):
        raise Ungradable(f"{name}: the notebook's metadata is not a JSON object; {RESAVE}")


def _where(path: list) -> str:
    """A schema error's place as a student reads it: " in cell 3 (outputs/0)"."""
    if len(path) >= 2 and path[0] == "cells" and isinstance(path[1], int):
        rest = "/".join(map(str, path[2:]))
        return f" in cell {path[1] + 1}" + (f" ({_quote(rest, 60)[1:-1]})" if rest else "")
    return f" at {_quote('/'.join(map(str, path)), 60)}" if path else ""


def _all_str(items: list) -> bool:
    return all(isinstance(x, str) for x in items)


def _check_schema(nb: dict, name: str) -> None:
    """nbformat's own JSON schema for the notebook's version. Unknown extra fields (other tools
    add some, and Jupyter opens such notebooks) are allowed; known fields must be right."""
    import nbformat

    # a notebook from a future Jupyter is checked as nbformat checks any future minor version
    # (with the newest schema, relaxed); clamped so that odd versions don't each compile a schema
    minor = min(nb["nbformat_minor"], nbformat.v4.nbformat_minor + 1)
    try:
        with warnings.catch_warnings():  # missing or duplicate cell ids: repaired, not an error
            warnings.simplefilter("ignore")
            nbformat.validate(nb, version=4, version_minor=minor, relax_add_props=True)
    except nbformat.ValidationError as e:
        what = _quote(getattr(e, "message", None) or str(e), 160)
        where = _where(list(getattr(e, "absolute_path", None) or []))
        raise Ungradable(
            f"{name} does not follow the notebook format{where} ({what}); {RESAVE}"
        ) from None
    except RecursionError:
        raise Ungradable(f"{name} nests its JSON too deeply; {RESAVE}") from None


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src
