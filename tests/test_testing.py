"""The comparison helpers must fail on wrong answers, with messages that leak no expected values."""

import pytest
import torch

from tensorgrade import testing as tg
from tensorgrade.portable import Portable


def test_tolerance_knows_dtype_and_conditioning():
    assert tg.tolerance(torch.float32) > 1000 * tg.tolerance(torch.float64)
    assert tg.tolerance(torch.float64, cond=100) == pytest.approx(100 * tg.tolerance(torch.float64))
    with pytest.raises(ValueError):
        tg.tolerance(torch.int64)


def test_assert_close_accepts_rounding_and_rejects_errors():
    ref = tg.randn(50, seed=0)
    tg.assert_close(ref.clone(), ref)
    tg.assert_close(ref.float(), ref.float())
    with pytest.raises(tg.TestFailure, match="relative error"):
        tg.assert_close(ref * (1 + 1e-6), ref)


def test_assert_close_message_hides_expected_values():
    ref = torch.tensor([123.456, 7.0], dtype=torch.float64)
    with pytest.raises(tg.TestFailure) as e:
        tg.assert_close(torch.tensor([0.0, 7.0], dtype=torch.float64), ref)
    assert "123" not in str(e.value)
    assert "index (0,)" in str(e.value)


@pytest.mark.parametrize(
    "actual, pattern",
    [
        (None, "is None"),
        (..., "not filled in"),
        ([1.0, 2.0], "torch.Tensor"),
        (torch.zeros(3), "shape"),
        (torch.zeros(2, dtype=torch.float32), "dtype"),
        (torch.tensor([float("nan"), 0.0], dtype=torch.float64), "NaN"),
    ],
)
def test_assert_close_explains_wrong_answers(actual, pattern):
    with pytest.raises(tg.TestFailure, match=pattern):
        tg.assert_close(actual, torch.zeros(2, dtype=torch.float64))


def test_tensor_subclass_is_refused():
    class Liar(torch.Tensor):
        def __eq__(self, other):
            return True

    x = torch.zeros(2).as_subclass(Liar)
    with pytest.raises(tg.TestFailure, match="torch.Tensor"):
        tg.check_tensor(x)


def test_scalar_close():
    tg.assert_scalar_close(torch.tensor(2.0), 2.0)
    with pytest.raises(tg.TestFailure):
        tg.assert_scalar_close(2.1, 2.0)
    with pytest.raises(tg.TestFailure, match="number"):
        tg.assert_scalar_close("2", 2.0)
    with pytest.raises(tg.TestFailure):
        tg.assert_scalar_close(True, 1.0)


def test_seeded_draws_are_reproducible():
    assert torch.equal(tg.randn(4, seed=3), tg.randn(4, seed=3))
    assert not torch.equal(tg.randn(4, seed=3), tg.randn(4, seed=4))
    assert tg.randn(2, seed=1, dtype=torch.float32).dtype == torch.float32


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _SquareForgetsGradOutput(_Square):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x


def test_check_vjp_accepts_right_and_rejects_wrong_backward():
    x = tg.randn(5, seed=1)
    tg.check_vjp(_Square.apply, (x,))
    with pytest.raises(tg.TestFailure):
        tg.check_vjp(_SquareForgetsGradOutput.apply, (x,))


def test_vjp_gives_none_for_non_tensors_and_casts_cotangent():
    x = tg.randn(3, seed=2, dtype=torch.float32)
    out, (gx, gs) = tg.vjp(lambda x, s: (x * s).sum(), (x, 2.0), (torch.tensor(1.0),))
    assert gs is None
    tg.assert_close(gx, torch.full((3,), 2.0))
    (g,) = tg.grad(lambda x: (x**2).sum(), x)
    tg.assert_close(g, 2 * x)


def test_jvp_matches_jacobian():
    A = tg.randn(3, 4, seed=5)
    f = Portable("sin_of_linear", A=A)
    x, t = tg.randn(4, seed=6), tg.randn(4, seed=7)
    _, jt = tg.jvp(f, (x,), (t,))
    tg.assert_close(jt, torch.cos(A @ x) * (A @ t))


def test_portable_counts_the_calls_that_were_forward_mode_passes():
    import torch.autograd.forward_ad as fwad

    A, x = tg.randn(3, 4, seed=8), tg.randn(4, seed=9)
    for how, forward in [
        (lambda f: torch.func.jacfwd(f)(x), 1),
        (lambda f: torch.func.jvp(f, (x,), (x,)), 1),
        (lambda f: torch.func.jacrev(f)(x), 0),
        (lambda f: f(x.clone().requires_grad_(True)).sum().backward(), 0),
        (lambda f: torch.func.vmap(torch.func.vjp(f, x)[1])(torch.eye(3, dtype=x.dtype)), 0),
    ]:
        f = Portable("sin_of_linear", A=A)
        how(f)
        assert (f.calls, f.pushforwards) == (1, forward)
    f = Portable("sin_of_linear", A=A)
    with fwad.dual_level():
        f(fwad.make_dual(x, torch.ones_like(x)))
    assert f.pushforwards == 1


def test_portable_counts_calls_and_rejects_unknown_names():
    f = Portable("matvec", A=torch.eye(2, dtype=torch.float64))
    f(torch.ones(2, dtype=torch.float64))
    f(torch.ones(2, dtype=torch.float64))
    assert f.calls == 2
    with pytest.raises(KeyError, match="known"):
        Portable("no_such_function")


def test_source_of_reads_function_source():
    assert "def test_source_of_reads_function_source" in tg.source_of(
        test_source_of_reads_function_source
    )


def test_source_of_finds_a_class_defined_in_a_notebook_cell():
    import linecache

    src = "class Cell:\n    @staticmethod\n    def forward(x):\n        return x\n"
    fname = "<ipython-input-7-0123456789ab>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    ns: dict = {"__name__": "__main__"}
    exec(compile(src, fname, "exec"), ns)
    assert tg.source_of(ns["Cell"]).startswith("class Cell:")
    with pytest.raises(tg.TestFailure, match="cannot read the source"):
        tg.source_of(int)


# --- side effects, observed where the function runs ---------------------------------------------


def _clean(x):
    return 2 * x


def _in_place(x):
    return x.mul_(2)


def _global_rng(x):
    return x + torch.randn(x.shape, dtype=x.dtype)


def _own_generator(x):
    g = torch.Generator().manual_seed(0)
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype)


def _touches_grad(x):
    x.requires_grad_(True)
    (x**2).sum().backward()
    return x.grad.detach().clone()


def test_call_checked_passes_a_clean_call_and_returns_its_result():
    x = tg.randn(4, seed=0)
    out = tg.call_checked(_clean, x)
    assert torch.equal(out, 2 * x)
    assert torch.equal(tg.call_checked(_own_generator, x), _own_generator(x))


def test_call_checked_catches_in_place_changes_of_inputs():
    x = tg.randn(4, seed=0)
    with pytest.raises(tg.TestFailure, match="changed the caller's X") as e:
        tg.call_checked(_in_place, x.clone(), names=["X"])
    assert e.value.kind == "check_failed"
    with pytest.raises(tg.TestFailure, match="requires_grad or .grad"):
        tg.call_checked(_touches_grad, x.clone())


def test_call_checked_catches_the_global_random_state():
    x = tg.randn(4, seed=0)
    with pytest.raises(tg.TestFailure, match="global random state"):
        tg.call_checked(_global_rng, x)
    out, effects = tg.call_observed(_global_rng, x)
    assert effects == {"rng_changed": True, "changed_inputs": []}
    assert out.shape == x.shape


def test_call_observed_goes_remote_through_the_vjp_channel():
    """A stand-in for a sandboxed name gets the request as a VJP with the marker cotangent; what
    the sandbox runs for it (testing.vjp) is the observed call."""

    class Stand:
        def __tg_vjp__(self, primals, cotangents):
            return tg.vjp(_in_place, primals, cotangents)

    x = tg.randn(3, seed=1)
    out, effects = tg.call_observed(Stand(), x.clone())
    assert effects["changed_inputs"] == [0] and not effects["rng_changed"]
    assert torch.equal(out, 2 * x)


def test_assert_python_float():
    assert tg.assert_python_float(1.5) == 1.5
    for bad in [torch.tensor(1.5), 1, True, None]:
        with pytest.raises(tg.TestFailure):
            tg.assert_python_float(bad)
