"""What an LMS's download says about who submitted what: Canvas file names, Gradescope metadata.

Pure parsing, no files opened here (``submissions.py`` finds and expands the downloads):

* **Canvas** ("Download Submissions" on an assignment) names every file
  ``<name>[_LATE]_<user id>_<file id>_<file name>``, as Canvas's ``ContentZipper`` writes it:
  ``<name>`` is the student's sortable name in lower case with everything but letters, digits and
  ``_`` removed ("Doe, Jane" -> ``doejane``), ``LATE`` marks a late submission, ``<user id>`` is the
  Canvas user id, ``<file id>`` the id of the uploaded file (it grows with every upload), and
  ``<file name>`` is the name the student uploaded, with the ``-N`` Canvas appends when a file of
  that name was uploaded before (``01_tensors-1.ipynb``: a resubmission). An anonymised download
  (anonymous grading) has ``anon_<anonymous id>`` instead of name and user id.
* **Gradescope** ("Export Submissions") writes ``submission_metadata.yml`` next to one folder per
  submission (``submission_<id>/``); the YAML maps each folder name to its record, written by
  Ruby, so keys are symbols: ``:submitters:`` (a list of ``:name:``, ``:sid:``, ``:email:``;
  several for a group), ``:created_at:``, ``:score:``, ``:status:``, ``:results:``, ``:history:``.

Identities are stored as roster columns (see ``roster.COLUMNS``): Canvas's user id is
``canvas_user_id``; Gradescope's student id (``:sid:``) is taken as the institution's id,
``sis_user_id`` (Canvas's SIS User ID, Moodle's ID number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..safetext import clean_text

# Canvas: ContentZipper#get_filename and #add_upload_submission. The name part is lower case
# (Canvas downcases it), which keeps "LATE" unambiguous; ids are positive integers.
_CANVAS = re.compile(
    r"(?P<name>[^\WA-Z]*?)_(?:(?P<late>LATE)_)?(?P<user>[1-9][0-9]{0,19})_"
    r"(?P<file_id>[1-9][0-9]{0,19})_(?P<file>.+)"
)
_CANVAS_ANON = re.compile(
    r"(?:(?P<late>LATE)_)?anon_(?P<anon>[A-Za-z0-9]{1,40})_(?P<file_id>[1-9][0-9]{0,19})_(?P<file>.+)"
)
_RESUBMISSION = re.compile(r".+-(?P<n>[1-9][0-9]{0,5})(?:\.[A-Za-z0-9]+)?")
GRADESCOPE_METADATA = "submission_metadata.yml"


@dataclass(frozen=True)
class CanvasName:
    """One file of a Canvas download, as its name describes it."""

    name: str  # "doejane" ("" when anonymised)
    user_id: str  # Canvas user id ("" when anonymised)
    anonymous_id: str  # Canvas's anonymous id ("" unless anonymised)
    late: bool
    file_id: int  # grows with every upload: the larger, the later
    file: str  # as uploaded, with Canvas's "-N" ("01_tensors-1.ipynb")
    resubmission: int  # N of that "-N", 0 without one

    @property
    def student(self) -> str:
        """Who this file is from, the same for all of a student's files."""
        return f"user {self.user_id}" if self.user_id else f"anon {self.anonymous_id}"

    @property
    def key(self) -> str:
        """The submission key (results folder): name and user id, so two Jane Does differ."""
        if self.anonymous_id:
            return f"anon_{self.anonymous_id}"
        return f"{self.name}_{self.user_id}" if self.name else f"canvas_{self.user_id}"

    def identity(self) -> dict:
        """The ``lms`` record of a result graded from this file."""
        if self.anonymous_id:
            # no user id in an anonymised download: nothing to map back without SpeedGrader
            return {"source": "canvas", "canvas_anonymous_id": self.anonymous_id,
                    "late": self.late, "file": self.file, "canvas_file_id": self.file_id,
                    "resubmission": self.resubmission, "members": []}  # fmt: skip
        return {
            "source": "canvas",
            "canvas_user_id": self.user_id,
            "name": self.name,
            "late": self.late,
            "file": self.file,
            "canvas_file_id": self.file_id,
            "resubmission": self.resubmission,
            "members": [{"name": self.name, "canvas_user_id": self.user_id}],
        }


def parse_canvas_name(filename: str) -> CanvasName | None:
    """The parts of a Canvas download's file name, or None if it is not one."""
    m = _CANVAS_ANON.fullmatch(filename)
    if m:
        name, user, anon = "", "", m["anon"]
    else:
        m = _CANVAS.fullmatch(filename)
        if not m:
            return None
        name, user, anon = m["name"], m["user"], ""
    again = _RESUBMISSION.fullmatch(m["file"])
    return CanvasName(
        name=name,
        user_id=user,
        anonymous_id=anon,
        late=bool(m["late"]),
        file_id=int(m["file_id"]),
        file=m["file"],
        resubmission=int(again["n"]) if again else 0,
    )


class MetadataError(ValueError):
    """A submission_metadata.yml that cannot be read; the message says why."""


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """Safe YAML that reads Ruby's own tags (``!ruby/object:BigDecimal 18:0.8E1``,
        ``!ruby/hash:...``) as the plain values underneath, never as objects."""

    def plain(loader, _suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_mapping(node, deep=True)

    Loader.add_multi_constructor("!", plain)
    return Loader


def _field(record: dict, name: str) -> object:
    """A field of a Gradescope record: a Ruby symbol (":name") or, as some tools rewrite it, not."""
    return record.get(f":{name}", record.get(name))


def _text(value: object) -> str:
    if value is None or isinstance(value, (dict, list)):
        return ""
    return " ".join(clean_text(str(value)).split())[:200]


def parse_gradescope_metadata(text: str, source: str = GRADESCOPE_METADATA) -> dict[str, dict]:
    """``folder name -> {"id", "members", "created_at"}`` from submission_metadata.yml's text.

    Each member is ``{"name", "sis_user_id", "email"}`` (roster columns; empty ones left out).
    Records that are not mappings are skipped; a file that is not YAML, or not a mapping of
    folders, raises MetadataError.
    """
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise MetadataError(
            f"{source} is not valid YAML ({' '.join(str(e).split())[:200]})"
        ) from None
    except RecursionError:
        raise MetadataError(f"{source} nests too deeply") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{source} does not map submission folders to their submitters")
    out: dict[str, dict] = {}
    for folder, record in data.items():
        if not isinstance(folder, str) or not isinstance(record, dict):
            continue
        members = []
        submitters = _field(record, "submitters")
        for s in submitters if isinstance(submitters, list) else []:
            if not isinstance(s, dict):
                continue
            m = {
                "name": _text(_field(s, "name")),
                "sis_user_id": _text(_field(s, "sid")),
                "email": _text(_field(s, "email")),
            }
            m = {k: v for k, v in m.items() if v}
            if m:
                members.append(m)
        digits = folder.removeprefix("submission_")
        sub_id = digits if digits.isdigit() else _text(_field(record, "id"))
        out[folder] = {
            "id": sub_id,
            "members": members,
            "created_at": _text(_field(record, "created_at")),
        }
    return out


def gradescope_key(members: list[dict], folder: str) -> str:
    """A submission key from its submitters: their student ids (else e-mail names, else names),
    joined by "_" for a group; the folder name if none has any."""
    parts = []
    for m in members:
        who = m.get("sis_user_id") or m.get("email", "").partition("@")[0] or m.get("name", "")
        if who:
            parts.append(who)
    return "_".join(parts) if parts else folder


def gradescope_identity(folder: str, record: dict) -> dict:
    """The ``lms`` record of a result graded from one Gradescope submission folder."""
    return {
        "source": "gradescope",
        "gradescope_submission_id": record.get("id", ""),
        "folder": folder,
        "created_at": record.get("created_at", ""),
        "members": list(record.get("members", [])),
    }
