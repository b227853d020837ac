"""Helpers that public and hidden tests use to check a student's answer.

Tests reach the student's work only through their parameters and compare with these helpers, never
with a bare ``torch.allclose`` default. The same test body then runs in the student's kernel (public
feedback) and in the grader. Messages say what was wrong (shape, dtype, device, size of the error)
but never print expected values, so hidden tests leak nothing through their feedback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "TestFailure",
    "tolerance",
    "generator",
    "randn",
    "rand",
    "devices",
    "default_device",
    "to64",
    "check_tensor",
    "assert_close",
    "assert_scalar_close",
    "assert_same_placement",
    "vjp",
    "jvp",
    "grad",
    "fd_vjp",
    "check_vjp",
    "source_of",
    "call_observed",
    "call_checked",
    "assert_python_float",
]

# Relative accuracy a careful implementation reaches on a well-conditioned problem, per dtype.
# Measured on CPU and H200 (TF32 off): float32 errors of a few ulp grow with problem size, so the
# float32 value leaves room for sums over ~1e4 terms.
_BASE_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.complex128: 1e-10,
    torch.complex64: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}


class TestFailure(AssertionError):
    """A failed check; its message is written for the student.

    ``kind`` names the class of failure (``tensorgrade.results.FAILURES``): the grader records it
    as data and shows a failed hidden test only as that class's fixed sentence.
    """

    def __init__(self, message: str = "", kind: str = "check_failed"):
        super().__init__(message)
        self.kind = kind


def tolerance(dtype: torch.dtype, cond: float = 1.0) -> float:
    """Relative tolerance for results computed in ``dtype`` on a problem of condition ``cond``.

    Errors grow with the conditioning of the problem, so tests pass the condition number (or a
    bound) instead of inventing a tolerance per test.
    """
    if dtype not in _BASE_RTOL:
        raise ValueError(f"no tolerance defined for dtype {dtype}")
    return _BASE_RTOL[dtype] * max(1.0, float(cond))


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A seeded generator, so that a test draws the same inputs in every regrade."""
    return torch.Generator(device=device).manual_seed(int(seed))


def randn(
    *shape: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Standard normal samples drawn on the CPU from ``seed``, then moved: same values on any device."""
    return _draw(torch.randn, shape, seed, dtype, device)


def rand(
    *shape: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Uniform [0, 1) samples drawn on the CPU from ``seed``, then moved."""
    return _draw(torch.rand, shape, seed, dtype, device)


def _draw(sampler, shape, seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    x = sampler(*shape, generator=generator(seed), dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def devices() -> list[str]:
    """Devices a test should try: the CPU, and CUDA when present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def default_device() -> str:
    """CUDA when present, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def to64(x: torch.Tensor) -> torch.Tensor:
    """A float64 (or complex128) CPU copy, for references and error measurement."""
    if x.is_complex():
        return x.detach().to(device="cpu", dtype=torch.complex128)
    return x.detach().to(device="cpu", dtype=torch.float64)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def check_tensor(
    actual: Any,
    *,
    shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    what: str = "the result",
) -> torch.Tensor:
    """Check that ``actual`` is a plain tensor with the given shape, dtype and device.

    Subclasses are refused: a subclass can redefine comparisons and so fake a pass.
    """
    if actual is None:
        raise TestFailure(f"{what} is None: did you forget to `return` it?", "no_result")
    if actual is Ellipsis:
        raise TestFailure(f"{what} is `...`: the blank is not filled in yet", "no_result")
    if type(actual) is not torch.Tensor:
        raise TestFailure(
            f"{what} should be a torch.Tensor, got {type(actual).__name__}", "wrong_type"
        )
    if shape is not None and tuple(actual.shape) != tuple(shape):
        raise TestFailure(
            f"{what} has shape {_fmt_shape(actual.shape)}, expected {_fmt_shape(shape)}",
            "wrong_shape",
        )
    if dtype is not None and actual.dtype != dtype:
        raise TestFailure(f"{what} has dtype {actual.dtype}, expected {dtype}", "wrong_dtype")
    if device is not None and actual.device.type != torch.device(device).type:
        raise TestFailure(
            f"{what} is on device '{actual.device.type}', expected '{torch.device(device).type}'"
            " (keep the device of the inputs)",
            "wrong_device",
        )
    return actual


def assert_same_placement(actual: Any, like: torch.Tensor, what: str = "the result") -> None:
    """The result must keep the dtype and device of ``like`` (usually the main input)."""
    check_tensor(actual, dtype=like.dtype, device=like.device, what=what)


def assert_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    cond: float = 1.0,
    rtol: float | None = None,
    check_dtype: bool = True,
    check_device: bool = True,
    what: str = "the result",
) -> None:
    """Compare ``actual`` with a reference, norm-wise, with a tolerance that knows the dtype.

    The error is measured in float64 as ``max|a - e| / max(max|e|, tiny)``, so that entries near zero
    don't need their own absolute tolerance. On failure the message gives the size of the error and
    where it is largest, never the expected values.
    """
    actual = check_tensor(
        actual,
        shape=tuple(expected.shape),
        dtype=expected.dtype if check_dtype else None,
        device=expected.device if check_device else None,
        what=what,
    )
    if actual.is_complex() != expected.is_complex():
        kind = "complex" if expected.is_complex() else "real"
        raise TestFailure(f"{what} should be {kind}, got dtype {actual.dtype}", "wrong_dtype")
    a, e = to64(actual), to64(expected)
    if not bool(torch.isfinite(a).all()):
        bad = int((~torch.isfinite(a)).sum())
        raise TestFailure(f"{what} contains {bad} NaN or infinite value(s)", "not_finite")
    tol = rtol if rtol is not None else tolerance(actual.dtype, cond)
    if a.numel() == 0:
        return
    diff = (a - e).abs()
    scale = max(float(e.abs().max()), 1e-300)
    err = float(diff.max()) / scale
    if not err <= tol:
        idx = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        where = f" at index {idx}" if idx else ""
        raise TestFailure(
            f"{what} is not accurate enough: relative error {err:.2e}{where}, "
            f"allowed {tol:.1e} for {actual.dtype}",
            "wrong_value",
        )


def assert_scalar_close(
    actual: Any, expected: float, *, rtol: float = 1e-8, what: str = "the result"
) -> None:
    """Compare a Python number (or 0-d tensor) with a reference value."""
    if isinstance(actual, torch.Tensor):
        if type(actual) is not torch.Tensor or actual.numel() != 1:
            raise TestFailure(f"{what} should be a single number", "wrong_type")
        actual = actual.item()
    if actual is None or actual is Ellipsis:
        raise TestFailure(f"{what} is missing: fill in the blank and `return` it", "no_result")
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        raise TestFailure(f"{what} should be a number, got {type(actual).__name__}", "wrong_type")
    if not math.isfinite(actual):
        raise TestFailure(f"{what} is {actual}", "not_finite")
    err = abs(float(actual) - float(expected)) / max(abs(float(expected)), 1e-300)
    if not err <= rtol:
        raise TestFailure(
            f"{what} is off by a relative error of {err:.2e} (allowed {rtol:.1e})", "wrong_value"
        )


# --- autograd helpers ------------------------------------------------------------------------------
# One test body runs in the student's kernel (``fn`` is the student's function) and in the trusted
# grader (``fn`` is a stand-in that forwards calls to the sandbox). Stand-ins implement
# ``__tg_vjp__``/``__tg_jvp__``; plain callables are differentiated here.


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _needs_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


def vjp(
    fn: Any, primals: Any, cotangents: Any, wrt: Sequence[int] | None = None
) -> tuple[Any, Any]:
    """``(fn(*primals), J^T v)`` by reverse mode (``.backward``), with ``None`` for inputs that
    are not floating tensors or that the output does not depend on.

    ``wrt``: the positions of the inputs that require grad (default: every floating tensor); the
    others are passed as plain tensors, as a caller's constant would be, and get ``None``. Fails
    the test (``check_failed``) if the backward changed a cotangent in place: autograd may hand
    the same tensor to other nodes of a larger graph."""
    primals, cotangents = _as_tuple(primals), _as_tuple(cotangents)
    remote = getattr(fn, "__tg_vjp__", None)
    if remote is not None:
        return remote(primals, cotangents) if wrt is None else remote(primals, cotangents, wrt)
    if len(cotangents) == 1 and isinstance(cotangents[0], str) and cotangents[0] == _OBSERVE:
        return _observed_call(fn, primals)
    chosen = range(len(primals)) if wrt is None else {int(i) for i in wrt}
    needs = [i in chosen and _needs_grad(p) for i, p in enumerate(primals)]
    xs = [
        p.detach().clone().requires_grad_(n) if isinstance(p, torch.Tensor) else p
        for p, n in zip(primals, needs, strict=True)
    ]
    out = fn(*xs)
    outs = _as_tuple(out)
    inputs = [x for x, n in zip(xs, needs, strict=True) if n]
    pairs = [
        (o, c.to(dtype=o.dtype, device=o.device))
        for o, c in zip(outs, cotangents, strict=False)
        if isinstance(o, torch.Tensor) and o.requires_grad
    ]
    given = [c.detach().clone() for _, c in pairs]
    grads: tuple[torch.Tensor | None, ...]
    if pairs and inputs:
        grads = torch.autograd.grad(
            [o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True
        )
    else:
        grads = (None,) * len(inputs)
    if any(not _same(c, g) for (_, c), g in zip(pairs, given, strict=True)):
        raise TestFailure(
            "the backward changed its grad_output (the cotangent it was given) in place: autograd "
            "may hand the same tensor to other parts of a graph; compute a new tensor instead",
            "check_failed",
        )
    it = iter(grads)
    full = tuple(next(it) if n else None for n in needs)
    detached = tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in outs)
    return (detached if isinstance(out, (tuple, list)) else detached[0]), full


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN (a cotangent may hold NaN on purpose)."""
    return a.shape == b.shape and bool(torch.all((a == b) | (a.isnan() & b.isnan())))


def jvp(fn: Any, primals: Any, tangents: Any) -> tuple[Any, Any]:
    """``(fn(*primals), J t)`` by forward mode (``torch.func.jvp``)."""
    primals, tangents = _as_tuple(primals), _as_tuple(tangents)
    remote = getattr(fn, "__tg_jvp__", None)
    if remote is not None:
        return remote(primals, tangents)
    out = torch.func.jvp(fn, primals, tangents)
    return out[0], out[1]


def grad(fn: Any, *inputs: Any) -> tuple:
    """Gradient of a scalar-valued ``fn`` with respect to each input (``None`` where none)."""
    out, grads = vjp(fn, inputs, (torch.ones((), dtype=torch.float64),))
    del out
    return grads


# --- side effects -----------------------------------------------------------------------------------
# A call whose side effects are observed where the function runs: in the student's kernel for
# public checks, in the sandbox in the grader. The request travels as a VJP whose cotangent is this
# marker (the sandbox runs ``testing.vjp`` for it), so no new message is needed; what comes back is
# data: the result and a report of what changed.
_OBSERVE = "__tensorgrade_observe_side_effects__"


def _observed_call(fn: Any, args: tuple) -> tuple[Any, dict]:
    tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    before = [(i, a.detach().clone(), a.requires_grad, a.grad) for i, a in tensors]
    grads_before = [None if g is None else g.detach().clone() for _, _, _, g in before]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    out = fn(*args)
    changed = []
    for (i, old, req, _), g0 in zip(before, grads_before, strict=True):
        a = args[i]
        g = a.grad
        same_grad = (g is None and g0 is None) or (
            g is not None and g0 is not None and torch.equal(g.detach(), g0)
        )
        same = (
            a.shape == old.shape
            and a.dtype == old.dtype
            and torch.equal(a.detach(), old)
            and a.requires_grad == req
            and same_grad
        )
        if not same:
            changed.append(i)
    rng_changed = not torch.equal(rng, torch.get_rng_state())
    if cuda_rng is not None:
        after = torch.cuda.get_rng_state_all()
        rng_changed = rng_changed or any(
            not torch.equal(x, y) for x, y in zip(cuda_rng, after, strict=False)
        )
    return out, {"rng_changed": bool(rng_changed), "changed_inputs": changed}


def call_observed(fn: Any, *args: Any) -> tuple[Any, dict]:
    """``(fn(*args), effects)``: the call runs where ``fn`` lives (the sandbox in the grader),
    which reports whether it changed the global random state (``effects["rng_changed"]``) and
    which positional inputs it changed: values, ``requires_grad`` or ``.grad``
    (``effects["changed_inputs"]``, their positions)."""
    out, effects = vjp(fn, args, (_OBSERVE,))
    if not isinstance(effects, dict):
        raise TestFailure("the call could not be observed", "check_failed")
    return out, effects


def call_checked(fn: Any, *args: Any, names: Sequence[str] = (), what: str = "the function") -> Any:
    """``fn(*args)``, failing the test if the call touched the global random state or changed
    one of its tensor inputs (values, ``requires_grad`` or ``.grad``). ``names`` names the
    positional inputs for the message."""
    out, effects = call_observed(fn, *args)
    if effects.get("rng_changed"):
        raise TestFailure(
            f"{what} changed the global random state (torch.manual_seed, torch.randn without a "
            "generator...): use a torch.Generator of your own",
            "check_failed",
        )
    changed = effects.get("changed_inputs") or []
    if changed:
        labels = [names[i] if i < len(names) else f"input {i}" for i in changed]
        raise TestFailure(
            f"{what} changed the caller's {', '.join(labels)} (values, requires_grad or .grad): "
            "work on a copy, never in place on an input",
            "check_failed",
        )
    return out


def assert_python_float(actual: Any, what: str = "the result") -> float:
    """The result must be a Python ``float`` (not a 0-d tensor, not an int)."""
    if actual is None or actual is Ellipsis:
        raise TestFailure(f"{what} is missing: fill in the blank and `return` it", "no_result")
    if type(actual) is not float:
        raise TestFailure(
            f"{what} should be a Python float (use float(...) or .item()), got "
            f"{type(actual).__name__}",
            "wrong_type",
        )
    return actual


def fd_vjp(
    fn: Callable[..., Any], primals: tuple, cotangent: torch.Tensor, *, eps: float = 1e-6
) -> tuple:
    """``J^T v`` by central finite differences from forward calls only, in float64.

    The grader computes this itself, so a wrong backward cannot also fake the reference.
    """
    primals = tuple(p.detach().to(torch.float64) if _needs_grad(p) else p for p in primals)
    v = to64(cotangent)
    result: list[torch.Tensor | None] = []
    for k, p in enumerate(primals):
        if not _needs_grad(p):
            result.append(None)
            continue
        g = torch.zeros(p.numel(), dtype=torch.float64)
        for i in range(p.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                q = p.clone().reshape(-1)
                q[i] += sign * eps
                args = list(primals)
                args[k] = q.reshape(p.shape)
                shifted.append(to64(_as_tuple(fn(*args))[0]))
            g[i] = float(((shifted[0] - shifted[1]) / (2 * eps) * v).sum())
        result.append(g.reshape(p.shape))
    return tuple(result)


def check_vjp(
    fn: Any, primals: tuple, *, seed: int = 0, rtol: float = 1e-6, what: str = "the gradient"
) -> None:
    """Trusted gradient check: the function's own backward against finite differences (float64)."""
    primals = tuple(p.detach().to(torch.float64) if _needs_grad(p) else p for p in primals)
    out = fn(*primals)
    first = _as_tuple(out)[0]
    check_tensor(first, what="the output")
    v = randn(*first.shape, seed=seed)
    _, got = vjp(fn, primals, (v,))
    want = fd_vjp(fn, primals, v)
    for i, (gg, ww) in enumerate(zip(got, want, strict=True)):
        if ww is None:
            continue
        assert_close(gg, ww, rtol=rtol, check_device=False, what=f"{what} for input {i}")


def source_of(obj: Any) -> str:
    """The student's source code for a function or class, for static checks with ``ast``.

    In the grader the stand-in answers from the submitted notebook's text; nothing is executed.
    Parse the result with ``ast``; never ``exec`` it.
    """
    remote = getattr(obj, "__tg_source__", None)
    if remote is not None:
        return remote()
    import inspect

    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        pass
    if isinstance(obj, type):  # a class from a notebook cell: find it through one of its methods
        src = _class_source_from_methods(obj)
        if src is not None:
            return src
    raise TestFailure(f"cannot read the source of {getattr(obj, '__name__', obj)!r}", "not_defined")


def _class_source_from_methods(cls: type) -> str | None:
    import ast
    import linecache

    for member in vars(cls).values():
        func = getattr(member, "__func__", member)
        code = getattr(func, "__code__", None)
        if code is None:
            continue
        text = "".join(linecache.getlines(code.co_filename))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                return ast.get_source_segment(text, node)
    return None
