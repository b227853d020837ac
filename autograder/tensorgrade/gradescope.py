"""Gradescope: ``dist/<id>/gradescope.zip`` and the ``run_autograder`` that grades one submission.

Gradescope unpacks the zip to ``/autograder/source``, runs ``setup.sh`` once when it builds the
image, then runs ``run_autograder`` as root for every submission (the student's files are in
``/autograder/submission``). Grading is the trusted engine's, exactly as ``tensorgrade grade``
does it: the student's cells run in the sandbox, as an unprivileged uid, in a private root that
holds nothing of ``/autograder``; the judge writes ``/autograder/results/results.json`` only after
the sandbox is dead.

The zip holds the tensorgrade source (installed by ``setup.sh``) and a minimal course root with
exactly what grading reads: the built tests (hidden ones included), otter's bundle (its checksum
identifies the build in every result), the student files the notebook expects next to it, and
``grading.yml``. No master, no solution notebook.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from . import settings
from .course import Assignment
from .errors import NotFoundError
from .results import SubmissionResult, not_run, write_results_json
from .safetext import clean_text, cut
from .submissions import Submission

CONFIG_NAME = "tensorgrade-gradescope.json"  # at the zip's root: which assignment this zip grades
COURSE_DIR = "course"  # the minimal course root inside the zip
DEFAULT_ROOT = Path("/autograder")
ROOT_ENV = "TENSORGRADE_AUTOGRADER_ROOT"  # another root than /autograder (tests)
PYTHON_ENV = "TENSORGRADE_PYTHON"  # another interpreter than the one setup.sh installs (tests)
VENV = "/opt/tensorgrade/venv"  # outside /autograder, so the sandbox may see the interpreter
TORCH_PIN = "torch==2.13.0"  # the same pin as requirements/dev.txt (a test checks)
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # CPU wheels: Gradescope has no GPU
OTTER_PIN = "otter-grader==7.0.0"  # the same pin as pyproject.toml (a test checks)
EXECUTABLE = {"setup.sh", "run_autograder"}
_SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", "__MACOSX"}

SETUP_SH = f"""#!/usr/bin/env bash
# tensorgrade autograder for Gradescope. Gradescope runs this once, as root, when it builds the
# autograder image. It installs Python >= 3.11, CPU-only torch and tensorgrade (shipped in this
# zip) into {VENV}; run_autograder uses that interpreter. Any failure stops the build with a
# message that says what is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SRC=/autograder/source
VENV={VENV}
# another index for torch's CPU wheels (a mirror); pip's own settings apply to everything else
TORCH_INDEX="${{TENSORGRADE_TORCH_INDEX:-{TORCH_INDEX}}}"
started=$(date +%s)
step() {{ echo "[tensorgrade setup +$(( $(date +%s) - started ))s] $*"; }}
fail() {{ echo "tensorgrade setup FAILED: $*" >&2; exit 1; }}
is_311() {{ "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }}

[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/{CONFIG_NAME}" ] \
    || fail "$SRC holds no tensorgrade autograder (upload dist/<id>/gradescope.zip as it is)"
command -v apt-get >/dev/null || fail "no apt-get: choose one of Gradescope's Ubuntu base images"

step "apt-get update"
apt-get update -qq || fail "apt-get update"
# Python >= 3.11: the image's own python3 where it is new enough (Ubuntu 24.04, Debian 12);
# on Ubuntu 22.04, whose python3 is 3.10 and whose python3.11 package is a release candidate,
# the final 3.11 from the deadsnakes archive (the usual source of newer Pythons for Ubuntu LTS).
if is_311 python3; then
    PY=python3
    step "python3 is $(python3 -V 2>&1); installing its venv module"
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
        || fail "apt-get install python3-venv"
else
    step "python3 is $(python3 -V 2>&1 || echo missing): installing Python 3.11 from deadsnakes"
    apt-get install -y -qq --no-install-recommends software-properties-common gpg-agent >/dev/null \
        || fail "apt-get install software-properties-common"
    add-apt-repository -y ppa:deadsnakes/ppa >/dev/null || fail "add-apt-repository deadsnakes"
    apt-get update -qq || fail "apt-get update (deadsnakes)"
    apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv >/dev/null \
        || fail "apt-get install python3.11 python3.11-venv"
    PY=python3.11
fi
is_311 "$PY" || fail "$PY is $("$PY" -V 2>&1), tensorgrade needs Python >= 3.11"

step "venv at $VENV with $("$PY" -V 2>&1)"
"$PY" -m venv "$VENV" || fail "python -m venv $VENV"
"$VENV/bin/python" -m pip install -q --no-cache-dir --upgrade pip || fail "pip upgrade"
step "{TORCH_PIN} (CPU) from $TORCH_INDEX"
"$VENV/bin/python" -m pip install -q --no-cache-dir --index-url "$TORCH_INDEX" "{TORCH_PIN}" \
    || fail "{TORCH_PIN} from $TORCH_INDEX"
echo "{TORCH_PIN}" > /tmp/tensorgrade-constraints.txt
step "{OTTER_PIN} and tensorgrade"
"$VENV/bin/python" -m pip install -q --no-cache-dir -c /tmp/tensorgrade-constraints.txt \
    "{OTTER_PIN}" "$SRC" || fail "pip install {OTTER_PIN} tensorgrade"
"$VENV/bin/python" - <<'CHECK' || fail "the installed environment does not import"
import torch, otter, tensorgrade.gradescope
assert torch.__version__.split("+")[0] == "{TORCH_PIN.split("==")[1]}", torch.__version__
print("tensorgrade", tensorgrade.__version__, "torch", torch.__version__, "otter", otter.__version__)
CHECK
step "ready"
"""

RUN_AUTOGRADER = f"""#!/bin/sh
# Gradescope runs this as root for every submission, in /autograder. The trusted engine grades
# the notebook in /autograder/submission and writes /autograder/results/results.json.
export TENSORGRADE_TORCH_VERSION="${{TENSORGRADE_TORCH_VERSION-{TORCH_PIN.split("==")[1]}}}"
exec "${{{PYTHON_ENV}:-{VENV}/bin/python}}" -m tensorgrade gradescope run
"""


# ---------------------------------------------------------------------------------------------
# Building the zip


def gradescope_zip_path(a: Assignment) -> Path:
    return a.dist / "gradescope.zip"


def write_gradescope_zip(a: Assignment, out: Path | None = None) -> Path:
    """Write the Gradescope autograder zip of a built assignment (default ``dist/<id>/``).

    Byte-identical when its inputs are: sorted members, fixed timestamps and modes.
    """
    from .zips import write_zip

    return write_zip(out or gradescope_zip_path(a), zip_members(a), EXECUTABLE)


def zip_members(a: Assignment) -> dict[str, bytes]:
    """Archive name -> content: scripts, config, tensorgrade's source, the minimal course root."""
    config = {"format": 1, "assignment": a.id, "course": COURSE_DIR}
    members = {
        "setup.sh": SETUP_SH.encode(),
        "run_autograder": RUN_AUTOGRADER.encode(),
        CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }
    members.update(_package_files())
    members.update(_course_files(a))
    return members


def _package_files() -> dict[str, bytes]:
    """tensorgrade as a pip-installable source tree: pyproject.toml, README.md, the package."""
    import tensorgrade

    pkg = Path(tensorgrade.__file__).resolve().parent
    project = pkg.parent.parent
    if not (project / "pyproject.toml").is_file():
        raise NotFoundError(
            f"cannot ship tensorgrade: no pyproject.toml at {project} (install tensorgrade from a "
            "source checkout, e.g. `pip install -e .`)"
        )
    files = {"pyproject.toml": (project / "pyproject.toml").read_bytes()}
    if (project / "README.md").is_file():  # pyproject names it: the install fails without it
        files["README.md"] = (project / "README.md").read_bytes()
    for p in _tree(pkg):
        if p.suffix not in (".pyc", ".pyo"):
            files[p.relative_to(project).as_posix()] = p.read_bytes()
    return files


def _course_files(a: Assignment) -> dict[str, bytes]:
    """Exactly what grading reads, under ``course/`` with the paths `Assignment` expects."""
    tests = sorted(a.tests_dir.glob("*.py")) if a.tests_dir.is_dir() else []
    if not tests or not a.autograder_zip.is_file():
        raise NotFoundError(f"{a.id} is not built: run `tensorgrade build {a.id}`")
    paths = [*tests, a.autograder_zip]
    grading_yml = a.master.parent / "grading.yml"
    if grading_yml.is_file():
        paths.append(grading_yml)
    if a.student_dir.is_dir():  # data files the notebook reads; the engine skips notebooks
        paths += [p for p in _tree(a.student_dir) if p.suffix != ".ipynb"]
    return {f"{COURSE_DIR}/{p.relative_to(a.root).as_posix()}": p.read_bytes() for p in paths}


def _tree(top: Path) -> list[Path]:
    """Regular files under ``top``, sorted; no caches, checkpoints or hidden files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS and not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(p for p in out if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------------
# Grading one submission, inside Gradescope's container


def autograder_root(root: Path | None = None) -> Path:
    """``root``, else ``$TENSORGRADE_AUTOGRADER_ROOT``, else ``/autograder``."""
    return Path(root or settings.autograder_root() or DEFAULT_ROOT)


def run(root: Path | None = None) -> int:
    """Grade the notebook in ``root/submission``; write ``root/results/results.json``.

    Returns 0 whenever a result for the student was written, whatever their code did; 1 when
    the autograder itself failed (the results.json then says so, with a score of 0).
    """
    root = autograder_root(root)
    if not root.is_dir():
        raise NotFoundError(f"no autograder directory at {root}")
    out = root / "results" / "results.json"
    _hide_from_student(root)
    try:
        a, specs, ag = _load_course(root / "source")
    except Exception:  # noqa: BLE001 - a broken zip must still leave a result behind
        traceback.print_exc(file=sys.stdout)
        res = SubmissionResult("", "", "trusted", "ungradable", reason=_AUTOGRADER_BROKEN)
        write_results_json(res, out)
        return 1
    from .pins import torch_pin_mismatch

    if mismatch := torch_pin_mismatch():  # another torch than setup.sh installed: grade nothing
        print(f"error: {mismatch}", flush=True)
        write_results_json(_ungradable(a, specs, ag, _AUTOGRADER_BROKEN, "submission"), out)
        return 1

    key = _submission_key(root)
    if who := _submitters(root):
        print(f"submission of {who}", flush=True)
    sub, why = find_submission(root / "submission", a.id, key)
    code = 0
    if sub is None:
        res = _ungradable(a, specs, ag, why, key)
    else:
        from .grading import GradeOptions, grade_one, is_internal_error, prestart_zygote

        prestart_zygote([(a, sub)], GradeOptions().isolation)  # its imports overlap ours
        print(f"grading {sub.path.relative_to(root)} for {a.id} ...", flush=True)
        graded: SubmissionResult | None
        try:
            graded = grade_one(a, specs, sub, GradeOptions(progress=False), ag)
        except Exception:  # noqa: BLE001 - our bug, not the student's: say so, keep a result
            traceback.print_exc(file=sys.stdout)
            graded = None
        if graded is None or is_internal_error(graded):  # grade_one logged its traceback
            res, code = _ungradable(a, specs, ag, _AUTOGRADER_BROKEN, key), 1
        else:
            res = graded
    write_results_json(res, out)
    _print_summary(res, out)
    return code


_AUTOGRADER_BROKEN = (
    "The autograder itself failed (not your code). Your course staff can see the details; "
    "please tell them, and resubmit later."
)


def _load_course(source: Path) -> tuple[Assignment, list, str]:
    """The assignment the zip grades, its tests (hidden ones included) and the bundle's hash."""
    from .grading import file_sha256
    from .testfiles import load_tests

    config = json.loads((source / CONFIG_NAME).read_text(encoding="utf-8"))
    a = Assignment(config["assignment"], (source / config.get("course", COURSE_DIR)).resolve())
    return a, load_tests(a.tests_dir), file_sha256(a.autograder_zip)


def _ungradable(a: Assignment, specs: list, ag: str, why: str, key: str) -> SubmissionResult:
    res = SubmissionResult(a.id, key, "trusted", "ungradable", reason=why)
    res.tests = [not_run(s, why) for s in specs]
    res.autograder_sha256 = ag
    return res


def find_submission(
    folder: Path, assignment_id: str, key: str = "submission"
) -> tuple[Submission | None, str]:
    """The one notebook the student uploaded (or one zip holding it), else None and why."""
    files = _tree(folder) if folder.is_dir() else []
    notebooks = [p for p in files if p.suffix.lower() == ".ipynb"]
    if len(notebooks) == 1:
        return Submission(key, notebooks[0]), ""
    if len(notebooks) > 1:
        names = ", ".join(p.relative_to(folder).as_posix() for p in notebooks[:10])
        return None, (
            f"Your submission holds {len(notebooks)} notebooks ({names}). Upload exactly one "
            f"notebook, your {assignment_id}.ipynb, and resubmit."
        )
    zips = [p for p in files if p.suffix.lower() == ".zip"]
    if len(zips) == 1:  # the grader opens it and takes its one notebook
        return Submission(key, zips[0]), ""
    got = ", ".join(p.relative_to(folder).as_posix() for p in files[:10]) or "no files"
    return None, (
        f"No notebook (.ipynb) was found in your submission ({got}). Upload your "
        f"{assignment_id}.ipynb itself (not a PDF or an export) and resubmit."
    )


def _submission_key(root: Path) -> str:
    """Gradescope's submission id when its metadata says (it names results), else 'submission'."""
    try:
        meta = json.loads((root / "submission_metadata.json").read_text(encoding="utf-8"))
        return f"gradescope-{int(meta['id'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "submission"


def _submitters(root: Path) -> str:
    """Who submitted, from Gradescope's metadata, for the staff log: names, student ids."""
    try:
        meta = json.loads((root / "submission_metadata.json").read_text(encoding="utf-8"))
        users = meta.get("users") or []
        people = [
            f"{u.get('name') or u.get('email') or '?'}"
            + (f" (sid {u['sid']})" if u.get("sid") else "")
            for u in users
            if isinstance(u, dict)
        ]
    except (OSError, ValueError, AttributeError, TypeError):
        return ""
    return cut(clean_text(", ".join(people)), 300) if people else ""


def _hide_from_student(root: Path) -> None:
    """Root-only permissions on the zip's and the results' folders, as a second wall.

    The sandbox's private root already leaves all of /autograder out; these modes also stop a
    process of another uid that somehow reached the real file system.
    """
    (root / "results").mkdir(exist_ok=True)
    for d in (root / "source", root / "results"):
        try:
            os.chmod(d, 0o700)
        except OSError:
            pass


def _print_summary(res: SubmissionResult, out: Path) -> None:
    """For the instructor: Gradescope shows run_autograder's stdout to staff only."""
    print(f"{res.assignment}: {res.score:g} / {res.max_score:g} ({res.status}), wrote {out}")
    iso = res.isolation
    layers = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in iso.items() if isinstance(v, bool))
    print(
        f"isolation: {res.isolation_level} ({layers}); sandbox uids: {res.sandbox_uids or 'none'}"
    )
    if res.isolation_level != "full" and res.status == "graded":
        missing = [k for k, v in iso.items() if v is False]
        print(
            f"WARNING: the student's code ran without {', '.join(missing)} (this container "
            "forbids them; reasons in extra_data.isolation.errors). Landlock and seccomp, where "
            "they held, still kept it from /autograder/source and the network. Run `tensorgrade "
            "doctor` in this image to see what to change (docs/grading.md)."
        )
    if res.reason:
        print(res.reason)
    for t in res.tests:
        mark = "PASS" if t.passed else "FAIL"
        print(f"  {mark} {t.question}: {t.name} {t.score:g}/{t.max_score:g}")
