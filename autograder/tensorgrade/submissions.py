"""Finding submissions on disk and checking they are notebooks we can grade.

Everything here treats the file as hostile: size caps, no symlinks followed, clear reasons.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_ZIP_MEMBERS = 1000
MAX_ZIP_RATIO = 200  # uncompressed / compressed; beyond this a zip is treated as a bomb


@dataclass(frozen=True)
class Submission:
    key: str  # the student's name in the batch (file stem, or folder name)
    path: Path


class Ungradable(Exception):
    """The submission cannot be graded; the message says why, for the student and the staff."""


def collect(paths: list[Path]) -> list[Submission]:
    """Notebooks named directly, or found in folders (one level of student folders allowed)."""
    subs: list[Submission] = []
    for p in paths:
        if p.is_dir():
            found = [*p.rglob("*.ipynb"), *p.rglob("*.zip")]
            for nb in sorted(found):
                if ".ipynb_checkpoints" in nb.parts:
                    continue
                rel = nb.relative_to(p)
                key = rel.parts[0] if len(rel.parts) > 1 else nb.stem
                subs.append(Submission(_safe_key(key), nb))
        elif p.exists():
            subs.append(Submission(_safe_key(p.stem), p))
        else:
            raise FileNotFoundError(f"no such submission: {p}")
    keys: dict[str, int] = {}
    out = []
    for s in subs:
        n = keys.get(s.key, 0)
        keys[s.key] = n + 1
        out.append(s if n == 0 else Submission(f"{s.key}-{n + 1}", s.path))
    return out


def _safe_key(name: str) -> str:
    key = re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._") or "submission"
    return key[:100]


def read_bytes(path: Path) -> bytes:
    if path.is_symlink():
        raise Ungradable(f"{path.name} is a symbolic link, not a notebook file")
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise Ungradable(
            f"{path.name} is {size / 2**20:.1f} MiB, over the {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB "
            "limit: clear the outputs (Kernel > Restart & Clear Output) and resubmit"
        )
    return path.read_bytes()


def notebook_bytes(raw: bytes, path: Path) -> bytes:
    """The notebook inside a submission's bytes: the file itself, or the one notebook of a zip."""
    if path.suffix.lower() != ".zip":
        return raw
    return _notebook_from_zip(raw, path.name)


def _notebook_from_zip(data: bytes, name: str) -> bytes:
    import io
    import zipfile

    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise Ungradable(f"{name} is not a readable zip file ({e})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise Ungradable(f"{name} holds {len(infos)} files; submit the notebook alone")
    notebooks = []
    for info in infos:
        member = info.filename
        parts = member.replace("\\", "/").split("/")
        if member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise Ungradable(f"{name} contains an unsafe path {member!r}; it was not opened")
        if info.file_size > MAX_NOTEBOOK_BYTES or (
            info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO
        ):
            raise Ungradable(f"{name}: {member} expands too much (a zip bomb?); it was not opened")
        if (
            member.endswith(".ipynb")
            and "__MACOSX" not in parts
            and ".ipynb_checkpoints" not in parts
        ):
            notebooks.append(info)
    if not notebooks:
        raise Ungradable(f"{name} contains no notebook (.ipynb)")
    if len(notebooks) > 1:
        names = ", ".join(i.filename for i in notebooks[:5])
        raise Ungradable(
            f"{name} contains {len(notebooks)} notebooks ({names}): submit exactly one"
        )
    with z.open(notebooks[0]) as f:
        out = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(out) > MAX_NOTEBOOK_BYTES:
        raise Ungradable(f"{name}: the notebook is larger than the limit")
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_notebook(data: bytes, name: str) -> dict:
    """Parse and minimally validate a notebook without executing anything."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Ungradable(
            f"{name} is not UTF-8 text (byte {e.start}): it may be corrupted"
        ) from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as e:
        raise Ungradable(
            f"{name} is not valid notebook JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            "the file may be truncated or edited by hand"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise Ungradable(f"{name} is JSON but not a Jupyter notebook (no list of cells)")
    major = nb.get("nbformat")
    if major != 4:
        raise Ungradable(
            f"{name} uses notebook format v{major}; save it with a current Jupyter (format v4)"
        )
    for i, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") not in {"code", "markdown", "raw"}:
            raise Ungradable(f"{name}: cell {i} is malformed")
        src = cell.get("source", "")
        if not isinstance(src, (str, list)):
            raise Ungradable(f"{name}: cell {i} has a malformed source")
    return nb


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src
