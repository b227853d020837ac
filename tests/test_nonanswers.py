"""Non-answers score zero: work that does nothing must not earn a point.

`tensorgrade audit` grades, for every assignment, notebooks whose every graded name is a
non-answer (zeros of the input's shape, the input unchanged, a constant of another dtype) and
fails when one scores; these tests check the non-answers themselves, the audit's message, and,
grading them (slow), that no assignment gives them a point.
"""

import pytest
import torch
from helpers import ASSIGNMENT_IDS

from tensorgrade.audit import grade_submissions, nonanswer_problems
from tensorgrade.grading import GradeOptions
from tensorgrade.mutants import (
    NONANSWER_KINDS,
    graded_names,
    nonanswer_code,
    nonanswer_submissions,
)
from tensorgrade.results import SubmissionResult, TestResult
from tensorgrade.testfiles import load_tests


def _namespace(kind, names, classes=()):
    ns: dict = {}
    exec(nonanswer_code(kind, list(names), set(classes)), ns)  # noqa: S102 - our own code
    return ns


def test_function_non_answers_do_no_work():
    x = torch.randn(3, 4, dtype=torch.float64)
    zeros = _namespace("zeros", ["f"])["f"]
    assert torch.equal(zeros(x, 2.0), torch.zeros_like(x)) and zeros(x).dtype == x.dtype
    assert torch.equal(zeros(), torch.zeros(1))
    assert _namespace("identity", ["f"])["f"](x, 5) is x
    other = _namespace("other_dtype", ["f"])["f"]
    assert other(x).dtype == torch.float32 and other(x.float()).dtype == torch.float64
    assert other(x).shape == x.shape and bool((other(x) == 1).all())


def test_class_non_answers_are_autograd_functions():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    for kind in NONANSWER_KINDS:
        F = _namespace(kind, ["F"], classes=["F"])["F"]
        assert issubclass(F, torch.autograd.Function)
        y = F.apply(x, 0.5)
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        want = torch.ones_like(x) if kind == "identity" else torch.zeros_like(x)
        assert g is not None and torch.equal(g, want)
        _, t = torch.func.jvp(
            lambda v, F=F: F.apply(v, 0.5), (x.detach(),), (torch.ones(5, dtype=x.dtype),)
        )
        assert t.shape == x.shape


def test_graded_names_are_the_test_parameters(built_course):
    a = built_course["01_tensors"]
    names = graded_names(load_tests(a.tests_dir))
    assert {"gaussian_density", "rgb_to_gray", "pick_device", "variance"} <= set(names)
    subs = nonanswer_submissions(a, load_tests(a.tests_dir))
    assert set(subs) == {f"nonanswer-{k}" for k in NONANSWER_KINDS}


def _result(name, passed):
    tests = [
        TestResult("q1", "test_dtype_only", 5.0 if passed else 0.0, 5.0, passed, "", True),
        TestResult("q1", "test_values", 0.0, 5.0, False, "", True),
    ]
    return SubmissionResult("a", name, "trusted", "graded", tests)


def test_audit_names_a_scoring_non_answer_and_its_tests():
    problems = nonanswer_problems(
        {"nonanswer-zeros": _result("z", True), "nonanswer-identity": _result("i", False)}
    )
    assert len(problems) == 1
    assert "non-answer zeros" in problems[0] and "q1:test_dtype_only" in problems[0]
    assert "test_values" not in problems[0]


@pytest.mark.slow
@pytest.mark.parametrize("aid", ASSIGNMENT_IDS)
def test_no_non_answer_scores_a_point(aid, built_course):
    a = built_course[aid]
    subs = nonanswer_submissions(a, load_tests(a.tests_dir))
    results = grade_submissions(a, subs, GradeOptions(engine="trusted", jobs=2, progress=False))
    scores = {name: r.score for name, r in results.items()}
    assert all(r.status == "graded" for r in results.values()), scores
    assert not nonanswer_problems(results), "\n".join(nonanswer_problems(results))
