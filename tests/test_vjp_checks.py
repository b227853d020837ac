"""``tg.vjp``'s own checks, in the student's kernel and through a real sandbox: a backward that
changes its cotangent in place fails as ``check_failed``; ``wrt`` poses "only t requires grad".

Both were held-out mistakes the engine could not catch (bench/heldout/02_autodiff.yml): the
cotangent was copied into the sandbox and never looked at again, and every floating input was
made to require grad, so a gradient computed only inside another input's branch looked right.
"""

from __future__ import annotations

import json

import pytest
import torch

from tensorgrade import testing as tg
from tensorgrade.course import Assignment
from tensorgrade.judge import engine
from tensorgrade.judge.sandbox import Limits
from tensorgrade.results import CHECK_FAILED, FAILURES
from tensorgrade.testfiles import load_tests

FUNCTIONS = '''
import torch

class InPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output.mul_(2 * x)


class Fresh(InPlace):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (2 * x)


class Nested(torch.autograd.Function):
    """d/dx (x * t) = t, d/dt = x; the t gradient only where x needs one too (the mistake)."""

    @staticmethod
    def forward(ctx, x, t):
        ctx.save_for_backward(x, t)
        return x * t

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved_tensors
        gx = gt = None
        if ctx.needs_input_grad[0]:
            gx = g * t
            if ctx.needs_input_grad[1]:
                gt = g * x
        return gx, gt
'''
ns: dict = {}
exec(FUNCTIONS, ns)  # the same classes in this process: the student's kernel, as otter runs it


def test_a_backward_that_changes_its_cotangent_fails_and_a_fresh_one_passes():
    x, v = tg.randn(4, seed=1), tg.randn(4, seed=2)
    with pytest.raises(tg.TestFailure, match="in place") as e:
        tg.vjp(ns["InPlace"].apply, (x,), (v.clone(),))
    assert e.value.kind == CHECK_FAILED
    _, (gx,) = tg.vjp(ns["Fresh"].apply, (x,), (v,))
    tg.assert_close(gx, 2 * x * v)


def test_a_cotangent_holding_nan_is_not_taken_for_a_change():
    x, v = tg.randn(3, seed=3), torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    _, (gx,) = tg.vjp(ns["Fresh"].apply, (x,), (v,))
    assert gx[1].isnan() and torch.equal(gx[[0, 2]], (2 * x * v)[[0, 2]])


def test_wrt_poses_only_some_inputs_requiring_grad():
    x, t, v = tg.randn(3, seed=4), tg.randn(3, seed=5), tg.randn(3, seed=6)
    _, (gx, gt) = tg.vjp(ns["Nested"].apply, (x, t), (v,))
    tg.assert_close(gt, v * x)  # both require grad: the mistake is invisible
    _, (gx, gt) = tg.vjp(ns["Nested"].apply, (x, t), (v,), wrt=(1,))
    assert gx is None and gt is None  # only t requires grad: its gradient is missing
    _, (gx, gt) = tg.vjp(lambda x, t: x * t, (x, t), (v,), wrt=[1])
    assert gx is None
    tg.assert_close(gt, v * x)


TESTS = """from otter.test_files import test_case

name = "q1"
points = 4

@test_case(points=None, hidden=False)
def test_fresh_public(Fresh):
    import torch
    from tensorgrade import testing as tg
    x, v = tg.randn(4, seed=1), tg.randn(4, seed=2)
    _, (gx,) = tg.vjp(Fresh.apply, (x,), (v,))
    tg.assert_close(gx, 2 * x * v)

@test_case(points=None, hidden=False)
def test_in_place_public(InPlace):
    from tensorgrade import testing as tg
    x, v = tg.randn(4, seed=1), tg.randn(4, seed=2)
    tg.vjp(InPlace.apply, (x,), (v,))

@test_case(points=None, hidden=True)
def test_in_place_hidden(InPlace):
    from tensorgrade import testing as tg
    x, v = tg.randn(4, seed=1), tg.randn(4, seed=2)
    tg.vjp(InPlace.apply, (x,), (v,))

@test_case(points=None, hidden=True)
def test_only_t(Nested):
    from tensorgrade import testing as tg
    x, t, v = tg.randn(3, seed=4), tg.randn(3, seed=5), tg.randn(3, seed=6)
    _, (gx, gt) = tg.vjp(Nested.apply, (x, t), (v,), wrt=(1,))
    assert gx is None, "x does not require grad"
    assert gt is not None, "t alone requires grad: its gradient is missing"
    tg.assert_close(gt, v * x)
"""


@pytest.mark.sandbox
def test_the_same_checks_hold_through_a_real_sandbox(tmp_path):
    a = Assignment("x1_vjp", tmp_path)
    a.tests_dir.mkdir(parents=True)
    (a.tests_dir / "q1.py").write_text(TESTS)
    cells = [
        {"cell_type": "code", "source": FUNCTIONS, "metadata": {}, "outputs": [], "execution_count": None, "id": "c1"}
    ]  # fmt: skip
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    specs = load_tests(a.tests_dir)
    res = engine.grade(json.dumps(nb).encode(), "x.ipynb", a.id, specs, limits=Limits(), slot=5)
    got = {t.name: (t.passed, t.failure, t.output) for t in res.tests}
    assert got["test_fresh_public"][0], got
    passed, failure, text = got["test_in_place_public"]
    assert not passed and failure == CHECK_FAILED and "in place" in text, got
    assert got["test_in_place_hidden"][1:] == (CHECK_FAILED, FAILURES[CHECK_FAILED]), got
    passed, failure, _ = got["test_only_t"]
    assert not passed and failure == CHECK_FAILED, got
