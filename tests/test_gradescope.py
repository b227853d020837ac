"""Gradescope: the autograder zip, the results.json schema, and run_autograder in a fake /autograder.

The slow tests lay out Gradescope's directory tree in a temporary root (source = the unpacked
zip, submission, results), run ``run_autograder`` there as a subprocess and validate every
results.json against a schema written from Gradescope's documented format.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import nbformat
import pytest
from helpers import ATTACKS, Attack, attack_notebook

from sandboxing import namespaces_here, uid_processes
from tensorgrade import gradescope
from tensorgrade.cli import main
from tensorgrade.course import Assignment
from tensorgrade.mutants import load_mutants, submissions
from tensorgrade.results import HIDDEN, PUBLIC, SubmissionResult, TestResult
from tensorgrade.root.uids import BASE_UID
from tensorgrade.zips import FIXED_TIME, normalise_zip, write_zip

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "autograder/tensorgrade/schemas/gradescope_results.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# an otter exception-format test file with one public and one hidden test
TEST_FILE = """from otter.test_files import test_case

OK_FORMAT = False

name = "q1"
points = 4

@test_case(points=None, hidden=False)
def test_public(inc):
    assert inc(1) == 2

@test_case(points=None, hidden=True)
def test_secret_reference(inc):
    assert inc(41) == 42
"""


def _validate(doc: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


# ---------------------------------------------------------------------------------------------
# The zip (a small fake course: fast)


@pytest.fixture
def fake(tmp_path) -> Assignment:
    """A built assignment with a master, a solution, a hidden test and a data file."""
    a = Assignment("x1_demo", tmp_path / "course")
    a.master.parent.mkdir(parents=True)
    a.master.write_text('{"MASTER": true}')
    (a.master.parent / "grading.yml").write_text("cell_timeout: 5\n")
    (a.master.parent / "mutants.yml").write_text("[]\n")
    (a.student_dir / "data").mkdir(parents=True)
    a.student.write_text("{}")
    (a.student_dir / "data" / "signal.csv").write_text("1,2,3\n")
    a.tests_dir.mkdir(parents=True)
    (a.tests_dir / "q1.py").write_text(TEST_FILE)
    a.solution.parent.mkdir()
    a.solution.write_text('{"SOLUTION": true}')
    write_zip(a.autograder_zip, {"tests/q1.py": TEST_FILE.encode(), "run_autograder": b"#!"})
    return a


def _members(path: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: i for i in z.infolist()}


def test_zip_holds_scripts_package_and_a_minimal_course(fake, tmp_path):
    path = gradescope.write_gradescope_zip(fake, tmp_path / "gs.zip")
    names = _members(path)
    for required in ["setup.sh", "run_autograder", gradescope.CONFIG_NAME, "pyproject.toml"]:
        assert required in names
    assert "autograder/tensorgrade/gradescope.py" in names
    assert "autograder/tensorgrade/schemas/gradescope_results.schema.json" in names
    assert {
        "course/dist/x1_demo/tests/q1.py",
        "course/dist/x1_demo/autograder.zip",
        "course/solutions/x1_demo/grading.yml",
        "course/assignments/x1_demo/data/signal.csv",
    } <= set(names)
    # no master, solution or notebook of any kind; no caches, no repo tests or build output
    assert not [n for n in names if n.endswith((".ipynb", ".pyc", "mutants.yml"))]
    assert not [n for n in names if n.startswith(("dist/", "tests/")) or "__pycache__" in n]
    for script in gradescope.EXECUTABLE:
        assert (names[script].external_attr >> 16) & 0o777 == 0o755
    assert (names["pyproject.toml"].external_attr >> 16) & 0o777 == 0o644
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read(gradescope.CONFIG_NAME))
        assert config["assignment"] == "x1_demo"
        shipped = z.read("autograder/tensorgrade/gradescope.py")
    assert shipped == (ROOT / "autograder/tensorgrade/gradescope.py").read_bytes()


def test_zip_is_byte_identical_when_rebuilt(fake, tmp_path):
    first = gradescope.write_gradescope_zip(fake, tmp_path / "one.zip").read_bytes()
    later = 2_000_000_000  # every input file touched: timestamps must not reach the zip
    for p in fake.root.rglob("*"):
        os.utime(p, (later, later))
    second = gradescope.write_gradescope_zip(fake, tmp_path / "two.zip").read_bytes()
    assert first == second
    infos = list(_members(tmp_path / "two.zip").values())
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {FIXED_TIME}
    (fake.tests_dir / "q1.py").write_text(TEST_FILE + "\n# changed\n")
    third = gradescope.write_gradescope_zip(fake, tmp_path / "three.zip").read_bytes()
    assert third != first, "a changed test must change the zip"


def test_write_defaults_to_dist(fake):
    path = gradescope.write_gradescope_zip(fake)
    assert path == fake.dist / "gradescope.zip" and path.is_file()


def test_normalise_zip_makes_a_bundle_reproducible(tmp_path):
    def bundle(path: Path, when: tuple, order: list[str]) -> None:
        with zipfile.ZipFile(path, "w") as z:
            for name in order:
                info = zipfile.ZipInfo(name, date_time=when)
                info.external_attr = (0o755 if name == "run" else 0o644) << 16
                z.writestr(info, f"content of {name}")

    bundle(tmp_path / "a.zip", (2026, 11, 27, 6, 56, 0), ["tests/q2.py", "run", "tests/q1.py"])
    bundle(tmp_path / "b.zip", (2027, 1, 2, 3, 4, 5), ["run", "tests/q1.py", "tests/q2.py"])
    assert (tmp_path / "a.zip").read_bytes() != (tmp_path / "b.zip").read_bytes()
    normalise_zip(tmp_path / "a.zip")
    normalise_zip(tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    infos = _members(tmp_path / "a.zip")
    assert (infos["run"].external_attr >> 16) & 0o777 == 0o755
    assert (infos["tests/q1.py"].external_attr >> 16) & 0o777 == 0o644


def test_setup_sh_is_valid_bash_and_pins_versions(tmp_path):
    script = tmp_path / "setup.sh"
    script.write_text(gradescope.SETUP_SH)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = gradescope.SETUP_SH
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert '"torch==2.13.0"' in text and '--index-url "$TORCH_INDEX"' in text
    assert "${TENSORGRADE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" in text
    assert '"otter-grader==7.0.0"' in text and '"$SRC"' in text  # tensorgrade from the zip
    # the pins are the project's own: requirements/dev.txt for torch, pyproject.toml for otter
    dev = (ROOT / "requirements/dev.txt").read_text()
    assert re.search(rf"^{re.escape(gradescope.TORCH_PIN)}$", dev, re.M)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert gradescope.OTTER_PIN in deps


def test_run_autograder_is_a_short_sh_script(tmp_path):
    script = tmp_path / "run_autograder"
    script.write_text(gradescope.RUN_AUTOGRADER)
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert gradescope.RUN_AUTOGRADER.startswith("#!/bin/sh\n")
    assert "-m tensorgrade gradescope run" in gradescope.RUN_AUTOGRADER
    assert f"{gradescope.VENV}/bin/python" in gradescope.RUN_AUTOGRADER


# ---------------------------------------------------------------------------------------------
# The schema (fast)


def _doc() -> dict:
    res = SubmissionResult(
        "x1_demo",
        "ada",
        "trusted",
        "graded",
        tests=[
            TestResult("q1", "test_public", 2.0, 2.0, True, "passed", hidden=False),
            TestResult("q1", "test_secret", 0.0, 2.0, False, "wrong <b>x</b>", hidden=True),
        ],
    )
    return json.loads(json.dumps(res.to_gradescope()))


def test_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_our_results_match_the_schema_and_show_hidden_tests_after_publication():
    doc = _doc()
    _validate(doc)
    assert [t["visibility"] for t in doc["tests"]] == [PUBLIC, HIDDEN] == ["visible", HIDDEN]
    assert HIDDEN == "after_published"
    assert doc["output_format"] == "text"  # never rendered as HTML: it quotes student output
    assert {t["output_format"] for t in doc["tests"]} == {"text"}
    _validate(
        {
            "tests": [{"name": "compiles", "status": "passed", "score": 1}],
            "leaderboard": [{"name": "Time", "value": 15.1, "order": "asc"}],
        }
    )


def _without_scores(doc: dict) -> dict:
    del doc["score"]
    del doc["tests"][1]["score"]
    return doc


BAD = {
    "test_visibility": lambda d: d["tests"][1].update(visibility="after_publication"),
    "top_visibility": lambda d: d.update(visibility="secret"),
    "stdout_visibility": lambda d: d.update(stdout_visibility=True),
    "no_score_anywhere": _without_scores,
    "score_as_text": lambda d: d.update(score="100"),
    "test_status": lambda d: d["tests"][0].update(status="ok"),
    "output_format": lambda d: d.update(output_format="markdown"),
    "unknown_top_key": lambda d: d.update(grade=3),
    "unknown_test_key": lambda d: d["tests"][0].update(hidden=True),
    "tags_not_strings": lambda d: d["tests"][0].update(tags=[1]),
    "leaderboard_order": lambda d: d.update(leaderboard=[{"name": "t", "value": 1, "order": "up"}]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_schema_rejects_bad_documents(name):
    doc = _doc()
    out = BAD[name](doc)
    doc = out if isinstance(out, dict) else doc
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_a_score_on_every_test_is_enough():
    doc = _doc()
    del doc["score"]
    _validate(doc)


# ---------------------------------------------------------------------------------------------
# run() without a sandbox: what happens when there is nothing to grade (fake course: fast)


def _layout(zip_path: Path, base: Path) -> Path:
    """Gradescope's tree: /autograder/{source (the unpacked zip), submission, results}."""
    root = base / "autograder"
    (root / "submission").mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root / "source")
    shutil.copy(root / "source" / "run_autograder", root / "run_autograder")
    os.chmod(root / "run_autograder", 0o755)
    return root


def _results(root: Path) -> dict:
    data = json.loads((root / "results" / "results.json").read_text())
    _validate(data)
    return data


@pytest.mark.parametrize(
    "files, says",
    [
        ({}, "No notebook (.ipynb) was found in your submission (no files)"),
        ({"report.pdf": b"%PDF"}, "(report.pdf)"),
        ({"a.ipynb": b"{}", "old/b.ipynb": b"{}"}, "holds 2 notebooks (a.ipynb, old/b.ipynb)"),
    ],
    ids=["empty", "pdf_only", "two_notebooks"],
)
def test_run_without_one_notebook_gives_zero_and_says_why(fake, tmp_path, capsys, files, says):
    root = _layout(gradescope.write_gradescope_zip(fake, tmp_path / "gs.zip"), tmp_path)
    for name, data in files.items():
        (root / "submission" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "submission" / name).write_bytes(data)
    assert gradescope.run(root) == 0
    data = _results(root)
    assert data["score"] == 0 and says in data["output"]
    assert data["extra_data"]["status"] == "ungradable"
    assert [(t["name"], t["max_score"], t["visibility"]) for t in data["tests"]] == [
        ("q1: test_public", 2.0, "visible"),
        ("q1: test_secret_reference", 2.0, "after_published"),
    ]
    assert "0 / 4 (ungradable)" in capsys.readouterr().out


def test_run_finds_the_root_in_the_environment(fake, tmp_path, monkeypatch):
    root = _layout(gradescope.write_gradescope_zip(fake, tmp_path / "gs.zip"), tmp_path)
    (root / "submission_metadata.json").write_text('{"id": 4242, "users": []}')
    monkeypatch.setenv(gradescope.ROOT_ENV, str(root))
    assert gradescope.autograder_root() == root
    assert main(["gradescope", "run"]) == 0
    extra = _results(root)["extra_data"]
    assert extra["assignment"] == "x1_demo" and extra["submission"] == "gradescope-4242"


def test_a_broken_autograder_still_writes_a_result(tmp_path, capsys):
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)  # no config, no course: a wrong zip
    assert gradescope.run(root) == 1
    data = _results(root)
    assert data["score"] == 0 and "The autograder itself failed (not your code)" in data["output"]
    assert "Traceback" in capsys.readouterr().out  # for the staff (stdout is theirs only)


def test_command_line_errors_exit_2(tmp_path, capsys, monkeypatch):
    assert main(["gradescope", "run", "--root", str(tmp_path / "missing")]) == 2
    assert "error: --root" in capsys.readouterr().err
    monkeypatch.setenv("TENSORGRADE_ROOT", str(ROOT))
    assert main(["gradescope", "zip", "no_such_assignment"]) == 2
    assert "error: unknown assignment" in capsys.readouterr().err
    assert main(["gradescope", "zip", "01_tensors", "02_autodiff", "-o", str(tmp_path / "z")]) == 2
    assert "error: --output needs exactly one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["gradescope", "--help"])
    assert e.value.code == 0 and "run_autograder" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# run_autograder on Assignment 1 (slow: real grading in the sandbox)


@pytest.fixture(scope="module")
def a1_tree(built_course, tmp_path_factory):
    """The zip of 01_tensors unpacked once, and its tensorgrade copied to a 'site-packages'
    outside /autograder, as setup.sh installs it."""
    a = built_course["01_tensors"]
    base = tmp_path_factory.mktemp("gradescope")
    zip_path = gradescope.write_gradescope_zip(a, base / "gradescope.zip")
    template = _layout(zip_path, base / "template")
    site = base / "site"
    shutil.copytree(template / "source/autograder/tensorgrade", site / "tensorgrade")
    return a, template, site


def autograde(
    a1_tree, base: Path, files: dict[str, bytes], decoy: bytes = b"", in_process: bool = False
) -> dict:
    """Run run_autograder in a fresh root holding ``files`` as the submission; the result.

    ``in_process`` calls what run_autograder execs (`gradescope.run`) in this process instead,
    saving an interpreter start per submission where many submissions are graded.
    """
    _, template, site = a1_tree
    root = base / "autograder"
    shutil.copytree(template, root)
    for name, data in files.items():
        (root / "submission" / name).write_bytes(data)
    if decoy:
        (root / "results").mkdir()
        (root / "results" / "results.json").write_bytes(decoy)
    if in_process:
        assert gradescope.run(root) == 0
        data = _results(root)
        _check_visibility_and_isolation(data)
        return data
    env = {
        **os.environ,
        gradescope.ROOT_ENV: str(root),
        gradescope.PYTHON_ENV: sys.executable,
        "PYTHONPATH": str(site),
    }
    proc = subprocess.run(
        [str(root / "run_autograder")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = _results(root)
    _check_visibility_and_isolation(data)
    return data


def _check_visibility_and_isolation(data: dict) -> None:
    hidden = {f"{t['question']}: {t['name']}" for t in data["extra_data"]["tests"] if t["hidden"]}
    assert hidden, "Assignment 1 has hidden tests"
    for t in data["tests"]:
        assert t["visibility"] == ("after_published" if t["name"] in hidden else "visible")
    assert data["visibility"] == "visible" and data["stdout_visibility"] == "hidden"
    assert sum(t["max_score"] for t in data["tests"]) == pytest.approx(100)
    extra = data["extra_data"]
    if extra["status"] == "graded" and namespaces_here():
        assert extra["isolation"]["level"] == "full"
        assert extra["sandbox_uids"] and min(extra["sandbox_uids"]) >= BASE_UID
        for uid in extra["sandbox_uids"]:
            assert uid_processes(uid) == [], "a sandbox process outlived run_autograder"


def _lost(data: dict) -> set[str]:
    scores: dict[str, list[float]] = {}
    for t in data["tests"]:
        s = scores.setdefault(t["tags"][0], [0.0, 0.0])
        s[0] += t["score"]
        s[1] += t["max_score"]
    return {q for q, (got, most) in scores.items() if got < most - 1e-9}


@pytest.mark.slow
@pytest.mark.sandbox
def test_solution_gets_full_marks_and_blank_gets_zero(a1_tree, tmp_path):
    a = a1_tree[0]
    full = autograde(a1_tree, tmp_path / "sol", {"01_tensors.ipynb": a.solution.read_bytes()})
    assert full["score"] == 100 and full["extra_data"]["status"] == "graded"
    blank = autograde(a1_tree, tmp_path / "blank", {"my work.ipynb": a.student.read_bytes()})
    assert blank["score"] == 0 and blank["extra_data"]["status"] == "graded"
    assert not any("def test_" in t["output"] for t in blank["tests"])


@pytest.mark.slow
@pytest.mark.sandbox
def test_every_mutant_loses_exactly_its_questions(a1_tree, tmp_path):
    a = a1_tree[0]
    loses = {f"mutant-{m.name}": set(m.loses) for m in load_mutants(a.mutants)}
    subs = {k: v for k, v in submissions(a).items() if k in loses}
    assert len(subs) == len(loses) >= 20
    wrong = {}
    for name, data in subs.items():
        files = {f"{name}.ipynb": data}
        got = _lost(autograde(a1_tree, tmp_path / name, files, in_process=True))
        if got != loses[name]:
            wrong[name] = (sorted(got), sorted(loses[name]))
    assert not wrong, f"mutant: (lost, expected) {wrong}"


PICKED = ["fake_results_files", "monkeypatch_torch_comparisons", "os_exit_in_a_cell"]


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.name in PICKED], ids=lambda a: a.name)
def test_attacks_gain_nothing(attack, a1_tree, tmp_path):
    a = a1_tree[0]
    data = autograde(a1_tree, tmp_path, {"01_tensors.ipynb": attack_notebook(a, attack)})
    assert data["score"] == pytest.approx(attack.score), data["output"][-2000:]
    assert data["extra_data"]["status"] == "graded"
    reason = data["extra_data"]["reason"]
    if attack.note:  # what grading must say about the attack (see test_adversarial.py)
        assert attack.note in reason, reason
    else:
        assert reason == "", reason


@pytest.mark.slow
@pytest.mark.sandbox
def test_student_code_cannot_read_the_autograder_folders(a1_tree, tmp_path):
    a = a1_tree[0]
    root = tmp_path / "autograder"
    targets = [
        root / "source" / "course/dist/01_tensors/tests/q1.py",
        root / "source" / "course/dist/01_tensors/autograder.zip",
        root / "source" / gradescope.CONFIG_NAME,
        root / "source" / "setup.sh",
        root / "results" / "results.json",
        Path("/autograder/source/setup.sh"),
        Path("/autograder/results/results.json"),
    ]
    folders = [root, root / "source", root / "results", root / "source/course"]
    attack = Attack(
        "read_autograder",
        "blank",
        [
            "import os\n"
            f"for p in {[str(p) for p in targets]!r}:\n"
            "    try:\n"
            "        open(p, 'rb').read(1)\n"
            "        print('READ', p)\n"
            "    except OSError as e:\n"
            "        print('denied', type(e).__name__)\n"
            f"for d in {[str(d) for d in folders]!r}:\n"
            "    try:\n"
            "        print('LISTED', d, os.listdir(d))\n"
            "    except OSError as e:\n"
            "        print('denied', type(e).__name__)\n"
            "print('uid', os.getuid())"
        ],
        0,
    )
    data = autograde(
        a1_tree, tmp_path, {"01_tensors.ipynb": attack_notebook(a, attack)}, decoy=b"DECOY-RESULT"
    )
    out = data["extra_data"]["student_output"]
    assert "READ" not in out and "LISTED" not in out, out
    assert out.count("denied") == len(targets) + len(folders), out
    assert data["score"] == 0
    if namespaces_here():
        assert f"uid {data['extra_data']['sandbox_uids'][0]}" in out  # not root
    assert "DECOY" not in (root / "results/results.json").read_text()


def _corrupt(a) -> bytes:
    return a.solution.read_bytes()[:5000]  # truncated mid-JSON


def _no_kernel(a) -> bytes:
    nb = nbformat.read(a.solution, as_version=4)
    del nb.metadata["kernelspec"]
    return nbformat.writes(nb).encode()


@pytest.mark.slow
@pytest.mark.parametrize(
    "make, says",
    [
        (lambda a: {}, "No notebook (.ipynb) was found"),
        (
            lambda a: {"a.ipynb": a.solution.read_bytes(), "b.ipynb": a.student.read_bytes()},
            "2 notebooks",
        ),
        (lambda a: {"01_tensors.ipynb": _corrupt(a)}, "not valid notebook JSON"),
        (lambda a: {"01_tensors.ipynb": _no_kernel(a)}, "has no kernelspec"),
        (lambda a: {"hw.zip": _zip({"x/01_tensors.ipynb": b"{"})}, "not valid notebook JSON"),
    ],
    ids=["no_notebook", "two_notebooks", "corrupt", "no_kernelspec", "zip_with_corrupt"],
)
def test_unusable_submissions_get_zero_and_a_reason(make, says, a1_tree, tmp_path):
    data = autograde(a1_tree, tmp_path, make(a1_tree[0]))
    assert data["score"] == 0 and says in data["output"]
    assert data["extra_data"]["status"] == "ungradable"
    assert all(says in t["output"] for t in data["tests"])


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()
