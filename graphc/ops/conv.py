"""Convolution and pooling primitives over NCHW arrays (compiled as "call" groups that run
the hand-written kernels of kernels/cpu/conv.py and kernels/cpu/pool.py).

conv2d(x, w) is bilinear, and its two gradients are primitives whose own gradients are the
other two, so every order of `gc.grad` works:

    B(x, w) = conv2d(x, w)          <g, B(x, w)> = <T(g, w), x> = <W(x, g), w>
    T(g, w) = conv2d_grad_input     vjp: (B(h, w), W(h, g))
    W(x, g) = conv2d_grad_weight    vjp: (T(g, k), B(x, k))

Max pooling routes gradients to each window's first maximum (PyTorch's choice);
max_pool2d_grad (scatter to the argmax) and max_pool2d_gather (read at the argmax) are each
other's adjoints in their first operand. Average pooling and its gradient likewise. The
primitives' windows never leave their input: pooling with padding, dilated and grouped
convolutions and conv1d are composites of these (pad, a zero-spread weight, channel
slices). The batch axis may be a run-time size, the others must be fixed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from graphc.errors import GraphError, user_location
from graphc.ir import Node, Value, format_shape, is_float
from graphc.ops.registry import InferError, defop, make

# -- shape rules -----------------------------------------------------------------------


def _pair(v: Any, what: str, minimum: int) -> tuple[int, int]:
    items = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(items) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                  and i >= minimum for i in items):
        raise GraphError(f"{what} must be an int >= {minimum} or a pair of them, got {v!r}\n"
                         f"  at {user_location()}")
    return int(items[0]), int(items[1])


def _check_image(node: Node, what: str) -> None:
    if len(node.shape) != 4:
        raise InferError(f"{what} must be 4-D (N, C, H, W), got {format_shape(node.shape)}")
    if not is_float(node.dtype):
        raise InferError(f"{what} must be floating point, got {node.dtype}")
    if any(d is None for d in node.shape[1:]):
        raise InferError(f"{what} {format_shape(node.shape)}: channels, height and width "
                         "must have fixed sizes (only the batch axis may be None)")


def _out_size(size: int, k: int, s: int, p: int, axis: str) -> int:
    span = size + 2 * p - k
    if span < 0:
        raise InferError(f"the {k}-wide window does not fit the {axis} {size} "
                         f"(padding {p})")
    return span // s + 1


def _same_dtype(*nodes: Node) -> str:
    if len({n.dtype for n in nodes}) != 1:
        raise InferError("operand dtypes differ (" + " vs ".join(n.dtype for n in nodes)
                         + "); convert one with gc.cast")
    return nodes[0].dtype


def _conv_infer(nodes: list[Node], stride: tuple, padding: tuple) -> tuple:
    x, w = nodes
    _check_image(x, "input")
    _check_image(w, "weight (O, C, kh, kw)")
    if x.shape[1] != w.shape[1]:
        raise InferError(f"input has {x.shape[1]} channels but the weight expects "
                         f"{w.shape[1]}")
    dtype = _same_dtype(x, w)
    ho = _out_size(x.shape[2], w.shape[2], stride[0], padding[0], "height")
    wo = _out_size(x.shape[3], w.shape[3], stride[1], padding[1], "width")
    return (x.shape[0], w.shape[0], ho, wo), dtype


def _conv_grad_input_infer(nodes: list[Node], stride: tuple, padding: tuple,
                           input_hw: tuple) -> tuple:
    g, w = nodes
    if len(g.shape) != 4 or len(w.shape) != 4:
        raise InferError("conv2d_grad_input needs 4-D operands")
    return (g.shape[0], w.shape[1]) + tuple(input_hw), _same_dtype(g, w)


def _conv_grad_weight_infer(nodes: list[Node], stride: tuple, padding: tuple,
                            kernel_hw: tuple) -> tuple:
    x, g = nodes
    if len(x.shape) != 4 or len(g.shape) != 4:
        raise InferError("conv2d_grad_weight needs 4-D operands")
    return (g.shape[1], x.shape[1]) + tuple(kernel_hw), _same_dtype(x, g)


def _pool_infer(nodes: list[Node], kernel: tuple, stride: tuple) -> tuple:
    x = nodes[0]
    _check_image(x, "input")
    ho = _out_size(x.shape[2], kernel[0], stride[0], 0, "height")
    wo = _out_size(x.shape[3], kernel[1], stride[1], 0, "width")
    return (x.shape[0], x.shape[1], ho, wo), x.dtype


def _pool_grad_infer(nodes: list[Node], kernel: tuple, stride: tuple) -> tuple:
    g, x = nodes
    return x.shape, _same_dtype(g, x)


def _pool_gather_infer(nodes: list[Node], kernel: tuple, stride: tuple) -> tuple:
    h, x = nodes
    shape, _ = _pool_infer([x], kernel, stride)
    return shape, _same_dtype(h, x)


def _avg_grad_infer(nodes: list[Node], kernel: tuple, stride: tuple, input_hw: tuple) -> tuple:
    g = nodes[0]
    return (g.shape[0], g.shape[1]) + tuple(input_hw), g.dtype


# -- numpy references (the interpreter; also the baseline of benchmarks/conv_bench.py) ------


def _pad(x: np.ndarray, padding: tuple) -> np.ndarray:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _windows(xp: np.ndarray, kernel: tuple, stride: tuple, out_hw: tuple) -> np.ndarray:
    """(N, C, ho, wo, kh, kw) strided view of the windows of padded `xp`."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    view = sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return view[:, :, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw]


def _out_hw(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple) -> tuple:
    return ((x.shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (x.shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1)


def conv2d_ref(x: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple) -> np.ndarray:
    kernel = w.shape[2:]
    win = _windows(_pad(x, padding), kernel, stride, _out_hw(x, kernel, stride, padding))
    out = np.tensordot(win, w, axes=((1, 4, 5), (1, 2, 3)))  # (N, ho, wo, O)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def conv2d_grad_input_ref(g: np.ndarray, w: np.ndarray, stride: tuple, padding: tuple,
                          input_hw: tuple) -> np.ndarray:
    n, _, ho, wo = g.shape
    _, c, kh, kw = w.shape
    (sh, sw), (ph, pw), (h, wd) = stride, padding, input_hw
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=g.dtype)
    cols = np.tensordot(g, w, axes=((1,), (0,)))  # (N, ho, wo, C, kh, kw)
    for a in range(kh):
        for b in range(kw):
            dxp[:, :, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw] += \
                cols[:, :, :, :, a, b].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + wd])


def conv2d_grad_weight_ref(x: np.ndarray, g: np.ndarray, stride: tuple, padding: tuple,
                           kernel_hw: tuple) -> np.ndarray:
    win = _windows(_pad(x, padding), kernel_hw, stride, g.shape[2:])
    return np.ascontiguousarray(np.tensordot(g, win, axes=((0, 2, 3), (0, 2, 3))))


def _argmax_positions(x: np.ndarray, kernel: tuple, stride: tuple) -> tuple:
    """Index arrays (n, c, row, col), each (N, C, ho, wo), of every window's first maximum."""
    (kh, kw), (sh, sw) = kernel, stride
    out_hw = _out_hw(x, kernel, stride, (0, 0))
    win = _windows(x, kernel, stride, out_hw)
    flat = win.reshape(win.shape[:4] + (kh * kw,))
    k = np.argmax(flat, axis=-1)
    n, c, i, j = np.indices(k.shape, sparse=True)
    return n, c, i * sh + k // kw, j * sw + k % kw


def max_pool2d_ref(x: np.ndarray, kernel: tuple, stride: tuple) -> np.ndarray:
    win = _windows(x, kernel, stride, _out_hw(x, kernel, stride, (0, 0)))
    return np.ascontiguousarray(np.max(win, axis=(4, 5)))


def max_pool2d_grad_ref(g: np.ndarray, x: np.ndarray, kernel: tuple,
                        stride: tuple) -> np.ndarray:
    dx = np.zeros(x.shape, dtype=g.dtype)
    np.add.at(dx, _argmax_positions(x, kernel, stride), g)
    return dx


def max_pool2d_gather_ref(h: np.ndarray, x: np.ndarray, kernel: tuple,
                          stride: tuple) -> np.ndarray:
    return np.ascontiguousarray(h[_argmax_positions(x, kernel, stride)])


def avg_pool2d_ref(x: np.ndarray, kernel: tuple, stride: tuple) -> np.ndarray:
    win = _windows(x, kernel, stride, _out_hw(x, kernel, stride, (0, 0)))
    scale = x.dtype.type(1.0 / (kernel[0] * kernel[1]))
    return np.ascontiguousarray(np.sum(win, axis=(4, 5)) * scale)


def avg_pool2d_grad_ref(g: np.ndarray, kernel: tuple, stride: tuple,
                        input_hw: tuple) -> np.ndarray:
    n, c, ho, wo = g.shape
    (kh, kw), (sh, sw) = kernel, stride
    dx = np.zeros((n, c) + tuple(input_hw), dtype=g.dtype)
    part = g * g.dtype.type(1.0 / (kh * kw))
    for a in range(kh):
        for b in range(kw):
            dx[:, :, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw] += part
    return dx


# -- gradient rules ----------------------------------------------------------------------


def _conv_vjp(g: Value, out: Value, x: list[Value], needs: tuple, stride: tuple,
              padding: tuple) -> tuple:
    inp, w = x
    return (conv2d_grad_input(g, w, stride, padding, inp.shape[2:]) if needs[0] else None,
            conv2d_grad_weight(inp, g, stride, padding, w.shape[2:]) if needs[1] else None)


def _conv_grad_input_vjp(h: Value, out: Value, x: list[Value], needs: tuple, stride: tuple,
                         padding: tuple, input_hw: tuple) -> tuple:
    g, w = x
    return (conv2d(h, w, stride, padding) if needs[0] else None,
            conv2d_grad_weight(h, g, stride, padding, w.shape[2:]) if needs[1] else None)


def _conv_grad_weight_vjp(k: Value, out: Value, x: list[Value], needs: tuple, stride: tuple,
                          padding: tuple, kernel_hw: tuple) -> tuple:
    inp, g = x
    return (conv2d_grad_input(g, k, stride, padding, inp.shape[2:]) if needs[0] else None,
            conv2d(inp, k, stride, padding) if needs[1] else None)


_CONV = "graphc.kernels.cpu.conv:"
_POOL = "graphc.kernels.cpu.pool:"

defop("conv2d", "call", _conv_infer, conv2d_ref, vjp=_conv_vjp, arity=2,
      kernel=_CONV + "conv2d_forward", kernel_attrs=("stride", "padding"), batch="rows")
defop("conv2d_grad_input", "call", _conv_grad_input_infer, conv2d_grad_input_ref,
      vjp=_conv_grad_input_vjp, arity=2,
      kernel=_CONV + "conv2d_grad_input", kernel_attrs=("stride", "padding"), batch="rows")
defop("conv2d_grad_weight", "call", _conv_grad_weight_infer, conv2d_grad_weight_ref,
      vjp=_conv_grad_weight_vjp, arity=2,
      kernel=_CONV + "conv2d_grad_weight", kernel_attrs=("stride", "padding"), batch="sum")

defop("max_pool2d", "call", _pool_infer, max_pool2d_ref, arity=1,
      vjp=lambda g, out, x, needs, kernel, stride: (
          make("max_pool2d_grad", [g, x[0]], kernel=kernel, stride=stride),),
      kernel=_POOL + "max_pool2d_forward", kernel_attrs=("kernel", "stride"), batch="rows")
defop("max_pool2d_grad", "call", _pool_grad_infer, max_pool2d_grad_ref, arity=2,
      vjp=lambda h, out, x, needs, kernel, stride: (
          make("max_pool2d_gather", [h, x[1]], kernel=kernel, stride=stride), None),
      kernel=_POOL + "max_pool2d_grad", kernel_attrs=("kernel", "stride"), batch="rows")
defop("max_pool2d_gather", "call", _pool_gather_infer, max_pool2d_gather_ref, arity=2,
      vjp=lambda k, out, x, needs, kernel, stride: (
          make("max_pool2d_grad", [k, x[1]], kernel=kernel, stride=stride), None),
      kernel=_POOL + "max_pool2d_gather", kernel_attrs=("kernel", "stride"), batch="rows")
defop("avg_pool2d", "call", _pool_infer, avg_pool2d_ref, arity=1,
      vjp=lambda g, out, x, needs, kernel, stride: (
          make("avg_pool2d_grad", [g], kernel=kernel, stride=stride,
               input_hw=tuple(x[0].shape[2:])),),
      kernel=_POOL + "avg_pool2d_forward", kernel_attrs=("kernel", "stride"), batch="rows")
defop("avg_pool2d_grad", "call", _avg_grad_infer, avg_pool2d_grad_ref, arity=1,
      vjp=lambda h, out, x, needs, kernel, stride, input_hw: (
          make("avg_pool2d", [h], kernel=kernel, stride=stride),),
      kernel=_POOL + "avg_pool2d_grad", kernel_attrs=("kernel", "stride"), batch="rows")


# -- public functions ----------------------------------------------------------------------


def conv2d(x: Value, w: Value, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1) -> Value:
    """2-D cross-correlation of `x` (N, C, H, W) with `w` (O, C // groups, kh, kw), zero
    `padding` on both sides of H and W, as torch.nn.functional.conv2d (no bias).

    `dilation` spaces the kernel's taps: the weight is spread out with zeros (a scatter
    whose gradient is the slice back), so the work grows with the dilated kernel's area.
    `groups` splits the channels: output group k (O // groups channels) sees input group k
    (C // groups channels), one convolution per group."""
    stride = _pair(stride, "conv2d: stride", 1)
    padding = _pair(padding, "conv2d: padding", 0)
    dilation = _pair(dilation, "conv2d: dilation", 1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise GraphError(f"conv2d: groups must be an int >= 1, got {groups!r}\n"
                         f"  at {user_location()}")
    if dilation != (1, 1):
        w = _dilate(w, dilation)
    if groups == 1:
        return make("conv2d", [x, w], stride=stride, padding=padding)
    return _grouped(x, w, int(groups), stride, padding)


def _dilate(w: Value, dilation: tuple) -> Value:
    """w (O, C, kh, kw) with dilation - 1 zeros between neighbouring taps."""
    from graphc.ops.views import broadcast_to

    if w.ndim != 4 or None in w.shape:
        raise GraphError(f"conv2d: a dilated weight must be 4-D with fixed sizes, got "
                         f"{format_shape(w.shape)}\n  at {user_location()}")
    o, c, kh, kw = w.shape
    spread = (o, c, (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    zeros = broadcast_to(w.graph.const(0, dtype=w.dtype), spread)
    index = ((None, None, 1), (None, None, 1), (0, None, dilation[0]), (0, None, dilation[1]))
    return make("slice_grad", [w, zeros], index=index)


def _grouped(x: Value, w: Value, groups: int, stride: tuple, padding: tuple) -> Value:
    from graphc.ops.registry import describe_operands
    from graphc.ops.views import concat

    if x.ndim != 4 or w.ndim != 4 or x.shape[1] is None or w.shape[0] is None \
            or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        per_group = w.shape[1] if w.ndim == 4 else None
        need = "?" if per_group is None else groups * per_group
        raise GraphError(f"conv2d: with groups={groups} the input needs {groups} * "
                         f"{per_group} = {need} channels and the weight's output channels "
                         f"must divide by {groups}\n"
                         f"  operands: {describe_operands([x, w])}\n  at {user_location()}")
    ci, co = w.shape[1], w.shape[0] // groups
    return concat([make("conv2d", [x[:, k * ci:(k + 1) * ci], w[k * co:(k + 1) * co]],
                        stride=stride, padding=padding) for k in range(groups)], axis=1)


def conv1d(x: Value, w: Value, stride: int = 1, padding: int = 0, dilation: int = 1,
           groups: int = 1) -> Value:
    """1-D cross-correlation of `x` (N, C, L) with `w` (O, C // groups, k), as
    torch.nn.functional.conv1d (no bias): conv2d over a height of 1."""
    from graphc.ops.views import expand_dims, squeeze

    for value, what, low in ((stride, "stride", 1), (padding, "padding", 0),
                             (dilation, "dilation", 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise GraphError(f"conv1d: {what} must be an int >= {low}, got {value!r}\n"
                             f"  at {user_location()}")
    if x.ndim != 3 or w.ndim != 3:
        raise GraphError(f"conv1d: needs x (N, C, L) and w (O, C, k), got "
                         f"{format_shape(x.shape)} and {format_shape(w.shape)}\n"
                         f"  at {user_location()}")
    out = conv2d(expand_dims(x, 2), expand_dims(w, 2), (1, stride), (0, padding),
                 (1, dilation), groups)
    return squeeze(out, 2)


def conv2d_grad_input(g: Value, w: Value, stride: Any, padding: Any, input_hw: Any) -> Value:
    """The gradient of <g, conv2d(x, w)> with respect to x (a transposed convolution);
    `input_hw` = x's (H, W)."""
    return make("conv2d_grad_input", [g, w], stride=_pair(stride, "stride", 1),
                padding=_pair(padding, "padding", 0),
                input_hw=_pair(tuple(input_hw), "input_hw", 1))


def conv2d_grad_weight(x: Value, g: Value, stride: Any, padding: Any, kernel_hw: Any) -> Value:
    """The gradient of <g, conv2d(x, w)> with respect to w; `kernel_hw` = w's (kh, kw)."""
    return make("conv2d_grad_weight", [x, g], stride=_pair(stride, "stride", 1),
                padding=_pair(padding, "padding", 0),
                kernel_hw=_pair(tuple(kernel_hw), "kernel_hw", 1))


def _pool_args(op: str, kernel_size: Any, stride: Any) -> dict:
    kernel = _pair(kernel_size, f"{op}: kernel_size", 1)
    return {"kernel": kernel,
            "stride": kernel if stride is None else _pair(stride, f"{op}: stride", 1)}


def _pool_padded(op: str, x: Value, kernel: tuple, padding: Any, fill: float) -> Value:
    """x with `padding` entries of `fill` on both sides of H and W (at most half the
    window, as PyTorch requires, so every window holds an entry of x)."""
    from graphc.ops.layout import pad

    ph, pw = _pair(padding, f"{op}: padding", 0)
    if 2 * ph > kernel[0] or 2 * pw > kernel[1]:
        raise GraphError(f"{op}: padding {(ph, pw)} must be at most half the window "
                         f"{kernel}\n  at {user_location()}")
    if (ph, pw) == (0, 0):
        return x
    if x.ndim != 4:
        raise GraphError(f"{op}: input must be 4-D (N, C, H, W), got "
                         f"{format_shape(x.shape)}\n  at {user_location()}")
    return pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)


def max_pool2d(x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Value:
    """Maximum over `kernel_size` windows of `x` (N, C, H, W), `stride` defaulting to the
    window size, `padding` (-inf, so never the maximum) on both sides of H and W; the
    gradient goes to each window's first maximum."""
    args = _pool_args("max_pool2d", kernel_size, stride)
    x = _pool_padded("max_pool2d", x, args["kernel"], padding, -np.inf)
    return make("max_pool2d", [x], **args)


def avg_pool2d(x: Value, kernel_size: Any, stride: Any = None, padding: Any = 0) -> Value:
    """Mean over `kernel_size` windows of `x` (N, C, H, W), `stride` defaulting to the
    window size; `padding` zeros on both sides of H and W count in the mean (PyTorch's
    default, count_include_pad=True)."""
    args = _pool_args("avg_pool2d", kernel_size, stride)
    x = _pool_padded("avg_pool2d", x, args["kernel"], padding, 0.0)
    return make("avg_pool2d", [x], **args)


__all__ = ["avg_pool2d", "conv1d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight",
           "max_pool2d"]
