"""Property-based tests of what a student controls: the notebook, the zip, and the texts of a result.

The invariant of intake: a notebook comes back (with the structure the grader relies on) or
``Ungradable`` is raised; never any other exception, and nothing is written. The invariant of the
writers: whatever the texts hold (lone surrogates, NULs, terminal escapes, formulas), results.json,
grades.csv, the CSV exports and the report pages are written, read back, and keep the scores.

Short and reproducible by default (profile "fast", derandomized); ``pytest -m fuzz`` (or
``TENSORGRADE_FUZZ=long``) runs the long profile.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from helpers import encrypted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorgrade.lms.exports import export_csv
from tensorgrade.lms.roster import Student
from tensorgrade.reports import student_report
from tensorgrade.results import (
    MAX_RESULTS_BYTES,
    SubmissionResult,
    TestResult,
    atomic_write_text,
    grades_csv,
    read_results_json,
    write_results_json,
)
from tensorgrade.safetext import FORMULA_STARTS
from tensorgrade.submissions import (
    CELL_TYPES,
    MAX_NOTEBOOK_BYTES,
    Ungradable,
    cell_source,
    notebook_bytes,
    parse_notebook,
    read_bytes,
)

pytestmark = pytest.mark.fuzz

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "fast",
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.load_profile(os.environ.get("TENSORGRADE_FUZZ", "fast"))

ROOT = Path(__file__).resolve().parents[1]
STUDENT_NB = (ROOT / "assignments" / "01_tensors" / "01_tensors.ipynb").read_bytes()

# -- strategies --------------------------------------------------------------------------------
# any code point, lone surrogates and control characters included
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
nasty_text = st.one_of(
    any_text,
    st.sampled_from(["\ud800", "\udfff", "a\x00b", "\x1b[31m", "=1+1", "-2", "@SUM(A1)", "+x"]),
    st.builds(
        lambda a, b: a + b, st.sampled_from(list(FORMULA_STARTS) + ["\x00", "\ud800"]), any_text
    ),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)
sources = st.one_of(any_text, st.lists(any_text, max_size=4), json_values)
cells = st.one_of(
    st.fixed_dictionaries(
        {"cell_type": st.sampled_from(sorted(CELL_TYPES)), "source": sources},
        optional={
            "metadata": st.one_of(st.just({}), json_values),
            "outputs": st.one_of(st.just([]), json_values),
            "execution_count": st.one_of(st.none(), st.integers(0, 10), json_values),
            "id": st.one_of(st.text("abc-_0123456789", min_size=1, max_size=10), json_values),
        },
    ),
    json_values,
)
notebooks = st.fixed_dictionaries(
    {},
    optional={
        "nbformat": st.one_of(st.just(4), json_values),
        "nbformat_minor": st.one_of(st.integers(0, 6), json_values),
        "metadata": st.one_of(
            st.just({"kernelspec": {"name": "python3", "display_name": "Python 3"}}), json_values
        ),
        "cells": st.one_of(st.lists(cells, max_size=5), json_values),
    },
)
json_ish = st.text(st.sampled_from('{}[]",:0123456789-+eE.truefalsnNaIiy \\u'), max_size=200)


def check_notebook(data: bytes) -> dict | None:
    """The invariant: a well-formed notebook, or Ungradable; nothing else."""
    try:
        nb = parse_notebook(data, "fuzz.ipynb")
    except Ungradable as e:
        assert str(e).startswith("fuzz.ipynb")
        return None
    assert isinstance(nb, dict) and nb["nbformat"] == 4
    assert isinstance(nb["metadata"], dict) and isinstance(nb["cells"], list)
    for cell in nb["cells"]:
        assert isinstance(cell, dict) and cell["cell_type"] in CELL_TYPES
        assert isinstance(cell_source(cell), str)
        cell_source(cell).encode("utf-8")  # no lone surrogate reaches the sandbox's pipe
    return nb


# -- notebook intake ---------------------------------------------------------------------------
@given(st.binary(max_size=400))
def test_random_bytes_are_a_notebook_or_ungradable(data):
    check_notebook(data)


@given(json_ish)
def test_json_ish_text_is_a_notebook_or_ungradable(text):
    check_notebook(text.encode("utf-8", "surrogatepass"))


@given(notebooks, st.booleans())
def test_random_notebook_structures_are_a_notebook_or_ungradable(nb, ascii_only):
    check_notebook(json.dumps(nb, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@given(
    st.integers(1, 20_000),
    st.sampled_from(["[", "{", "mix"]),
    st.sampled_from(["metadata", "cell", "top"]),
)
def test_deep_nesting_is_ungradable_not_a_crash(depth, kind, where):
    arrays = [kind == "[" or (kind == "mix" and i % 2 == 1) for i in range(depth)]
    opens = "".join("[" if a else '{"k": ' for a in arrays)
    deep = opens + "0" + "".join("]" if a else "}" for a in reversed(arrays))
    if where == "metadata":
        text = '{"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"x": DEEP}}'
    elif where == "cell":
        text = (
            '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", '
            '"source": "", "metadata": {"x": DEEP}, "outputs": [], "execution_count": null}]}'
        )
    else:
        text = "DEEP"
    text = text.replace("DEEP", deep)
    nb = check_notebook(text.encode())
    if depth > 100:
        assert nb is None


@given(st.integers(1, 6000), st.sampled_from(["int", "neg", "float", "exp"]), st.integers(0, 3))
def test_big_numbers_are_ungradable_not_a_crash(digits, kind, place):
    number = {
        "int": "9" * digits,
        "neg": "-" + "9" * digits,
        "float": "1." + "5" * digits,
        "exp": "1e" + "9" * digits,
    }[kind]
    text = [
        '{"nbformat": N, "nbformat_minor": 5, "metadata": {}, "cells": []}',
        '{"nbformat": 4, "nbformat_minor": N, "metadata": {}, "cells": []}',
        '{"nbformat": 4, "nbformat_minor": 5, "metadata": {"n": N}, "cells": []}',
        '{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [N]}',
    ][place].replace("N", number)
    nb = check_notebook(text.encode())
    if len(number) > 100:
        assert nb is None


@given(
    st.sampled_from(["metadata", "cells", "cell", "source", "cell_type", "id", "outputs"]),
    json_values,
)
def test_wrong_types_in_a_real_notebook_are_caught(field, value):
    nb = json.loads(STUDENT_NB)
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    if field in ("metadata", "cells"):
        nb[field] = value
    elif field == "cell":
        nb["cells"][0] = value
    else:
        code[field] = value
    check_notebook(json.dumps(nb).encode("utf-8", "surrogatepass"))


def test_the_student_notebook_itself_is_accepted():
    assert check_notebook(STUDENT_NB) is not None


# -- zip intake --------------------------------------------------------------------------------
member_names = st.one_of(
    st.sampled_from(["nb.ipynb", "ada/01_tensors.ipynb", "../x.ipynb", "/abs.ipynb", "C:x.ipynb"]),
    st.sampled_from(["__MACOSX/._nb.ipynb", "a.ipynb_checkpoints/x.ipynb", "readme.txt"]),
    # zipfile cuts a name at NUL and cannot write an empty one
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).filter(
        lambda n: n.split("\0")[0]
    ),
)
member_data = st.one_of(st.just(STUDENT_NB), st.binary(max_size=300), st.just(b"0" * 100_000))


def make_zip(members: list[tuple[str, bytes]], method: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as z:
        warnings.simplefilter("ignore")  # duplicate names: a zip may hold them, we test that too
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


@given(
    st.lists(st.tuples(member_names, member_data), min_size=0, max_size=4),
    st.sampled_from(
        [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
    ),
    st.sampled_from(["none", "encrypt", "flip", "truncate", "garbage_tail"]),
    st.data(),
)
def test_zips_give_a_notebook_or_ungradable(members, method, damage, data):
    raw = make_zip(members, method)
    if damage == "encrypt" and members:
        raw = encrypted(raw, every=data.draw(st.booleans()))
    elif damage == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif damage == "garbage_tail":
        raw += data.draw(st.binary(max_size=50))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sub.zip"
        path.write_bytes(raw)
        try:
            nb = notebook_bytes(read_bytes(path), path)
        except Ungradable as e:
            assert str(e).startswith("sub.zip")
            nb = None
        if nb is not None:
            assert isinstance(nb, bytes) and len(nb) <= MAX_NOTEBOOK_BYTES
            check_notebook(nb)
        assert os.listdir(tmp) == ["sub.zip"], "intake wrote nothing"


def test_an_encrypted_member_is_ungradable_with_a_reason():
    raw = encrypted(make_zip([("ada/01_tensors.ipynb", STUDENT_NB)], zipfile.ZIP_DEFLATED))
    with pytest.raises(Ungradable, match="password-protected"):
        notebook_bytes(raw, Path("ada.zip"))


# -- writers -----------------------------------------------------------------------------------
scores = st.floats(0, 10, allow_nan=False)
test_results = st.builds(
    lambda q, n, s, m, out, h: TestResult(q, n, min(s, m), m, s >= m, out, h),
    st.sampled_from(["q1", "q2", "=q3"]),
    st.sampled_from(["test_a", "test_b", "@test_c"]),
    scores,
    scores,
    nasty_text,
    st.booleans(),
)
results = st.builds(
    lambda sub, status, reason, printed, tests: SubmissionResult(
        "01_tensors", sub, "trusted", status, tests, reason=reason, student_output=printed
    ),
    nasty_text,
    st.sampled_from(["graded", "ungradable"]),
    nasty_text,
    nasty_text,
    st.lists(test_results, max_size=4),
)


def _csv_cells_are_safe(text: str, numeric: set[str]) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    for row in rows:
        for col, cell in zip(header, row, strict=False):
            if col in numeric and cell and row is not header:
                float(cell)  # a score stays a number
            else:
                assert not cell.startswith(FORMULA_STARTS), (col, cell)
    return rows


@given(st.lists(results, min_size=1, max_size=4))
def test_any_texts_are_written_read_back_and_keep_the_scores(batch):
    for i, r in enumerate(batch):  # keys are unique in a batch (see `collect`)
        r.submission = f"{r.submission}{i}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        keys = [f"s{i}" for i in range(len(batch))]  # folder names come from `collect`
        for key, r in zip(keys, batch, strict=True):
            write_results_json(r, out / key / "results.json")
            back = read_results_json(out / key / "results.json")
            assert back.score == pytest.approx(r.score) and back.status == r.status
            assert [t.passed for t in back.tests] == [t.passed for t in r.tests]
            assert (out / key / "results.json").stat().st_size <= MAX_RESULTS_BYTES
            (out / key / "results.json").read_text(encoding="utf-8")  # strict UTF-8
            student_report(back).encode("utf-8")
        atomic_write_text(out / "grades.csv", grades_csv(batch))
        text = (out / "grades.csv").read_text(encoding="utf-8")
        questions = {t.question for r in batch for t in r.tests} | {"'=q3"}
        _csv_cells_are_safe(text, {"score", "max_score", *questions})
        roster = {
            r.submission: Student(r.submission, i + 2, name=r.reason[:20], email=f"{i}@x")
            for i, r in enumerate(batch)
        }
        for fmt in ("plain", "canvas", "moodle"):
            path = out / f"{fmt}.csv"
            atomic_write_text(path, export_csv(fmt, batch, roster, ungradable="zero"))
            numeric = {"score", "max_score", *questions, "01_tensors", "01_tensors (None)"}
            rows = _csv_cells_are_safe(path.read_text(encoding="utf-8"), numeric)
            assert len(rows) > 1
        written = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file())
        assert written == sorted(
            [f"results/{k}/results.json" for k in keys]
            + [
                "results/grades.csv",
                "results/plain.csv",
                "results/canvas.csv",
                "results/moodle.csv",
            ]
        ), "nothing but the outputs, no temporary files left"
