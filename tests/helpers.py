"""Shared test utilities: central finite differences and gradient checks against them.

Everything works on float64 numpy arrays (or sequences of them, for functions of several
arrays). Error model of a central difference (f(x+hv) - f(x-hv)) / 2h in float64:
truncation ~ h**2 * |f'''| / 6 and rounding ~ eps * |f| / h (eps = 2.2e-16). With the
default h = 1e-6 both are ~1e-10 relative for well-scaled functions of O(1)...O(10) values,
so analytic and numeric derivatives agree to ~1e-8 relative or better; the tolerances used
with these helpers leave about one decimal digit of margin above what the op table in
tests/test_ops.py measured over 10 data seeds (first order 5e-9, second order 2.8e-9).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

import graphc as gc

Arrays = np.ndarray | Sequence[np.ndarray]

DEFAULT_H = 1e-6
# Relative to the natural scale of a directional derivative (sum |g_i v_i|): measured worst
# case over the op table 5e-9, so 5e-8 keeps 10x margin (a wrong gradient rule is off by
# O(1) relative, a wrong constant factor by >= 1e-3).
DEFAULT_RTOL = 5e-8
# Absolute floor for tiny directional derivatives: the rounding noise of the FD quotient
# itself is ~eps * |f| / h = 2.2e-10 * |f|, i.e. ~1e-9 for |f| ~ 5.
DEFAULT_ATOL = 1e-9
# Second order (Hessian-vector products), relative to max|H u|: measured 2.8e-9.
HVP_RTOL = 3e-8
HVP_ATOL = 1e-10


def _as_list(x: Arrays) -> tuple[list[np.ndarray], bool]:
    if isinstance(x, np.ndarray):
        return [x], True
    return [np.asarray(a) for a in x], False


def _axpy(x: list[np.ndarray], v: list[np.ndarray], t: float) -> list[np.ndarray]:
    return [xi + t * vi for xi, vi in zip(x, v)]


def numeric_directional_derivative(f: Callable[..., Any], x: Arrays, v: Arrays,
                                   h: float = DEFAULT_H) -> float:
    """(f(x + h v) - f(x - h v)) / 2h for a scalar function `f` of one array (or of a
    sequence of arrays, called as f(*arrays)) along direction `v` (same structure as x)."""
    xs, single = _as_list(x)
    vs, _ = _as_list(v)
    call = (lambda arrs: f(arrs[0])) if single else (lambda arrs: f(*arrs))
    plus = float(call(_axpy(xs, vs, h)))
    minus = float(call(_axpy(xs, vs, -h)))
    return (plus - minus) / (2.0 * h)


def numeric_directional_jacobian(f: Callable[..., Any], x: Arrays, v: Arrays,
                                 h: float = DEFAULT_H) -> list[np.ndarray]:
    """Central difference of an array-valued (or list-of-arrays-valued) `f` along `v`:
    (f(x + h v) - f(x - h v)) / 2h, elementwise. For f = gradient this is a Hessian-vector
    product."""
    xs, single = _as_list(x)
    vs, _ = _as_list(v)
    call = (lambda arrs: f(arrs[0])) if single else (lambda arrs: f(*arrs))
    plus, _ = _as_list(call(_axpy(xs, vs, h)))
    minus, _ = _as_list(call(_axpy(xs, vs, -h)))
    return [(p - m) / (2.0 * h) for p, m in zip(plus, minus)]


def numeric_gradient(f: Callable[[np.ndarray], Any], x: np.ndarray,
                     h: float = DEFAULT_H) -> np.ndarray:
    """Full central-difference gradient of scalar f at x (one evaluation pair per element;
    for small arrays only)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = 1.0
        out[i] = numeric_directional_derivative(f, x, e, h)
    return out


def inner(a: Arrays, b: Arrays) -> float:
    """sum_i <a_i, b_i> over matching arrays."""
    al, _ = _as_list(a)
    bl, _ = _as_list(b)
    return float(sum(np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64))
                     for x, y in zip(al, bl)))


def directional_scale(grads: Arrays, v: Arrays) -> float:
    """sum |g_i v_i|: the size of the terms of <g, v>, the scale an error is relative to
    (robust when <g, v> itself cancels to ~0)."""
    gl, _ = _as_list(grads)
    vl, _ = _as_list(v)
    return float(sum(np.sum(np.abs(np.asarray(g, np.float64) * y)) for g, y in zip(gl, vl)))


def assert_directional_match(analytic: float, numeric: float, scale: float, *,
                             rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                             what: str = "") -> None:
    """|analytic - numeric| <= rtol * scale + atol, with a readable failure message."""
    err = abs(analytic - numeric)
    bound = rtol * scale + atol
    assert err <= bound, (f"{what}: analytic {analytic!r} vs finite difference {numeric!r}: "
                          f"error {err:.3e} > {bound:.3e} (scale {scale:.3e})")


def assert_arrays_match(actual: Arrays, expected: Arrays, *, rtol: float, atol: float,
                        what: str = "") -> None:
    """Each actual array within rtol * max|expected| + atol of the expected one (a norm-wise
    bound: finite differences carry error relative to the largest entry, not each entry)."""
    al, _ = _as_list(actual)
    el, _ = _as_list(expected)
    assert len(al) == len(el), f"{what}: {len(al)} arrays vs {len(el)} expected"
    for k, (a, e) in enumerate(zip(al, el)):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        assert a.shape == e.shape, f"{what}[{k}]: shape {a.shape} vs expected {e.shape}"
        err = float(np.max(np.abs(a - e), initial=0.0))
        bound = rtol * float(np.max(np.abs(e), initial=0.0)) + atol
        assert err <= bound, f"{what}[{k}]: max error {err:.3e} > {bound:.3e}\n{a}\nvs\n{e}"


def random_like(rng: np.random.Generator, arrays: Arrays) -> list[np.ndarray]:
    """Standard-normal float64 arrays shaped like `arrays` (random directions)."""
    al, _ = _as_list(arrays)
    return [rng.standard_normal(np.shape(a)) for a in al]


def evaluate_at(outputs: Any, values: Sequence[gc.Value], arrays: Sequence[np.ndarray],
                fixed: Mapping[str, Any] | None = None) -> Any:
    """gc.evaluate(outputs) with `values` (inputs or parameters) set to `arrays`: inputs
    are fed, parameters temporarily replaced in the graph's storage (then restored)."""
    feeds = dict(fixed or {})
    saved: dict[str, np.ndarray] = {}
    storage = values[0].graph.param_values if values else {}
    try:
        for v, a in zip(values, arrays):
            if v.op == "param":
                saved.setdefault(v.name, storage[v.name])
                storage[v.name] = np.asarray(a, dtype=v.dtype)
            elif v.op == "input":
                feeds[v.name] = a
            else:
                raise ValueError(f"can only set inputs and parameters, not {v!r}")
        return gc.evaluate(outputs, feeds)
    finally:
        storage.update(saved)


def evaluator(outputs: Any, values: Sequence[gc.Value],
              fixed: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """A numpy function of the arrays given to `values` (inputs or parameters; other
    inputs fixed) computing `outputs`."""
    def call(*arrays: np.ndarray) -> Any:
        return evaluate_at(outputs, values, arrays, fixed)
    return call


def check_grad_fd(f: gc.Value, wrt: Sequence[gc.Value], at: Sequence[np.ndarray],
                  rng: np.random.Generator, *, fixed: Mapping[str, Any] | None = None,
                  h: float = DEFAULT_H, rtol: float = DEFAULT_RTOL,
                  atol: float = DEFAULT_ATOL, what: str = "") -> list[np.ndarray]:
    """Check gc.grad(f, wrt) at the point `at` (arrays for the inputs/params `wrt`; other
    inputs from `fixed`) against a central difference along a random direction; returns
    the evaluated gradients."""
    grads = gc.grad(f, list(wrt))
    g_values = evaluate_at(grads, wrt, at, fixed)
    for gv, x in zip(g_values, at):
        assert np.shape(gv) == np.shape(x), f"{what}: gradient shape {np.shape(gv)} vs {x.shape}"
    v = random_like(rng, at)
    numeric = numeric_directional_derivative(evaluator(f, wrt, fixed), list(at), v, h)
    assert_directional_match(inner(g_values, v), numeric, directional_scale(g_values, v),
                             rtol=rtol, atol=atol, what=what)
    return g_values


def check_hvp_fd(f: gc.Value, wrt: Sequence[gc.Value], at: Sequence[np.ndarray],
                 rng: np.random.Generator, *, fixed: Mapping[str, Any] | None = None,
                 h: float = DEFAULT_H, rtol: float = HVP_RTOL, atol: float = HVP_ATOL,
                 what: str = "") -> None:
    """Second order: the Hessian-vector product built by differentiating <gc.grad(f), u>
    (u constant) again, against the central difference of the gradient along u.

    The gradient is itself an O(1) float64 quantity, so the same ~1e-9 FD accuracy applies,
    but errors are now compared entry-wise against the largest entry of H u (norm-wise)."""
    graph = f.graph
    grads = gc.grad(f, list(wrt))
    u = random_like(rng, at)
    directional = gc.sum(grads[0] * graph.const(u[0]))
    for gi, ui in zip(grads[1:], u[1:]):
        directional = directional + gc.sum(gi * graph.const(ui))
    hvp = gc.grad(directional, list(wrt))
    analytic = evaluate_at(hvp, wrt, at, fixed)
    numeric = numeric_directional_jacobian(evaluator(grads, wrt, fixed), list(at), u, h)
    assert_arrays_match(analytic, numeric, rtol=rtol, atol=atol, what=what)


def here(depth: int = 1) -> str:
    """`file:line` of the caller (or of a frame further out), as graphc reports locations."""
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def short(where: str) -> str:
    """`basename:line` of a `path:line` location."""
    path, _, line = where.rpartition(":")
    return f"{os.path.basename(path)}:{line}"
