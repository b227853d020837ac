"""Finding submissions on disk and checking they are notebooks we can grade.

Everything here treats the file as hostile: size caps, no symlinks followed, clear reasons.
A bad file always ends as ``Ungradable`` with a reason the student can act on: the JSON is
parsed with bounded nesting and number sizes, the notebook is checked against nbformat's schema
and by type before anything reads it, and every read of a zip is guarded.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, NotFoundError
from .lms.downloads import (
    GRADESCOPE_METADATA,
    CanvasName,
    MetadataError,
    gradescope_identity,
    gradescope_key,
    parse_canvas_name,
    parse_gradescope_metadata,
)
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
    # who it belongs to, as the LMS's download said (see ``lms/downloads.py``); {} for plain files.
    # Stored in the result (``SubmissionResult.lms``), so exports need no hand-written roster.
    lms: dict = field(default_factory=dict, compare=False, hash=False)


class Ungradable(Exception):
    """The submission cannot be graded; the message says why, for the student and the staff."""


class IntakeError(InputError):
    """The batch's input cannot be used as given (a damaged download): nothing is graded."""


@dataclass
class Intake:
    """What ``read_intake`` found: the submissions, and notes for the log (LMS downloads
    recognised, earlier submissions not graded, folders without a notebook)."""

    submissions: list[Submission]
    notes: list[str] = field(default_factory=list)


def collect(paths: list[Path]) -> list[Submission]:
    """The submissions in ``paths`` (see ``read_intake``)."""
    return read_intake(paths).submissions


def read_intake(paths: list[Path], share_with: str = "") -> Intake:
    """Notebooks named directly, or found in folders (one level of student folders allowed), and
    the downloads of LMSs, each student once:

    * A file named as Canvas's "Download Submissions" names them (``lms/downloads.py``) is keyed
      ``<name>_<user id>`` and carries the user id; of several files of one student the latest
      upload is graded, the others are listed (``lms["earlier"]`` and a note), not graded.
    * A zip holding such files only (the downloaded ``submissions.zip``) is a class: expanded,
      each member through the same guard as a student's zip, into a private folder that lives as
      long as this process (``share_with``: a user who must read it too, the judge).
    * A folder, or a zip, with Gradescope's ``submission_metadata.yml`` is a Gradescope export:
      one submission per ``submission_<id>/`` folder, keyed and identified by its submitters
      (all members of a group).
    * A student folder holding files of two or more Canvas users is an unpacked download.

    Every submission gets its own key (its results folder): when two files map to the same
    name, the first in sorted path order keeps it and the others get the next free ``name-N``,
    so no result can overwrite another's, and a rerun gives every file the same key again.
    Keys are compared without case (a case-insensitive disk would merge their folders).
    """
    intake = _Intake(share_with)
    for p in paths:
        if p.is_dir():
            intake.folder(p)
        elif p.exists():
            intake.file(p)
        else:
            raise NotFoundError(f"no such submission: {p}")
    return intake.finish()


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


# -- LMS downloads ------------------------------------------------------------------------------
MAX_DOWNLOAD_BYTES = 8 * 2**30  # a class's zip (Canvas, Gradescope) as downloaded
MAX_DOWNLOAD_MEMBERS = 50_000
MAX_EXPANDED_BYTES = 4 * 2**30  # what expanding one download may write to disk, in all
MAX_METADATA_BYTES = 64 * 2**20  # submission_metadata.yml (it holds every result's JSON too)
# A file the intake writes instead of a submission it refused (a member over the size limit, a
# Gradescope submission with no notebook or several): grading it gives "ungradable" with the
# reason it holds (``notebook_bytes``). Only ever written into the intake's own folder.
REFUSAL_SUFFIX = ".tensorgrade-refused"
_REFUSAL_MAGIC = b"tensorgrade: refused at intake\n"
_WORK_SUFFIXES = (".ipynb", ".zip")
_JUNK_PARTS = ("__MACOSX", ".ipynb_checkpoints")


def _unsafe_member(member: str) -> bool:
    """A zip member name that would leave the folder it is expanded into."""
    parts = member.replace("\\", "/").split("/")
    return member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]


def _junk(parts: tuple[str, ...] | list[str]) -> bool:
    return any(p in _JUNK_PARTS or p.startswith("._") for p in parts)


def _file_name(part: str) -> str:
    """A name from a download, safe as one file or folder name (suffix kept, length capped)."""
    name = re.sub(r"[^\w.@+-]+", "_", clean_text(part)).lstrip(".") or "_"
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = stem[: 140 - len(ext)] + dot + ext if dot and len(ext) < 20 else name[:150]
    return name


@contextlib.contextmanager
def _opened_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """A zip file on disk, opened without following a link; only a regular file within
    MAX_DOWNLOAD_BYTES (else Ungradable). Zip errors reach the caller."""
    name = clean_text(path.name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise Ungradable(f"{name} cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_DOWNLOAD_BYTES:
            raise Ungradable(f"{name} is not a regular file within the size limit")
        os.set_blocking(fd, True)
        with zipfile.ZipFile(f) as z:
            yield z


def _download_kind(path: Path) -> tuple[str, str] | None:
    """("canvas", "") for a zip of Canvas-named files only (a downloaded submissions.zip),
    ("gradescope", root) for a Gradescope export (``root``: the folder of its metadata inside
    the zip), None for anything else (a student's own zip: graded as one submission)."""
    try:
        with _opened_zip(path) as z:
            infos = z.infolist()
    except (*_ZIP_ERRORS, Ungradable):
        return None  # graded as a submission: its result says what is wrong with it
    if len(infos) > MAX_DOWNLOAD_MEMBERS or any(_unsafe_member(i.filename) for i in infos):
        return None
    names = [i.filename.replace("\\", "/") for i in infos if not i.is_dir()]
    metas = sorted(
        (n for n in names if n.rpartition("/")[2] == GRADESCOPE_METADATA and n.count("/") <= 1),
        key=lambda n: (n.count("/"), n),
    )
    if metas:
        return "gradescope", metas[0].rpartition("/")[0]
    work = [n for n in names if n.lower().endswith(_WORK_SUFFIXES) and not _junk(n.split("/"))]
    if work and all(parse_canvas_name(n.rpartition("/")[2]) for n in work):
        return "canvas", ""
    return None


def _member_refusal(info: zipfile.ZipInfo, name: str) -> str:
    """Why a member of a download that is one student's submission is not expanded ("" if it is
    fine): the checks of a student's own zip, as that student reads them."""
    if info.flag_bits & 0x1:
        return f"{name} is password-protected in the download; submit it again without a password"
    if info.file_size > MAX_NOTEBOOK_BYTES:
        return _size_message(info.file_size, name)
    if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
        return f"{name} expands too much (a zip bomb?); it was not opened"
    return ""


class _Intake:
    """The state of one ``read_intake``: what was found, where downloads were expanded."""

    def __init__(self, share_with: str = "") -> None:
        self.share_with = share_with
        # path -> (sort order, wanted key, lms identity); the first registration of a path wins
        self.entries: dict[Path, tuple[tuple[str, ...], str, dict]] = {}
        # Canvas-named files, grouped per student at the end: (order, path, parsed, shown as)
        self.canvas: list[tuple[tuple[str, ...], Path, CanvasName, str]] = []
        self.notes: list[str] = []
        self._seen: set[Path] = set()
        self._dir: Path | None = None
        self._folders = 0

    # -- what is found where -----------------------------------------------------------------
    def add(self, path: Path, order: tuple[str, ...], key: str, lms: dict | None = None) -> None:
        if path not in self._seen:
            self._seen.add(path)
            self.entries[path] = (order, key, lms or {})

    def folder(self, root: Path) -> None:
        if _is_gradescope_export(root):
            self.gradescope(root, clean_text(root.name))
            return
        exports = set()
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.is_symlink() and _is_gradescope_export(d):
                exports.add(d.name)
                self.gradescope(d, clean_text(d.name))
        students: dict[str, list[Path]] = {}
        for nb in sorted([*root.rglob("*.ipynb"), *root.rglob("*.zip")]):
            rel = nb.relative_to(root).parts
            if ".ipynb_checkpoints" in rel or rel[0] in exports:
                continue
            if len(rel) == 1:
                self.file(nb)
            else:
                students.setdefault(rel[0], []).append(nb)
        for name, files in students.items():
            named = [parse_canvas_name(f.name) for f in files]
            if all(named) and len({c.student for c in named if c}) >= 2:
                for f in files:  # an unpacked Canvas download, not one student's folder
                    self.file(f)
            else:
                for f in files:
                    self.add(f, f.parts, name)

    def file(self, p: Path) -> None:
        if p in self._seen:
            return
        canvas = parse_canvas_name(p.name)
        if p.suffix.lower() == ".zip" and canvas is None:
            kind = _download_kind(p)
            if kind is not None:
                self._seen.add(p)
                if kind[0] == "canvas":
                    self.canvas_zip(p)
                else:
                    self.gradescope_zip(p, kind[1])
                return
        if canvas is not None and p.suffix.lower() in _WORK_SUFFIXES:
            self._seen.add(p)
            self.canvas.append((p.parts, p, canvas, clean_text(p.name)))
            return
        self.add(p, p.parts, p.stem)

    # -- Canvas ------------------------------------------------------------------------------
    def canvas_zip(self, p: Path) -> None:
        shown = clean_text(p.name)
        dest = self._new_folder(p.stem)
        try:
            with _opened_zip(p) as z:
                members = [
                    i
                    for i in z.infolist()
                    if not i.is_dir()
                    and i.filename.lower().endswith(_WORK_SUFFIXES)
                    and not _junk(i.filename.replace("\\", "/").split("/"))
                ]
                self._check_total(shown, members)
                students = set()
                for i in members:
                    parts = i.filename.replace("\\", "/").split("/")
                    canvas = parse_canvas_name(parts[-1])
                    assert canvas is not None  # _download_kind checked every member
                    path = self._expand(z, i, dest, parts[-1], canvas.file)
                    self.canvas.append(((*p.parts, *parts), path, canvas, clean_text(parts[-1])))
                    students.add(canvas.student)
        except (*_ZIP_ERRORS, Ungradable) as e:
            raise IntakeError(
                f"{shown} is a Canvas download that could not be expanded "
                f"({_quote(str(e), 120)}): download it again"
            ) from None
        self.notes.append(
            f"{shown}: a Canvas download, {len(members)} file(s) of {len(students)} student(s)"
        )

    def _canvas_submissions(self) -> None:
        """Each student's latest upload (largest file id) becomes their submission; earlier
        ones are recorded and noted, not graded."""
        by_student: dict[str, list] = {}
        for item in self.canvas:
            by_student.setdefault(item[2].student, []).append(item)
        for files in by_student.values():
            files.sort(key=lambda f: (f[2].file_id, f[2].resubmission, f[0]))
            order, path, latest, shown = files[-1]
            earlier: dict[int, str] = {}
            for _, _, c, name in files[:-1]:
                if c.file_id != latest.file_id:  # the same upload met twice is one
                    earlier.setdefault(c.file_id, name)
            lms = latest.identity()
            if earlier:
                lms["earlier"] = list(earlier.values())
                self.notes.append(
                    f"{latest.key}: graded {shown}; earlier, not graded: "
                    + ", ".join(earlier.values())
                )
            self.entries[path] = (order, latest.key, lms)  # (``file`` has seen it)

    # -- Gradescope --------------------------------------------------------------------------
    def gradescope(self, root: Path, shown: str) -> None:
        meta = root / GRADESCOPE_METADATA
        try:
            text = read_bytes(meta, MAX_METADATA_BYTES).decode("utf-8", "replace")
            records = parse_gradescope_metadata(text, f"{shown}/{GRADESCOPE_METADATA}")
        except (Ungradable, MetadataError) as e:
            raise IntakeError(f"{e}: export the submissions from Gradescope again") from None
        folders = {d.name: d for d in root.iterdir() if d.is_dir() and not d.is_symlink()}
        people = found = 0
        for name, record in sorted(records.items()):
            members = record["members"]
            who = ", ".join(m.get("name") or m.get("email") or m["sis_user_id"] for m in members)
            d = folders.get(name)
            if d is None:
                self.notes.append(
                    f"{shown}: {name} ({who or 'no submitter'}) is in {GRADESCOPE_METADATA} "
                    "but has no folder in the export: nothing to grade"
                )
                continue
            people += len(members)
            found += 1
            path = self._one_notebook(d, name)
            key = gradescope_key(members, name)
            self.add(path, (*root.parts, name), key, gradescope_identity(name, record))
            if len(members) > 1:
                self.notes.append(f"{shown}: {name} is a group ({who}): each member gets its grade")
        for name in sorted(set(folders) - set(records)):
            if any(folders[name].rglob("*.ipynb")):
                self.notes.append(
                    f"{shown}: {name} is not in {GRADESCOPE_METADATA}: graded under its folder "
                    "name, with no student identity"
                )
                for nb in sorted(folders[name].rglob("*.ipynb")):
                    self.add(nb, nb.parts, name)
        self.notes.append(
            f"{shown}: a Gradescope export, {found} submission(s) of {people} student(s)"
        )

    def _one_notebook(self, folder: Path, name: str) -> Path:
        """The one notebook (or zip) of a Gradescope submission folder, else a refusal that
        says what the student must upload, as the Gradescope autograder says it."""
        files = sorted(
            f
            for f in folder.rglob("*")
            if (f.is_file() or f.is_symlink())
            and not _junk(rel := f.relative_to(folder).parts)
            and not any(x.startswith(".") for x in rel)
        )
        ours = [f for f in files if self._dir and f.is_relative_to(self._dir)]  # refusals
        notebooks = [
            f
            for f in files
            if f.suffix.lower() == ".ipynb" or (f in ours and f.name.endswith(REFUSAL_SUFFIX))
        ]
        zips = [f for f in files if f.suffix.lower() == ".zip"]
        if len(notebooks) == 1:
            return notebooks[0]
        if not notebooks and len(zips) == 1:
            return zips[0]
        shown = [f.relative_to(folder).as_posix().removesuffix(REFUSAL_SUFFIX) for f in files]
        if notebooks:
            names = ", ".join(shown[files.index(f)] for f in notebooks[:10])
            why = (
                f"Your submission holds {len(notebooks)} notebooks ({names}). Upload exactly "
                "one notebook and resubmit."
            )
        else:
            got = ", ".join(shown[:10]) or "no files"
            why = (
                f"No notebook (.ipynb) was found in your submission ({got}). Upload your "
                "notebook itself (not a PDF or an export) and resubmit."
            )
        return self._refusal(self._new_folder(name), f"{name}.ipynb", why)

    def gradescope_zip(self, p: Path, top: str) -> None:
        """Expand a Gradescope export zip (its metadata, and each submission folder's notebooks
        and zips, through the guard), then read it as a folder."""
        shown = clean_text(p.name)
        dest = self._new_folder(p.stem)
        prefix = f"{top}/" if top else ""
        try:
            with _opened_zip(p) as z:
                infos = [
                    i
                    for i in z.infolist()
                    if i.filename.replace("\\", "/").startswith(prefix)
                    and not _junk(i.filename.replace("\\", "/").split("/"))
                ]
                work = [i for i in infos if i.filename.lower().endswith(_WORK_SUFFIXES)]
                self._check_total(shown, work)
                for i in infos:
                    rel = [x for x in i.filename.replace("\\", "/")[len(prefix) :].split("/") if x]
                    if not rel:
                        continue
                    if len(rel) > 1 or i.is_dir():  # a submission's folder, even an empty one
                        self._mkdir(dest / _file_name(rel[0]))
                    if i.is_dir():
                        continue
                    if rel == [GRADESCOPE_METADATA]:
                        if i.file_size > MAX_METADATA_BYTES:
                            raise IntakeError(f"{shown}: {GRADESCOPE_METADATA} is too large")
                        with z.open(i) as f:
                            self._write(dest / GRADESCOPE_METADATA, f.read(MAX_METADATA_BYTES + 1))
                    elif len(rel) > 1 and i.filename.lower().endswith(_WORK_SUFFIXES):
                        where = dest / _file_name(rel[0])
                        for part in rel[1:-1]:
                            where = self._mkdir(where / _file_name(part))
                        self._expand(z, i, where, rel[-1], rel[-1])
        except (*_ZIP_ERRORS, Ungradable) as e:
            raise IntakeError(
                f"{shown} is a Gradescope export that could not be expanded "
                f"({_quote(str(e), 120)}): export it again"
            ) from None
        self.gradescope(dest, shown)

    # -- the intake's own folder -------------------------------------------------------------
    def _workdir(self) -> Path:
        """A private folder for expanded downloads, removed when this process ends; readable by
        ``share_with``'s group too (the judge reads the submissions)."""
        if self._dir is None:
            d = Path(tempfile.mkdtemp(prefix="tensorgrade-intake-"))
            atexit.register(shutil.rmtree, d, True)
            self._share(d, 0o750)
            self._dir = d
        return self._dir

    def _new_folder(self, name: str) -> Path:
        self._folders += 1
        return self._mkdir(self._workdir() / f"{self._folders:03d}-{_file_name(name)[:60]}")

    def _mkdir(self, path: Path) -> Path:
        if not path.is_dir():
            path.mkdir(mode=0o700)
            self._share(path, 0o750)
        return path

    def _share(self, path: Path, mode: int) -> None:
        if not self.share_with:
            return
        import pwd

        os.chown(path, -1, pwd.getpwnam(self.share_with).pw_gid)
        os.chmod(path, mode)

    def _write(self, path: Path, data: bytes) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._share(path, 0o640)
        return path

    def _free(self, folder: Path, name: str) -> Path:
        """``folder/name``, or ``folder/N/name`` if taken (two members of one name)."""
        path, n = folder / name, 1
        while path.exists() or Path(f"{path}{REFUSAL_SUFFIX}").exists():
            n += 1
            path = self._mkdir(folder / str(n)) / name
        return path

    def _refusal(self, folder: Path, name: str, why: str) -> Path:
        path = self._free(folder, _file_name(name))
        return self._write(Path(f"{path}{REFUSAL_SUFFIX}"), _REFUSAL_MAGIC + why.encode())

    def _expand(
        self, z: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path, name: str, shown: str
    ) -> Path:
        """One member that is a student's submission, written to ``folder`` (or a refusal)."""
        why = _member_refusal(info, clean_text(shown))
        if why:
            return self._refusal(folder, name, why)
        with z.open(info) as f:
            data = f.read(MAX_NOTEBOOK_BYTES + 1)
        if len(data) > MAX_NOTEBOOK_BYTES:  # the header understated it
            return self._refusal(folder, name, _size_message(len(data), clean_text(shown)))
        return self._write(self._free(folder, _file_name(name)), data)

    @staticmethod
    def _check_total(shown: str, members: list[zipfile.ZipInfo]) -> None:
        total = sum(i.file_size for i in members if i.file_size <= MAX_NOTEBOOK_BYTES)
        if total > MAX_EXPANDED_BYTES:
            raise IntakeError(
                f"{shown} would expand to {total / 2**30:.1f} GiB, over the "
                f"{MAX_EXPANDED_BYTES / 2**30:.0f} GiB limit: unpack it and pass the folder"
            )

    # -- the result --------------------------------------------------------------------------
    def finish(self) -> Intake:
        self._canvas_submissions()
        items = sorted(self.entries.items(), key=lambda kv: kv[1][0])
        keys = unique_keys([(p, key) for p, (_, key, _) in items])
        subs = [Submission(keys[p], p, lms) for p, (_, _, lms) in items]
        return Intake(subs, [clean_text(n) for n in self.notes])


def _is_gradescope_export(folder: Path) -> bool:
    meta = folder / GRADESCOPE_METADATA
    return meta.is_file() and not meta.is_symlink()


def read_bytes(path: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The file's bytes, if it is a regular file (not a link, folder or pipe) within ``limit``
    (a notebook's, unless told)."""
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
        _check_size(info.st_size, name, limit)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)  # the file may grow after the check
    finally:
        os.close(fd)
    _check_size(len(data), name, limit)
    return data


def _check_size(size: int, name: str, limit: int = MAX_NOTEBOOK_BYTES) -> None:
    if size > limit:
        if limit != MAX_NOTEBOOK_BYTES:
            raise Ungradable(
                f"{name} is {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.0f} MiB"
            )
        raise Ungradable(_size_message(size, name))


def _size_message(size: int, name: str) -> str:
    return (
        f"{name} is {size / 2**20:.1f} MiB, over the {MAX_NOTEBOOK_BYTES / 2**20:.0f} MiB "
        "limit: clear the outputs (Kernel > Restart & Clear Output) and resubmit"
    )


def notebook_bytes(raw: bytes, path: Path) -> bytes:
    """The notebook inside a submission's bytes: the file itself, or the one notebook of a zip;
    Ungradable with its reason for what the intake refused (see ``REFUSAL_SUFFIX``)."""
    if path.name.endswith(REFUSAL_SUFFIX) and raw.startswith(_REFUSAL_MAGIC):
        raise Ungradable(clean_text(raw[len(_REFUSAL_MAGIC) :].decode("utf-8", "replace")))
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
        if _unsafe_member(member):
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
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children: Iterable[object] = v.values() if isinstance(v, dict) else v  # type: ignore[assignment] # noqa: E501
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
