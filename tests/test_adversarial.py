"""Attacks on the trusted engine, built on the real Assignment 1 notebooks.

Every attack must end with a result (never a crash or a hang), gain no points, leak no hidden test,
leave no process behind and leave the hidden test files untouched. Each case states its expected
score: 0 when the attack rides on the blank notebook (it tries to fake a pass), 100 when it rides on
the solution (it tries to break grading; the honest answers must still count).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading

import pytest
from helpers import ATTACKS, Attack, attack_notebook

from sandboxing import namespaces_here, uid_processes
from tensorgrade.judge import engine
from tensorgrade.judge.sandbox import Limits
from tensorgrade.results import FAILURES, SubmissionResult
from tensorgrade.root.uids import BASE_UID
from tensorgrade.testfiles import load_tests

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]
# test_confidentiality.py still imports these from here: use helpers instead
_notebook = attack_notebook
__all__ = ["Attack", "_notebook"]

LIMITS = Limits(cell_timeout=6, call_timeout=6, submission_timeout=150, memory_mb=3072)
SLOT = 7
# Fragments of hidden test source (test names are shown on purpose: they label the feedback).
LEAK_MARKERS = [
    "def test_",
    "tg.assert_close(",
    "# HIDDEN",
    "hidden=True",
    "ref = torch.exp(-((x64 - mu)",
]


@pytest.fixture(scope="module")
def env(built_course):
    a = built_course["01_tensors"]
    specs = load_tests(a.tests_dir)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in a.tests_dir.iterdir()}
    return a, specs, digest


def _grade(a, specs, data: bytes, name: str) -> SubmissionResult:
    return engine.grade(
        data,
        f"{name}.ipynb",
        a.id,
        specs,
        limits=LIMITS,
        files_from=a.student_dir,
        slot=SLOT,
    )


def _check_common(a, digest, result: SubmissionResult):
    doc = result.to_gradescope()
    figures = doc["extra_data"].pop("figures")
    text = json.dumps(doc)
    for marker in LEAK_MARKERS:
        assert marker not in text, f"hidden test material leaked: {marker!r}"
    assert len(text) < 300_000, "feedback must stay small"
    assert sum(len(f["png"]) for f in figures) <= engine._FIGURES_TOTAL
    now = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in a.tests_dir.iterdir()}
    assert now == digest, "hidden test files were changed"
    for t in result.tests:  # a failed hidden test says its class of failure, in a fixed sentence
        if t.hidden and not t.passed:
            assert t.output == FAILURES[t.failure], (t.name, t.output)
        assert t.passed == (t.failure == "")
    if namespaces_here():
        assert result.sandbox_uids and min(result.sandbox_uids) >= BASE_UID
        for uid in result.sandbox_uids:
            assert uid_processes(uid) == [], "a process of the sandbox survived grading"


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, env):
    a, specs, digest = env
    result = _grade(a, specs, attack_notebook(a, attack), attack.name)
    _check_common(a, digest, result)
    assert result.status == "graded", result.reason
    assert result.score == pytest.approx(attack.score), (
        f"{attack.name}: score {result.score}, expected {attack.score}\n{result.reason}\n"
        + "\n".join(f"{t.question}:{t.name}: {t.output}" for t in result.tests if not t.passed)
    )
    assert len(result.tests) == len(specs), "every test gets a result"
    if attack.note and attack.speed_dependent:  # timed out here, or finished in time
        assert result.reason == "" or attack.note in result.reason, result.reason
    elif attack.note:  # what grading must say about the attack
        assert attack.note in result.reason, result.reason
    else:  # nothing to note: the attack left no trace in the grading
        assert result.reason == "", result.reason
    seen = json.dumps(
        [t.output for t in result.tests] + [result.reason, result.student_output],
        ensure_ascii=False,
    )
    for text in attack.absent:
        assert text not in seen, f"{text!r} reached what the student sees"
    if attack.hidden_failure:
        assert any(t.hidden and t.failure == attack.hidden_failure for t in result.tests)
    if attack.name == "exfiltrate_hidden_inputs_by_exception":
        assert "SECRET-INPUT" not in json.dumps([t.output for t in result.tests if t.hidden]), (
            "a student's exception text must not carry hidden inputs out"
        )


@pytest.mark.root
@pytest.mark.skipif(not namespaces_here(), reason="network namespaces need root")
def test_network_is_unreachable(env):
    a, specs, digest = env
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.2)
    got = []

    def accept():
        for _ in range(60):
            try:
                conn, _ = server.accept()
                got.append(conn)
                return
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    attack = Attack(
        "network",
        "blank",
        [
            "import socket\n"
            f"for host in ['127.0.0.1', 'pypi.org']:\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=2)\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('no network', type(e).__name__)"
        ],
        0,
    )
    result = _grade(a, specs, attack_notebook(a, attack), "network")
    t.join()
    server.close()
    _check_common(a, digest, result)
    assert not got, "the sandbox reached a server on the host"
    assert "CONNECTED" not in result.student_output
    assert "no network" in result.student_output


@pytest.mark.root
@pytest.mark.skipif(not namespaces_here(), reason="uid switching needs root")
def test_sandbox_cannot_read_masters_or_other_files(env, tmp_path):
    a, specs, digest = env
    attack = Attack(
        "read_files",
        "blank",
        [
            "import os\n"
            f"for p in {[str(a.master), str(a.tests_dir / 'q1.py'), '/root/.bashrc', '/etc/shadow']!r}:\n"
            "    try:\n"
            "        open(p).read(1)\n"
            "        print('READ', p)\n"
            "    except OSError as e:\n"
            "        print('denied', type(e).__name__)\n"
            "print('uid', os.getuid(), 'tmp', os.environ.get('TMPDIR'), 'tf32', os.environ.get('NVIDIA_TF32_OVERRIDE'))"
        ],
        0,
    )
    result = _grade(a, specs, attack_notebook(a, attack), "read_files")
    _check_common(a, digest, result)
    assert "READ" not in result.student_output
    assert result.student_output.count("denied") == 4
    assert f"uid {result.sandbox_uids[0]}" in result.student_output
    assert "tf32 0" in result.student_output
    assert result.isolation_level == "full"
