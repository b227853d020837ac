"""What a student may learn and what the sandbox may claim: the judge <-> sandbox boundary.

- Functions a test lends to the student's code (Portables) stay in the judge: the sandbox gets a
  handle, every evaluation (and derivative, and vmap) is done and counted by the judge, so a
  call count cannot be forged and the parameters never enter the sandbox.
- The sandbox's messages are typed and validated; anything else means a dead sandbox.
- A failed test records its class of failure as data; reports label hidden tests from it.
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import pytest
import torch
from test_adversarial import Attack, _notebook

from tensorgrade import protocol, results, testing, wire
from tensorgrade.confined import worker
from tensorgrade.judge import engine, proxy
from tensorgrade.judge.sandbox import Limits
from tensorgrade.portable import Portable
from tensorgrade.reports.student import FAILURE_LABELS, failure_kind, failure_label, student_report
from tensorgrade.results import FAILURES, SubmissionResult, TestResult
from tensorgrade.testfiles import load_tests


def _grade(a, specs, data: bytes, name: str, limits: Limits | None = None):
    limits = limits or Limits(cell_timeout=6, call_timeout=6, submission_timeout=150)
    return engine.grade(
        data, f"{name}.ipynb", a.id, specs, limits=limits, files_from=a.student_dir, slot=8
    )


def _split(data: bytes) -> tuple[dict, bytes]:
    pos = [0]

    def read(n):
        out = data[pos[0] : pos[0] + n]
        pos[0] += n
        return out

    return wire.split_frame(read)


class _InProcessJudge(worker._Judge):
    """The sandbox's real ``_Judge`` with its pipes replaced by the judge's real evaluation."""

    def __init__(self, lent: dict):
        super().__init__(-1, -1)
        self.request_id = 12345
        self.lent = lent
        self.replies: list[bytes] = []
        self.evals: list[tuple] = []

    def write(self, data: bytes) -> None:
        header, blob = _split(data)
        msg = protocol.parse_answer(header)  # exactly what the judge does on receipt
        assert isinstance(msg, protocol.Eval) and msg.id == 12345
        self.evals.append(msg.spec)
        reply, _ = wire.encode(proxy.evaluation(msg, blob, self.lent))
        self.replies.append(reply)

    def read(self) -> tuple[dict, bytes]:
        return _split(self.replies.pop())


def _remote(name: str, **params):
    """(the judge's Portable, the sandbox's handle for it, the in-process judge)."""
    p = Portable(name, **params)
    judge = _InProcessJudge({5: p})
    return p, judge.remote_function(5, name), judge


A = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
X = torch.randn(2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
Q = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
V4 = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def _jac_rev(f):
    y, pull = torch.func.vjp(f, X)
    eye = torch.eye(y.numel(), dtype=y.dtype)
    return torch.stack([pull(eye[i])[0] for i in range(y.numel())])


def _jac_fwd(f):
    eye = torch.eye(X.numel(), dtype=X.dtype)
    return torch.stack([torch.func.jvp(f, (X,), (eye[j],))[1] for j in range(X.numel())], dim=1)


def _backward(f):
    x = X.clone().requires_grad_(True)
    f(x).pow(2).sum().backward()
    return x.grad


def _grads_batched(f):
    x = X.clone().requires_grad_(True)
    y = f(x)
    eye = torch.eye(y.numel(), dtype=y.dtype)
    return torch.autograd.grad(y, x, eye, is_grads_batched=True)[0]


def _grads_batched_summed(f):
    def rows_summed(x):
        y = f(x)
        eye = torch.eye(y.numel(), dtype=y.dtype)
        return torch.autograd.grad(y, x, eye, create_graph=True, is_grads_batched=True)[0].sum(0)

    return rows_summed


def _double_backward(f):
    x = V4.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    return torch.autograd.grad(g @ V4, x)[0]


# (what, registry function, its parameters, how the student's code uses it)
USES = [
    ("vjp rows", "sin_of_linear", {"A": A}, _jac_rev),
    ("jvp columns", "sin_of_linear", {"A": A}, _jac_fwd),
    (
        "vmap over a pullback",
        "sin_of_linear",
        {"A": A},
        lambda f: torch.func.vmap(torch.func.vjp(f, X)[1])(torch.eye(3, dtype=X.dtype))[0],
    ),
    (
        "vmap over jvp",
        "sin_of_linear",
        {"A": A},
        lambda f: torch.func.vmap(lambda t: torch.func.jvp(f, (X,), (t,))[1])(
            torch.eye(2, dtype=X.dtype)
        ),
    ),
    ("jacrev", "sin_of_linear", {"A": A}, lambda f: torch.func.jacrev(f)(X)),
    ("jacfwd", "sin_of_linear", {"A": A}, lambda f: torch.func.jacfwd(f)(X)),
    ("backward", "sin_of_linear", {"A": A}, _backward),
    ("is_grads_batched", "sin_of_linear", {"A": A}, _grads_batched),
    (
        "vectorized jacobian",
        "sin_of_linear",
        {"A": A},
        lambda f: torch.autograd.functional.jacobian(f, X, vectorize=True),
    ),
    (
        "is_grads_batched under a vectorized jacobian",
        "sin_of_linear",
        {"A": A},
        lambda f: torch.autograd.functional.jacobian(_grads_batched_summed(f), X, vectorize=True),
    ),
    (
        "vectorized hessian",
        "rosenbrock",
        {},
        lambda f: torch.autograd.functional.hessian(f, V4, vectorize=True),
    ),
    ("vmap of f", "sin_of_linear", {"A": A}, lambda f: torch.func.vmap(f)(torch.stack([X, -X]))),
    (
        "forward over reverse",
        "quadratic_form",
        {"A": Q},
        lambda f: torch.func.jvp(torch.func.grad(f), (V4,), (V4.flip(0),))[1],
    ),
    ("hessian", "rosenbrock", {}, lambda f: torch.func.hessian(f)(V4)),
    ("double backward", "rosenbrock", {}, _double_backward),
    (
        "matrix-free CG step",
        "convolve1d",
        {"kernel": torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)},
        lambda f: torch.func.vjp(f, torch.zeros(6, dtype=torch.float64))[1](f(V4.repeat(2)[:6]))[0],
    ),
]


@pytest.mark.parametrize("use", USES, ids=[u[0] for u in USES])
def test_remote_functions_compose_like_local_ones_and_the_judge_counts(use):
    _, name, params, fn = use
    local = Portable(name, **params)
    want = fn(local)
    p, handle, judge = _remote(name, **params)
    got = fn(handle)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert p.calls == local.calls, (judge.evals, local.calls)  # counted by the judge, the same
    assert p.pushforwards == local.pushforwards, (judge.evals, local.pushforwards)  # forward mode
    assert judge.evals  # every value came from the judge


def test_legacy_batching_nested_in_itself_says_what_to_use_instead():
    """torch.autograd's own vmap nested in itself (a tensor batched twice) is refused, not
    answered wrongly; torch.func's vmap nests (``USES``)."""
    from torch._vmap_internals import _vmap  # what is_grads_batched and vectorize=True use

    _, handle, _ = _remote("sin_of_linear", A=A)
    with pytest.raises(RuntimeError, match="torch.func"):
        _vmap(_vmap(handle))(torch.stack([torch.stack([X, -X])] * 3))


def test_the_sandbox_cannot_change_the_count_or_see_the_parameters():
    p, handle, _ = _remote("sin_of_linear", A=A)
    for _ in range(3):
        handle(X)
    handle.calls = 1  # what a student tried: it is not the judge's count
    assert p.calls == 3
    assert not hasattr(handle, "params")
    assert "31" not in repr(handle) and "A" not in vars(handle)


def test_the_judge_refuses_unknown_handles_and_forged_inputs():
    p = Portable("matvec", A=torch.eye(2, dtype=torch.float64))
    data, _ = wire.encode({"value": [torch.ones(2, dtype=torch.float64)]})
    header, blob = _split(data)
    msg = protocol.Eval(1, 99, ("f",), header["value"])
    assert proxy.evaluation(msg, blob, {5: p})["ok"] is False  # a stale or unknown handle
    assert p.calls == 0
    good = protocol.Eval(1, 5, ("f",), header["value"])
    assert proxy.evaluation(good, blob, {5: p})["ok"] is True and p.calls == 1
    grad = protocol.Eval(1, 5, ("vjp", ("f",), 1), {"__list__": []})
    with pytest.raises(wire.WireError):  # not tensors: a forged message
        proxy.evaluation(grad, blob, {5: p})
    bad = protocol.Eval(1, 5, ("f",), {"__list__": [header["value"]["__list__"][0]] * 2})
    with pytest.raises(wire.WireError):  # two inputs naming the same bytes
        proxy.evaluation(bad, blob, {5: p})
    wrong = protocol.Eval(1, 5, ("jvp", ("f",), 1), header["value"])  # a tangent missing
    answer = proxy.evaluation(wrong, blob, {5: p})
    assert answer["ok"] is False and p.calls == 1  # a derivative is not a call


def test_local_portables_poison_their_count():
    """Portables the sandbox must run itself (their tests look into the autograd graph): the
    judge cannot count their calls, so a test comparing their count never passes."""

    class Session:
        limits = type("L", (), {"call_timeout": 5.0})()

        def new_token(self):
            return 1

        def ask(self, request, limit, expect, lent=None, portable_type=None):
            assert portable_type is Portable and not lent
            data, _ = wire.encode({"op": "value", "id": 1, "value": 3})
            return protocol.Value(1, 3), b""

    f = Portable("tanh_chain", W=torch.zeros(1, 2, 2))
    assert proxy.Proxy(Session(), "count_saved")(f, torch.zeros(2)) == 3
    assert math.isnan(f.calls)
    assert not (f.calls == 1 or f.calls <= 65 or f.calls >= 0)


# --- typed sandbox messages --------------------------------------------------------------------

GOOD = [
    {"op": "ran", "id": 3, "ok": True, "error": "", "stdout": "hi", "figures": []},
    {"op": "names", "id": 3, "names": {"f": True}},
    {"op": "value", "id": 3, "value": {"__list__": [1]}},
    {"op": "error", "id": 3, "kind": "raised", "error": "ValueError: x"},
    {"op": "error", "id": 3, "kind": "check_failed", "error": "changed its grad_output in place"},
    {"op": "eval", "id": 3, "token": 1, "spec": ["vmap", ["vjp", ["f"], 1], [0, None]], "value": 1},
    {"op": "done", "id": None, "ok": True},
]
BAD = [
    {"op": "ran", "id": 3, "ok": 1, "error": "", "stdout": "", "figures": []},
    {"op": "ran", "id": 3, "ok": True, "error": "", "stdout": "", "figures": [3]},
    {"op": "ran", "id": 3, "ok": True, "error": "", "stdout": "", "figures": [], "score": 100},
    {"op": "names", "id": 3, "names": {"f": "yes"}},
    {"op": "value", "id": "3", "value": 1},
    {"op": "value", "id": 3},
    {"op": "error", "id": 3, "kind": "SECRET", "error": ""},
    {"op": "eval", "id": 3, "token": 1, "spec": ["pickle"], "value": 1},
    {"op": "eval", "id": 3, "token": 1, "spec": ["vjp", ["f"], 99], "value": 1},
    {"op": "eval", "id": 3, "token": -1, "spec": ["f"], "value": 1},
    {"op": "result", "id": 3, "score": 100},
    {"id": 3, "ok": True, "value": 1},
    [1, 2],
]


@pytest.mark.parametrize("message", GOOD, ids=[m["op"] for m in GOOD])
def test_the_sandbox_messages_parse_into_their_types(message):
    msg = protocol.parse_answer(message)
    assert msg.op == message["op"]


@pytest.mark.parametrize("message", BAD, ids=range(len(BAD)))
def test_anything_else_is_refused(message):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_answer(message)


def test_remote_evaluations_are_bounded():
    spec = ["f"]
    for _ in range(protocol.MAX_SPEC_DEPTH):
        spec = ["jvp", spec, 1]
    protocol.parse_spec(spec)
    with pytest.raises(protocol.ProtocolError, match="deep"):
        protocol.parse_spec(["vjp", spec, 1])
    assert protocol.spec_is_call(("vmap", ("vmap", ("f",), (0,)), (None,)))
    assert not protocol.spec_is_call(("vmap", ("vjp", ("f",), 1), (None, 0)))
    assert protocol.spec_is_pushforward(("vmap", ("jvp", ("f",), 1), (None, 0)))
    assert protocol.spec_is_pushforward(("jvp", ("vmap", ("f",), (0,)), 1))
    assert not protocol.spec_is_pushforward(("jvp", ("vjp", ("f",), 1), 2))  # forward over reverse
    assert not protocol.spec_is_pushforward(("vmap", ("vjp", ("f",), 1), (None, 0)))


# --- failure classes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, kind",
    [
        (lambda: testing.check_tensor(None), results.NO_RESULT),
        (lambda: testing.check_tensor([1.0]), results.WRONG_TYPE),
        (lambda: testing.check_tensor(torch.zeros(2), shape=(3,)), results.WRONG_SHAPE),
        (lambda: testing.check_tensor(torch.zeros(2), dtype=torch.float64), results.WRONG_DTYPE),
        (lambda: testing.assert_close(torch.ones(2), torch.zeros(2)), results.WRONG_VALUE),
        (
            lambda: testing.assert_close(torch.tensor([math.nan, 0.0]), torch.zeros(2)),
            results.NOT_FINITE,
        ),
        (lambda: testing.assert_scalar_close(2.0, 1.0), results.WRONG_VALUE),
        (lambda: testing.assert_scalar_close("x", 1.0), results.WRONG_TYPE),
    ],
)
def test_checks_say_their_class_of_failure(check, kind):
    with pytest.raises(testing.TestFailure) as e:
        check()
    assert e.value.kind == kind and kind in FAILURES


def test_every_class_has_a_fixed_sentence_and_a_label():
    assert set(FAILURE_LABELS) == set(FAILURES)
    for sentence in FAILURES.values():
        assert sentence and "{" not in sentence


def test_the_class_is_kept_in_results_json_and_labels_the_report():
    t = TestResult(
        "q5",
        "test_dominant_batched",
        0.0,
        5.0,
        False,
        FAILURES[results.WRONG_VALUE],
        True,
        results.WRONG_VALUE,
    )
    r = SubmissionResult("01_tensors", "ada", "trusted", "graded", [t])
    doc = json.loads(json.dumps(r.to_gradescope()))
    assert doc["extra_data"]["tests"][0]["failure"] == results.WRONG_VALUE
    back = SubmissionResult.from_gradescope(doc)
    assert back.tests[0].failure == results.WRONG_VALUE
    assert failure_label(back.tests[0]) == "not accurate enough"
    page = student_report(back)
    assert "not accurate enough" in page and "NaN" not in page
    # a result without the field (an older one): the keywords, without the old "domiNANt" bug
    old = TestResult("q5", "t", 0, 5, False, "the dominant peak is not accurate enough", True)
    assert failure_label(old) == "not accurate enough"
    assert failure_kind("the dominant frequency is off by 2") == "not accurate enough"
    assert failure_kind("x contains 3 NaN or infinite value(s)").startswith("the result contains")


# --- whole submissions (slow) ------------------------------------------------------------------

TIGHT = Limits(cell_timeout=6, call_timeout=6, submission_timeout=20, memory_mb=3072)
_A1_FUNCTIONS = [
    "gaussian_density",
    "normalize_rows",
    "rgb_to_gray",
    "amplitude_spectrum",
    "dominant_frequencies",
    "power_iteration",
    "random_projection",
    "pick_device",
    "variance",
]


def _wrap_all(body: str, names: list[str] = _A1_FUNCTIONS) -> str:
    """A cell that wraps functions of Assignment 1 with ``body`` before the honest call."""
    return (
        "import functools, os, time\n"
        "def _wrap(fn):\n"
        "    @functools.wraps(fn)\n"
        "    def w(*a, **k):\n"
        f"        {body}\n"
        "        return fn(*a, **k)\n"
        "    return w\n"
        f"for _n in {names!r}:\n"
        "    globals()[_n] = _wrap(globals()[_n])"
    )


@pytest.fixture(scope="module")
def a1(built):
    a = built["01_tensors"]
    return a, load_tests(a.tests_dir)


DEADLINE_CASES = {
    # every call is slow but within its own limit: q2's batched test makes six calls (30 s)
    "many_slow_calls": ["solution", [_wrap_all("time.sleep(5)", ["normalize_rows"])]],
    # every call hangs: each waits for its call limit, then a restart replays the cells
    "calls_never_answer": ["solution", [_wrap_all("while True: pass")]],
    # 17 s of good cells, then a crash: the replay would take another 17 s
    "crash_then_slow_replay": [
        "solution",
        ["import time\ntime.sleep(0.8)"] * 21 + ["import os\nos._exit(1)"],
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DEADLINE_CASES))
def test_the_submission_deadline_holds_whatever_the_code_does(a1, case):
    """20 s for the submission; every test gets a result. The wall-clock bound is a hang detector
    with a wide margin (3x), not a speed benchmark: a grader that stopped waiting only when the
    student's code let it would blow through any margin."""
    a, specs = a1
    base, cells = DEADLINE_CASES[case]
    start = time.monotonic()
    r = _grade(a, specs, _notebook(a, Attack(case, base, cells, 0)), case, TIGHT)
    wall = time.monotonic() - start
    assert r.status == "graded" and len(r.tests) == len(specs)
    assert wall < 3 * 20, f"{case}: {wall:.1f} s for a 20 s limit: the deadline did not hold"
    assert r.execution_time < 30
    assert any(t.failure == results.NOT_RUN for t in r.tests)  # the clock ran out
    for t in r.tests:
        if t.hidden and not t.passed:
            assert t.output == FAILURES[t.failure]


@pytest.mark.slow
def test_tensor_entries_sharing_bytes_are_refused_without_a_big_allocation(a1):
    """The sandbox answers with 64 entries naming the same 8 MiB: refused as a crash."""
    a, specs = a1
    cell = (
        "import json, struct, torch\n"
        "import tensorgrade.wire as _w\n"
        "_honest = _w.encode\n"
        "def _forged(header, portable_type=None):\n"
        "    if header.get('op') != 'value':\n"
        "        return _honest(header, portable_type)\n"
        "    data, p = _honest({**header, 'value': torch.zeros(2**20, dtype=torch.float64)})\n"
        "    hlen, blen = struct.unpack('>QQ', data[:16])\n"
        "    h = json.loads(data[16 : 16 + hlen])\n"
        "    h['value'] = {'__list__': [h['value']] * 64}\n"
        "    t = json.dumps(h).encode()\n"
        "    return struct.pack('>QQ', len(t), blen) + t + data[16 + hlen :], p\n"
        "_w.encode = _forged"
    )
    tracemalloc.start()
    try:
        r = _grade(a, specs, _notebook(a, Attack("sharing", "blank", [cell], 0)), "sharing")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == "graded" and r.score == 0 and len(r.tests) == len(specs)
    assert peak < 160 * 2**20, f"the judge allocated {peak / 2**20:.0f} MiB"  # 64 x 8 MiB before
    assert any(t.failure == results.CRASHED for t in r.tests)
    for t in r.tests:
        if t.hidden:
            assert t.output == FAILURES[t.failure]


@pytest.mark.slow
def test_a_forged_call_count_gains_nothing(built):
    """02's q3 checks how often jacobian_rev calls f. A student's jacobian_rev that calls f once
    per input (forward mode), then sets ``f.calls = 1``, scores as the same code without the
    forgery: the judge counted the calls itself."""
    a = built["02_autodiff"]
    specs = load_tests(a.tests_dir)
    honest_wrong = (
        "def jacobian_rev(f, x):\n"
        "    eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)\n"
        "    J = torch.stack([torch.func.jvp(f, (x,), (eye[j],))[1] for j in range(x.numel())], dim=1)\n"
    )
    forged = honest_wrong + (
        "    for attempt in (lambda: setattr(f, 'calls', 1), lambda: f.__dict__.update(calls=1)):\n"
        "        try:\n"
        "            attempt()\n"
        "        except Exception:\n"
        "            pass\n"
    )
    scores = {}
    for name, code in (("honest_wrong", honest_wrong), ("forged", forged)):
        attack = Attack(name, "solution", [code + "    return J"], 0)
        r = _grade(a, specs, _notebook(a, attack), name)
        assert r.status == "graded", r.reason
        scores[name] = r.question_scores()["q3"]
        rev = next(t for t in r.tests if t.name == "test_jacobian_rev_small")
        assert not rev.passed and "called f 2 times" in rev.output  # the judge's own count
    assert scores["forged"] == scores["honest_wrong"]
    assert scores["forged"][0] < scores["forged"][1]
