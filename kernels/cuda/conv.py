"""2-D convolution and pooling for the CUDA target (NCHW), as source templates per dtype:
the CUDA twins of kernels/cpu/conv.py and kernels/cpu/pool.py, same names and semantics.

Direct loops, one thread per element of the result (grid-stride), each summing its terms in
a fixed order: no atomics, so results are reproducible. Gradients are written in gather
form (each input pixel walks the windows that cover it), never as scatters:

    conv2d              out[n, o, i, j]  = sum_{c, a, b} x[n, c, i*sh+a-ph, j*sw+b-pw] w[o, c, a, b]
    conv2d_grad_input   dx[n, c, y, x]   = sum_{o, a, b} g[n, o, i, j] w[o, c, a, b]
                                           over (i, j) with i*sh+a-ph = y, j*sw+b-pw = x
    conv2d_grad_weight  dw[o, c, a, b]   = sum_{n, i, j} x[n, c, i*sh+a-ph, j*sw+b-pw] g[n, o, i, j]
    max_pool2d          window maxima (NaN propagates)
    max_pool2d_grad     dx[y, x] = sum of g over the windows whose first maximum (row-major,
                        NaN first) is (y, x), windows in row-major order: the CPU's order
    max_pool2d_gather   h read at each window's first maximum of x
    avg_pool2d          window means (sum, then times 1 / (kh*kw))
    avg_pool2d_grad     dx[y, x] = sum over covering windows of g * (1 / (kh*kw))

Operand `x` is read through its buffer `x_`, offset `x_o` and strides `x_s0..x_s3`; the
result `out` is dense.
The runtime passes parameters by name (see `params`).
"""

from __future__ import annotations

from graphc.kernels.cuda.common import CTOR, DECORATOR, Param

_OPERANDS = {
    "conv2d": ("x", "k"), "conv2d_grad_input": ("g", "k"), "conv2d_grad_weight": ("x", "g"),
    "max_pool2d": ("x",), "max_pool2d_grad": ("g", "x"), "max_pool2d_gather": ("h", "x"),
    "avg_pool2d": ("x",), "avg_pool2d_grad": ("g",),
}

# Integer parameters of each kernel, before its operands (names the runtime fills in).
_SIZES = {
    "conv2d": "n o ho wo c h w kh kw sh sw ph pw",
    "conv2d_grad_input": "n c h w o ho wo kh kw sh sw ph pw",
    "conv2d_grad_weight": "o c kh kw n h w ho wo sh sw ph pw",
    "max_pool2d": "n c ho wo kh kw sh sw",
    "max_pool2d_grad": "n c h w ho wo kh kw sh sw",
    "max_pool2d_gather": "n c ho wo kh kw sh sw",
    "avg_pool2d": "n c ho wo kh kw sh sw",
    "avg_pool2d_grad": "n c h w ho wo kh kw sh sw",
}

# The result's four axes, outermost first, as unravelled from the thread's index `t`.
_RESULT = {
    "conv2d": ("b_", "oc", "i", "j", "n o ho wo"),
    "conv2d_grad_input": ("b_", "ci", "y", "xx", "n c h w"),
    "conv2d_grad_weight": ("oc", "ci", "a", "bb", "o c kh kw"),
    "max_pool2d": ("b_", "ci", "i", "j", "n c ho wo"),
    "max_pool2d_grad": ("b_", "ci", "y", "xx", "n c h w"),
    "max_pool2d_gather": ("b_", "ci", "i", "j", "n c ho wo"),
    "avg_pool2d": ("b_", "ci", "i", "j", "n c ho wo"),
    "avg_pool2d_grad": ("b_", "ci", "y", "xx", "n c h w"),
}


def _at(name: str, *index: str) -> str:
    terms = " + ".join(f"({i}) * {name}_s{k}" if " " in i else f"{i} * {name}_s{k}"
                       for k, i in enumerate(index))
    return f"{name}_[{name}_o + {terms}]"


def _argmax(x: str, indent: str) -> list[str]:
    """ay, ax: the first maximum (or first NaN) of the window at (i*sh, j*sw) of x."""
    return [f"{indent}y0 = i * sh",
            f"{indent}x0 = j * sw",
            f"{indent}best = {_at(x, 'b_', 'ci', 'y0', 'x0')}",
            f"{indent}ay = y0",
            f"{indent}ax = x0",
            f"{indent}for a in range(kh):",
            f"{indent}    for bb in range(kw):",
            f"{indent}        v = {_at(x, 'b_', 'ci', 'y0 + a', 'x0 + bb')}",
            f"{indent}        if v > best or (v != v and best == best):",
            f"{indent}            best = v",
            f"{indent}            ay = y0 + a",
            f"{indent}            ax = x0 + bb"]


def _covering(indent: str) -> list[str]:
    """Loops over the windows (i, j), row-major, whose kh x kw box covers pixel (y, xx)."""
    return [f"{indent}q = y - kh + 1",
            f"{indent}i_lo = 0 if q <= 0 else (q + sh - 1) // sh",
            f"{indent}i_hi = min(ho - 1, y // sh)",
            f"{indent}q = xx - kw + 1",
            f"{indent}j_lo = 0 if q <= 0 else (q + sw - 1) // sw",
            f"{indent}j_hi = min(wo - 1, xx // sw)",
            f"{indent}for i in range(i_lo, i_hi + 1):",
            f"{indent}    for j in range(j_lo, j_hi + 1):"]


def _body(op: str, dt: str) -> list[str]:
    e = " " * 8
    if op == "conv2d":
        return [f"{e}acc = {dt}(0)",
                f"{e}for ci in range(c):",
                f"{e}    for a in range(kh):",
                f"{e}        y = i * sh + a - ph",
                f"{e}        if y >= 0 and y < h:",
                f"{e}            for bb in range(kw):",
                f"{e}                xx = j * sw + bb - pw",
                f"{e}                if xx >= 0 and xx < w:",
                f"{e}                    acc += {_at('x', 'b_', 'ci', 'y', 'xx')} * "
                f"{_at('k', 'oc', 'ci', 'a', 'bb')}",
                f"{e}out[t] = acc"]
    if op == "conv2d_grad_input":
        return [f"{e}acc = {dt}(0)",
                f"{e}for oc in range(o):",
                f"{e}    for a in range(kh):",
                f"{e}        ty = y + ph - a",
                f"{e}        if ty >= 0 and ty % sh == 0 and ty // sh < ho:",
                f"{e}            i = ty // sh",
                f"{e}            for bb in range(kw):",
                f"{e}                tx = xx + pw - bb",
                f"{e}                if tx >= 0 and tx % sw == 0 and tx // sw < wo:",
                f"{e}                    j = tx // sw",
                f"{e}                    acc += {_at('g', 'b_', 'oc', 'i', 'j')} * "
                f"{_at('k', 'oc', 'ci', 'a', 'bb')}",
                f"{e}out[t] = acc"]
    if op == "conv2d_grad_weight":
        return [f"{e}acc = {dt}(0)",
                f"{e}for b_ in range(n):",
                f"{e}    for i in range(ho):",
                f"{e}        y = i * sh + a - ph",
                f"{e}        if y >= 0 and y < h:",
                f"{e}            for j in range(wo):",
                f"{e}                xx = j * sw + bb - pw",
                f"{e}                if xx >= 0 and xx < w:",
                f"{e}                    acc += {_at('x', 'b_', 'ci', 'y', 'xx')} * "
                f"{_at('g', 'b_', 'oc', 'i', 'j')}",
                f"{e}out[t] = acc"]
    if op == "max_pool2d":
        return [f"{e}y0 = i * sh",
                f"{e}x0 = j * sw",
                f"{e}best = {_at('x', 'b_', 'ci', 'y0', 'x0')}",
                f"{e}for a in range(kh):",
                f"{e}    for bb in range(kw):",
                f"{e}        v = {_at('x', 'b_', 'ci', 'y0 + a', 'x0 + bb')}",
                f"{e}        if v > best or v != v:",
                f"{e}            best = v",
                f"{e}out[t] = best"]
    if op == "max_pool2d_grad":
        return ([f"{e}acc = {dt}(0)"] + _covering(e) + _argmax("x", e + " " * 8) +
                [f"{e}        if ay == y and ax == xx:",
                 f"{e}            acc += {_at('g', 'b_', 'ci', 'i', 'j')}",
                 f"{e}out[t] = acc"])
    if op == "max_pool2d_gather":
        return _argmax("x", e) + [f"{e}out[t] = {_at('h', 'b_', 'ci', 'ay', 'ax')}"]
    if op == "avg_pool2d":
        return [f"{e}acc = {dt}(0)",
                f"{e}for a in range(kh):",
                f"{e}    for bb in range(kw):",
                f"{e}        acc += {_at('x', 'b_', 'ci', 'i * sh + a', 'j * sw + bb')}",
                f"{e}out[t] = acc * {dt}(1.0 / (kh * kw))"]
    if op == "avg_pool2d_grad":
        return ([f"{e}scale = {dt}(1.0 / (kh * kw))", f"{e}acc = {dt}(0)"] + _covering(e) +
                [f"{e}        acc += {_at('g', 'b_', 'ci', 'i', 'j')} * scale",
                 f"{e}out[t] = acc"])
    raise ValueError(f"no CUDA kernel for {op}")


# Which sizes each tensor gives (operands by name, then "out"), and the int attributes.
DIMS = {
    "conv2d": {"x": "n c h w", "k": "o c kh kw", "out": "n o ho wo"},
    "conv2d_grad_input": {"g": "n o ho wo", "k": "o c kh kw", "out": "n c h w"},
    "conv2d_grad_weight": {"x": "n c h w", "g": "n o ho wo", "out": "o c kh kw"},
    "max_pool2d": {"x": "n c h w", "out": "n c ho wo"},
    "max_pool2d_grad": {"g": "n c ho wo", "x": "n c h w", "out": "n c h w"},
    "max_pool2d_gather": {"h": "n c h w", "x": "n c h w", "out": "n c ho wo"},
    "avg_pool2d": {"x": "n c h w", "out": "n c ho wo"},
    "avg_pool2d_grad": {"g": "n c ho wo", "out": "n c h w"},
}
ATTRS = {"stride": ("sh", "sw"), "padding": ("ph", "pw"), "kernel": ("kh", "kw")}


def operands(op: str) -> tuple[str, ...]:
    return _OPERANDS[op]


def supported(op: str) -> bool:
    return op in _OPERANDS


def call_source(op: str, dtype: str) -> tuple[str, list[Param]]:
    """Source of the CUDA kernel for library op `op` on `dtype` arrays, and its params."""
    params: list[Param] = [("int", s) for s in _SIZES[op].split()]
    for name in _OPERANDS[op]:
        params += [(dtype, f"{name}_"), ("int", f"{name}_o")] + [("int", f"{name}_s{k}")
                                                                 for k in range(4)]
    params.append((dtype, "out"))
    d0, d1, d2, d3, sizes = _RESULT[op]
    s0, s1, s2, s3 = sizes.split()
    lines = [DECORATOR, f"def kernel({', '.join(name for _, name in params)}):",
             f"    total = {s0} * {s1} * {s2} * {s3}",
             "    for t in range(cuda.grid(1), total, cuda.gridsize(1)):",
             f"        {d3} = t % {s3}",
             f"        r_ = t // {s3}",
             f"        {d2} = r_ % {s2}",
             f"        r_ = r_ // {s2}",
             f"        {d1} = r_ % {s1}",
             f"        {d0} = r_ // {s1}"]
    lines += _body(op, CTOR[dtype])
    return "\n".join(lines) + "\n", params
