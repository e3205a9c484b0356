"""Convolution and pooling primitives over NCHW arrays (compiled as "call" groups that run
the hand-written kernels of kernels/cpu/conv.py and kernels/cpu/pool.py).

conv2d(x, w) is bilinear, and its two gradients are primitives whose own gradients are the
other two, so every order of `gc.grad` works:

    B(x, w) = conv2d(x, w)          <g, B(x, w)> = <T(g, w), x> = <W(x, g), w>
    T(g, w) = conv2d_grad_input     vjp: (B(h, w), W(h, g))
    W(x, g) = conv2d_grad_weight    vjp: (T(g, k), B(x, k))

Max pooling routes gradients to each window's first maximum (PyTorch's choice);
max_pool2d_grad (scatter to the argmax) and max_pool2d_gather (read at the argmax) are each
other's adjoints in their first operand. Average pooling and its gradient likewise. Windows
never leave the input (no padding for pooling); the batch axis may be a run-time size, the
others must be fixed.
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


_CONV = "kernels.cpu.conv:"
_POOL = "kernels.cpu.pool:"

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


def conv2d(x: Value, w: Value, stride: Any = 1, padding: Any = 0) -> Value:
    """2-D cross-correlation of `x` (N, C, H, W) with `w` (O, C, kh, kw), zero `padding` on
    both sides of H and W, as torch.nn.functional.conv2d (no bias, no groups/dilation)."""
    return make("conv2d", [x, w], stride=_pair(stride, "conv2d: stride", 1),
                padding=_pair(padding, "conv2d: padding", 0))


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


def max_pool2d(x: Value, kernel_size: Any, stride: Any = None) -> Value:
    """Maximum over `kernel_size` windows of `x` (N, C, H, W), `stride` defaulting to the
    window size; the gradient goes to each window's first maximum."""
    return make("max_pool2d", [x], **_pool_args("max_pool2d", kernel_size, stride))


def avg_pool2d(x: Value, kernel_size: Any, stride: Any = None) -> Value:
    """Mean over `kernel_size` windows of `x` (N, C, H, W), `stride` defaulting to the
    window size."""
    return make("avg_pool2d", [x], **_pool_args("avg_pool2d", kernel_size, stride))


__all__ = ["avg_pool2d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d"]
