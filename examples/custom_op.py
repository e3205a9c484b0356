"""A user-defined op with its own gradient rule and Numba scalar body.

`gc.custom_op` declares a primitive the way graphc declares its own (`defop`): a numpy
reference (what the interpreter runs), a scalar body the code generator inlines into fused
Numba loops, and a gradient rule built from graph ops. Here: softplus(x) = log(1 + e^x),
computed stably as max(x, 0) + log(1 + e^-|x|), with d softplus / dx = sigmoid(x)
(graphc has it built in as `gc.softplus`; declared here as `user_softplus` to show how).

The script checks the gradient against central finite differences (float64), the
compiled value and gradient against the interpreter (float32 and float64), and trains a
small regression model whose hidden layer uses the op. Ends with `custom_op=ok`.

    python examples/custom_op.py
"""

from __future__ import annotations

import numpy as np

import graphc as gc

softplus = gc.custom_op(
    "user_softplus",
    ref=lambda x: np.logaddexp(x, x.dtype.type(0)),
    scalar="(({0} if {0} > {T}(0) else {T}(0)) + _log({T}(1) + _exp(-abs({0}))))",
    vjp=lambda g, out, x: g * gc.sigmoid(x),
)


def finite_difference_error(seed: int = 0) -> float:
    """Relative error of <grad, v> against (f(x + hv) - f(x - hv)) / 2h, in float64."""
    rng = np.random.default_rng(seed)
    g = gc.Graph("softplus_fd", dtype="float64")
    x = g.input("x", (None, 5))
    w = g.const(rng.standard_normal((1, 5)))
    f = gc.sum(softplus(x * 3.0) * w)
    grad = gc.grad(f, x)
    at, v, h = rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), 1e-6
    analytic = float(np.sum(gc.evaluate(grad, {"x": at}) * v))
    numeric = (gc.evaluate(f, {"x": at + h * v}) - gc.evaluate(f, {"x": at - h * v})) / (2 * h)
    # second order too: gc.grad of the gradient differentiates the vjp's graph ops
    hvp = gc.grad(gc.sum(grad * g.const(v)), x)
    hv_analytic = gc.evaluate(hvp, {"x": at})
    hv_numeric = (gc.evaluate(grad, {"x": at + h * v})
                  - gc.evaluate(grad, {"x": at - h * v})) / (2 * h)
    first = abs(analytic - numeric) / max(abs(numeric), 1e-12)
    second = float(np.max(np.abs(hv_analytic - hv_numeric)) / np.max(np.abs(hv_numeric)))
    return max(first, second)


def compiled_error(dtype: str, seed: int = 1) -> float:
    """Largest difference between the compiled program and the interpreter, relative to
    the values' scale: softplus and its gradient."""
    rng = np.random.default_rng(seed)
    g = gc.Graph("softplus_compiled", dtype=dtype)
    x = g.input("x", (None, 7))
    y = softplus(x * 4.0)
    dx = gc.grad(gc.sum(y * g.const(rng.standard_normal(7))), x)
    run = gc.compile([y, dx])
    feeds = {"x": rng.standard_normal((33, 7)).astype(dtype)}
    got, want = run(**feeds), gc.evaluate([y, dx], feeds)
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(got, want))


def train(seed: int = 0) -> float:
    """Fit y = sin(x) with a softplus hidden layer; returns the final mean squared error."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-3, 3, (512, 1)).astype(np.float32)
    ys = np.sin(xs)
    g = gc.Graph("softplus_net", seed=seed)
    x, y = g.input("x", (None, 1)), g.input("y", (None, 1))
    h = softplus(gc.nn.linear(x, 32, name="hidden", init="he"))
    loss = gc.mse(gc.nn.linear(h, 1, name="out"), y)
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=3e-2))
    for epoch in range(150):
        for xb, yb in gc.data.batches(xs, ys, 64, seed=epoch):
            step(x=xb, y=yb)
    return float(gc.evaluate(loss, {"x": xs, "y": ys}))


def main() -> None:
    fd = finite_difference_error()
    print(f"gradient vs central finite differences (float64, first and second order): "
          f"relative error {fd:.1e}")
    errors = {dt: compiled_error(dt) for dt in ("float32", "float64")}
    for dt, err in errors.items():
        print(f"compiled vs interpreter ({dt}): relative error {err:.1e}")
    mse = train()
    print(f"softplus network fitting sin(x): mean squared error {mse:.4f}")
    ok = fd < 1e-6 and errors["float32"] < 1e-5 and errors["float64"] < 1e-12 and mse < 0.005
    print(f"custom_op={'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
