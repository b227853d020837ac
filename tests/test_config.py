"""One configuration per assignment (config.py), one place that reads the environment
(settings.py), one error model (errors.py): their checks, and docs/grading.md kept in step."""

from __future__ import annotations

import ast
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from tensorgrade import config, errors, settings
from tensorgrade.cli import main
from tensorgrade.config import Limits
from tensorgrade.course import Assignment
from tensorgrade.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docs" / "grading.md").read_text(encoding="utf-8")
PACKAGE = REPO / "autograder" / "tensorgrade"


def test_docs_table_of_limits_is_the_dataclass():
    assert config.markdown_table() in DOCS
    for f in fields(Limits):
        m = f.metadata
        assert m["doc"] and m["unit"] and m["min"] <= f.default <= m["max"], f.name


def test_docs_table_of_environment_variables_is_the_settings_module():
    assert settings.markdown_table() in DOCS
    names = [v.name for v in settings.VARIABLES]
    assert len(names) == len(set(names))


def test_only_settings_reads_the_environment():
    """os.environ.get / os.getenv / os.environ[...] read nowhere else in the package; the
    environment handed to a child (a dict built from os.environ) is not a read of a setting."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = ast.unparse(node) if isinstance(node, ast.Call | ast.Subscript) else ""
            if text.startswith(("os.environ.get(", "os.getenv(")) or (
                isinstance(node, ast.Subscript)
                and text.startswith("os.environ[")
                and isinstance(node.ctx, ast.Load)
                and not text.startswith("os.environ[k]")  # the zygote's environment, by list
            ):
                readers.append(f"{path.relative_to(PACKAGE)}: {text}")
    assert not readers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cell_timeout: fast\n", "cell_timeout: expected a number from 1 to 86400 s, got str"),
        ("memory_mb: 1.5\n", "memory_mb: expected a whole number from 256 to"),
        ("processes: true\n", "processes: expected a whole number from 8 to 65536, got bool"),
        ("max_restarts: -1\n", "max_restarts: expected a whole number from 0 to 1000"),
        ("cell_timeout: 0\n", "cell_timeout: expected a number from 1 to 86400 s, got int 0"),
        ("celltimeout: 5\n", "unknown key(s) celltimeout; known: cell_timeout,"),
        ("- 5\n", "expected a mapping of limits, got list"),
        ("cell_timeout: [\n", "not valid YAML"),
    ],
)
def test_a_bad_grading_yml_names_the_file_the_key_and_what_it_wants(tmp_path, text, expected):
    path = tmp_path / "grading.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)
    assert e.value.exit_code == 2


def test_a_good_grading_yml_and_none_at_all(tmp_path):
    assert config.load(tmp_path / "grading.yml") == Limits()
    (tmp_path / "grading.yml").write_text("cell_timeout: 5\nstartup_timeout: 2.5\nprocesses: 64\n")
    got = config.load(tmp_path / "grading.yml")
    assert (got.cell_timeout, got.startup_timeout, got.processes) == (5.0, 2.5, 64)
    assert isinstance(got.cell_timeout, float)
    (tmp_path / "grading.yml").write_text("")
    assert config.load(tmp_path / "grading.yml") == Limits()


@pytest.mark.parametrize("end", ["min", "max"])
def test_every_limit_in_bounds_is_one_the_sandbox_starter_accepts(end):
    from tensorgrade import protocol
    from tensorgrade.judge.sandbox import sandbox_limits

    limits = Limits.from_dict({f.name: f.metadata[end] for f in fields(Limits)})
    assert protocol.SandboxLimits.parse(asdict(sandbox_limits(limits)))


def _course(tmp_path: Path, grading_yml: str) -> Assignment:
    a = Assignment("x1_demo", tmp_path / "course")
    a.master.parent.mkdir(parents=True)
    a.master.write_text("{}")
    (a.master.parent / "grading.yml").write_text(grading_yml)
    a.student_dir.mkdir(parents=True)
    a.autograder_zip.parent.mkdir(parents=True)
    a.autograder_zip.write_bytes(b"not used")
    return a


@pytest.mark.parametrize("command", [["build"], ["build", "--check"], ["audit"]])
def test_build_and_audit_refuse_a_bad_grading_yml_first(tmp_path, monkeypatch, capsys, command):
    a = _course(tmp_path, "cell_timeout: 60s\n")
    monkeypatch.setenv("TENSORGRADE_ROOT", str(a.root))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {a.master.parent / 'grading.yml'}: cell_timeout: expected")
    assert not a.student.exists()


def test_grade_refuses_a_bad_grading_yml_before_grading_anything(tmp_path, monkeypatch, capsys):
    a = _course(tmp_path, "memory_mb: lots\n")
    monkeypatch.setenv("TENSORGRADE_ROOT", str(a.root))
    monkeypatch.delenv("TENSORGRADE_TORCH_VERSION", raising=False)
    sub = tmp_path / "ada.ipynb"
    sub.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    out = tmp_path / "results"
    assert main(["grade", str(sub), "-a", a.id, "-o", str(out), "-q"]) == 2
    assert "grading.yml: memory_mb: expected a whole number" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.TensorgradeError("failed"), 1),
        (errors.UsageError("bad option"), 2),
        (errors.NotFoundError("no course"), 2),
        (errors.ConfigError("grading.yml: x"), 2),
        (errors.OutputError("cannot write"), 2),
        (errors.IncompleteError("2 not graded"), 3),
        (FileNotFoundError(2, "No such file or directory", "nb.ipynb"), 2),
    ],
)
def test_every_error_is_printed_in_one_place_with_its_status(capsys, error, status):
    def fail() -> int:
        raise error

    assert errors.run(fail) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "nb.ipynb: No such file" in err or str(error) in err


def test_errors_of_the_library_carry_their_status():
    from tensorgrade.build import BuildError
    from tensorgrade.grading import GradingError
    from tensorgrade.lms.canvas import CanvasPushError
    from tensorgrade.lms.roster import RosterError
    from tensorgrade.mutants import MutantError
    from tensorgrade.release import ReleaseError
    from tensorgrade.submissions import IntakeError

    assert [e("x").exit_code for e in (BuildError, ReleaseError)] == [1, 1]
    assert [e("x").exit_code for e in (GradingError, MutantError, RosterError, IntakeError)] == [
        2,
        2,
        2,
        2,
    ]
    assert CanvasPushError("x").exit_code == 2 and CanvasPushError("x", config=False).exit_code == 1
    assert isinstance(errors.NotFoundError("x"), FileNotFoundError)
