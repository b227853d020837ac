"""--gpu-slots and the GPU memory check, tested without a GPU: the driver is faked."""

from __future__ import annotations

import stat

import nbformat
import pytest

from tensorgrade.cli import main
from tensorgrade.grading import GradeOptions, file_sha256, grade_many
from tensorgrade.judge import engine, gpus, sandbox
from tensorgrade.submissions import Submission
from tensorgrade.testfiles import load_tests


def _fake_smi(tmp_path, monkeypatch, gpu_lines: str, pid_lines: str = "") -> None:
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(
        '#!/bin/sh\ncase "$1" in\n'
        f"  --query-gpu=*) printf '{gpu_lines}' ;;\n"
        f"  --query-compute-apps=*) printf '{pid_lines}' ;;\n"
        "  *) exit 1 ;;\nesac\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")


def test_visible_gpus_from_the_environment_or_the_driver(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all
    assert gpus.visible_gpus() == []
    assert gpus.compute_pids() is None
    _fake_smi(tmp_path, monkeypatch, "0\\n1\\n", "123\\n456\\n")
    assert gpus.visible_gpus() == ["0", "1"]
    assert gpus.compute_pids() == {123, 456}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert gpus.visible_gpus() == ["3", "5"]


def test_slots_go_round_the_gpus():
    assert [gpus.gpu_for_slot(k, ["0", "1"]) for k in range(5)] == ["0", "1", "0", "1", "0"]


def test_memory_check_waits_for_the_driver_then_decides():
    answers = iter([{7, 8}, {8}, set()])
    assert gpus.memory_released({7}, query=lambda: next(answers)) is True
    assert gpus.memory_released({7}, patience=0.3, query=lambda: {7}) is False
    assert gpus.memory_released({7}, query=lambda: None) is None


def test_gpu_slots_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    nb = tmp_path / "x.ipynb"
    nb.write_text("{}")
    assert main(["grade", "--gpu-slots", "2", "-a", "01_tensors", str(nb)]) == 2
    assert "no GPU is visible" in capsys.readouterr().err
    assert main(["grade", "--gpu-slots", "-1", str(nb)]) == 2


def _probe_notebook(a, path):
    nb = nbformat.read(a.student, as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell("import os\nprint('GPU=' + os.environ['CUDA_VISIBLE_DEVICES'])")
    )
    path.write_text(nbformat.writes(nb))
    return path


@pytest.mark.slow
def test_each_sandbox_sees_only_its_gpu(built, tmp_path, monkeypatch):
    a = built["01_tensors"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    jobs = [
        (a, Submission(f"s{k}", _probe_notebook(a, tmp_path / f"s{k}.ipynb"))) for k in range(4)
    ]
    opts = GradeOptions(gpu_slots=2, progress=False)
    seen = {
        sub.key: [ln for ln in r.student_output.splitlines() if ln.startswith("GPU=")]
        for (_, sub), r in grade_many(jobs, opts, {a.id: file_sha256(a.autograder_zip)})
    }
    assert set(seen) == {"s0", "s1", "s2", "s3"}
    assert all(len(lines) == 1 and lines[0] in ("GPU=0", "GPU=1") for lines in seen.values()), seen


@pytest.mark.slow
@pytest.mark.parametrize("held", [False, True])
def test_a_sandbox_that_keeps_gpu_memory_is_reported(built, tmp_path, monkeypatch, held):
    a = built["01_tensors"]
    monkeypatch.setattr(sandbox, "_cuda_present", lambda: True)
    real = gpus.memory_released
    holding = (lambda: set(range(1, 2**22))) if held else (lambda: set())
    monkeypatch.setattr(
        gpus, "memory_released", lambda pids: real(pids, patience=0.3, query=holding)
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    r = engine.grade(
        a.student.read_bytes(),
        "blank.ipynb",
        a.id,
        load_tests(a.tests_dir),
        limits=sandbox.Limits(),
        files_from=a.student_dir,
    )
    assert r.gpu == {"device": "0", "memory_released": not held}
    assert ("GPU memory of the sandbox was still held" in r.reason) == held
