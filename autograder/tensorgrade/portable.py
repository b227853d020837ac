"""Functions that a test can hand to student code, described by data only.

A test that needs to pass a function into the student's code (an operator K for a matrix-free
solver, an f whose Jacobian the student builds) uses ``Portable("name", **params)``. It is called
like a function and counts its calls. In the student's own kernel (public checks) it runs there.
In the trusted grader it crosses the boundary as an opaque handle: each evaluation in the sandbox
is asked of the judge, which computes it with its own torch and counts it, so a count a test
checks cannot be forged — no code and no parameters cross the boundary.

Add a function by decorating it with ``@register``; parameters must be data (tensors, numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

REGISTRY: dict[str, Callable[..., Any]] = {}


def register(fn: Callable[..., Any]) -> Callable[..., Any]:
    if fn.__name__ in REGISTRY:
        raise ValueError(f"portable function {fn.__name__!r} registered twice")
    REGISTRY[fn.__name__] = fn
    return fn


class Portable:
    """A registered function with bound parameters; ``calls`` counts how often it was called,
    ``pushforwards`` how many of those were forward-mode passes (``torch.func.jvp``, jacfwd,
    forward-AD dual tensors), so a test can tell which mode of differentiation reached it."""

    def __init__(self, name: str, **params: Any):
        if name not in REGISTRY:
            raise KeyError(f"no portable function {name!r}; known: {', '.join(sorted(REGISTRY))}")
        self.name = name
        self.params = params
        self.calls: float = 0  # NaN where the calls could not be counted (judge/proxy.py)
        self.pushforwards: float = 0  # counted by the judge too, from what it is asked

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if _forward_mode(args):
            self.pushforwards += 1
        return REGISTRY[self.name](*args, **kwargs, **self.params)

    def __repr__(self) -> str:
        return f"Portable({self.name!r})"


def _forward_mode(args: tuple) -> bool:
    """Whether a call is a forward-mode pass: under a ``torch.func.jvp`` transform (on functorch's
    stack of interpreters), or on a forward-AD dual tensor (``torch.autograd.forward_ad``)."""
    from torch._C._functorch import TransformType, is_functorch_wrapped_tensor
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    if any(i.key() == TransformType.Jvp for i in retrieve_all_functorch_interpreters()):
        return True
    import torch.autograd.forward_ad as fwad

    return any(
        isinstance(x, torch.Tensor)
        and not is_functorch_wrapped_tensor(x)
        and fwad.unpack_dual(x).tangent is not None
        for x in args
    )


# --- the registry ----------------------------------------------------------------------------------


@register
def matvec(x: torch.Tensor, *, A: torch.Tensor) -> torch.Tensor:
    """x -> A x (batched over leading axes of x), in the dtype and device of x."""
    return x @ A.to(dtype=x.dtype, device=x.device).mT


@register
def sin_of_linear(x: torch.Tensor, *, A: torch.Tensor) -> torch.Tensor:
    """x -> sin(A x): a smooth nonlinear map R^n -> R^m with Jacobian diag(cos(A x)) A."""
    return torch.sin(x @ A.to(dtype=x.dtype, device=x.device).mT)


@register
def quadratic_form(x: torch.Tensor, *, A: torch.Tensor) -> torch.Tensor:
    """x -> x^T A x / 2 (a scalar): gradient (A + A^T) x / 2, Hessian (A + A^T) / 2."""
    A = A.to(dtype=x.dtype, device=x.device)
    return 0.5 * (x * (A @ x)).sum()


@register
def rosenbrock(x: torch.Tensor, *, a: float = 100.0) -> torch.Tensor:
    """The chained Rosenbrock function sum_i a (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 (a scalar)."""
    return (a * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


@register
def tanh_chain(x: torch.Tensor, *, W: torch.Tensor) -> torch.Tensor:
    """x -> tanh(W[L-1] ... tanh(W[0] x)): a deep chain of L layers, W of shape (L, n, n)."""
    W = W.to(dtype=x.dtype, device=x.device)
    for k in range(W.shape[0]):
        x = torch.tanh(x @ W[k].mT)
    return x


@register
def gated_chain(x: torch.Tensor, *, W: torch.Tensor) -> torch.Tensor:
    """x -> x_L with x_{k+1} = x_k * tanh(W[k] x_k): each layer saves its tanh twice (once for
    each factor's gradient), so the tensors saved for backward are not all distinct storages."""
    W = W.to(dtype=x.dtype, device=x.device)
    for k in range(W.shape[0]):
        x = x * torch.tanh(x @ W[k].mT)
    return x


# --- Assignment 3 (inverse problems) ----------------------------------------------------------------


@register
def convolve1d(x: torch.Tensor, *, kernel: torch.Tensor) -> torch.Tensor:
    """x -> K x: zero-boundary convolution along the last axis, (K x)_i = sum_j k[i - j + r] x_j.

    ``kernel`` has odd length 2r + 1 and need not be symmetric (so K differs from K^T). Batched over
    the leading axes of x; dtype and device follow x; differentiable (its VJP applies K^T).
    """
    k = kernel.to(dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    y = torch.nn.functional.conv1d(
        x.reshape(-1, 1, x.shape[-1]), k.flip(-1).reshape(1, 1, -1), padding=r
    )
    return y.reshape(x.shape)
