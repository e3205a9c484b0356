"""Data-movement primitives: reshape, transpose, broadcast, concat, slicing and gathers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphError, IndexRangeError, user_location
from graphc.ir import Node, Value, format_shape
from graphc.ops.registry import (
    InferError,
    broadcast_shapes,
    defop,
    describe_operands,
    make,
    normalize_axes,
)

# -- reshape ---------------------------------------------------------------------------

def _reshape_infer(nodes: list[Node], shape: tuple) -> tuple:
    src = nodes[0].shape
    known = math.prod(d for d in shape if d != -1)
    if all(d is not None for d in src):
        total = math.prod(src)
        if -1 in shape:
            if known == 0 or total % known:
                raise InferError(f"cannot reshape {format_shape(src)} to {shape}")
            return tuple(total // known if d == -1 else d for d in shape), nodes[0].dtype
        if total != known:
            raise InferError(f"cannot reshape {format_shape(src)} ({total} elements) to "
                             f"{shape} ({known} elements)")
        return shape, nodes[0].dtype
    if -1 not in shape:
        raise InferError(f"reshaping {format_shape(src)}, whose size is known only at run "
                         "time, needs a -1 (or None) in the new shape")
    return tuple(None if d == -1 else d for d in shape), nodes[0].dtype


def _reshape_like_infer(nodes: list[Node]) -> tuple:
    return nodes[1].shape, nodes[0].dtype


defop("reshape", "view", _reshape_infer, lambda x, shape: np.reshape(x, shape), arity=1,
      vjp=lambda g, out, x, needs, shape: (reshape_like(g, x[0]),))
defop("reshape_like", "view", _reshape_like_infer,
      lambda x, ref: np.reshape(x, ref.shape), arity=2,
      vjp=lambda g, out, x, needs: (reshape_like(g, x[0]), None))


def reshape(x: Value, shape: Sequence[int | None]) -> Value:
    """x with a new shape of the same size; one entry may be -1 (or None): inferred."""
    dims = tuple(-1 if d is None else int(d) for d in shape)
    if dims.count(-1) > 1:
        raise GraphError(f"reshape: at most one -1/None in the new shape, got {tuple(shape)}\n"
                         f"  at {user_location()}")
    if dims == x.shape:
        return x
    return make("reshape", [x], shape=dims)


def reshape_like(x: Value, ref: Value) -> Value:
    """x reshaped to `ref`'s (run-time) shape; `ref` gets no gradient."""
    if x.shape == ref.shape and None not in x.shape:
        return x
    return make("reshape_like", [x, ref])


# -- transpose -------------------------------------------------------------------------

def _transpose_infer(nodes: list[Node], perm: tuple) -> tuple:
    return tuple(nodes[0].shape[p] for p in perm), nodes[0].dtype


defop("transpose", "view", _transpose_infer, lambda x, perm: np.transpose(x, perm), arity=1,
      vjp=lambda g, out, x, needs, perm: (transpose(g, tuple(np.argsort(perm).tolist())),))


def transpose(x: Value, axes: Sequence[int] | None = None) -> Value:
    """Permute axes (default: reverse them, like numpy)."""
    perm = tuple(reversed(range(x.ndim))) if axes is None else tuple(int(a) for a in axes)
    if sorted(a % max(x.ndim, 1) for a in perm) != list(range(x.ndim)) or len(perm) != x.ndim:
        raise GraphError(f"transpose: {perm} is not a permutation of the {x.ndim} axes of "
                         f"{format_shape(x.shape)}\n  at {user_location()}")
    perm = tuple(a % x.ndim for a in perm)
    if perm == tuple(range(x.ndim)):
        return x
    return make("transpose", [x], perm=perm)


def swapaxes(x: Value, a: int, b: int) -> Value:
    """x with axes `a` and `b` exchanged."""
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


# -- broadcasting ----------------------------------------------------------------------

def _broadcast_to_infer(nodes: list[Node], shape: tuple) -> tuple:
    src = nodes[0].shape
    if len(src) > len(shape) or broadcast_shapes(src, shape) != shape:
        raise InferError(f"cannot broadcast {format_shape(src)} to {format_shape(shape)}")
    return shape, nodes[0].dtype


def _broadcast_like_infer(nodes: list[Node]) -> tuple:
    src, target = nodes[0].shape, nodes[1].shape
    if len(src) > len(target):
        raise InferError(f"cannot broadcast {format_shape(src)} to {format_shape(target)}")
    broadcast_shapes(src, target)
    return target, nodes[0].dtype


defop("broadcast_to", "view", _broadcast_to_infer,
      lambda x, shape: np.broadcast_to(x, shape), arity=1,
      vjp=lambda g, out, x, needs, shape: (g,))
defop("broadcast_like", "view", _broadcast_like_infer,
      lambda x, ref: np.broadcast_to(x, ref.shape), arity=2,
      vjp=lambda g, out, x, needs: (g, None))


def broadcast_to(x: Value, shape: Any) -> Value:
    """x broadcast to `shape` (a tuple of ints, or a Value whose run-time shape to take)."""
    if isinstance(shape, Value):
        if x.shape == shape.shape and None not in x.shape:
            return x
        return make("broadcast_like", [x, shape])
    dims = tuple(int(d) for d in shape)
    if dims == x.shape:
        return x
    return make("broadcast_to", [x], shape=dims)


def broadcast_like(x: Value, ref: Value) -> Value:
    """x broadcast to `ref`'s run-time shape; `ref` gets no gradient."""
    return broadcast_to(x, ref)


def zeros_like(x: Value) -> Value:
    """Zeros with `x`'s shape and dtype."""
    return broadcast_like(x.graph.const(0, dtype=x.dtype), x)


# -- concat / stack / squeeze / expand_dims --------------------------------------------

def _concat_infer(nodes: list[Node], axis: int) -> tuple:
    first = nodes[0]
    for n in nodes[1:]:
        if n.dtype != first.dtype:
            raise InferError(f"operand dtypes differ ({first.dtype} vs {n.dtype})")
        if len(n.shape) != len(first.shape):
            raise InferError("operands have different numbers of dimensions")
    out = []
    for a in range(len(first.shape)):
        dims = [n.shape[a] for n in nodes]
        if a == axis:
            if any(d is None for d in dims):
                raise InferError("concatenating along an axis whose size is known only at run "
                                 "time is not supported")
            out.append(sum(dims))
        else:
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise InferError(f"sizes differ on axis {a}: {dims}")
            out.append(known.pop() if known else None)
    return tuple(out), first.dtype


def _concat_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axis: int) -> tuple:
    grads: list[Value | None] = []
    start = 0
    for v, need in zip(x, needs):
        stop = start + v.shape[axis]
        if need:
            index = [(None, None, None)] * v.ndim
            index[axis] = (start, stop, 1)
            grads.append(make("slice", [g], index=tuple(index)))
        else:
            grads.append(None)
        start = stop
    return tuple(grads)


defop("concat", "index", _concat_infer,
      lambda *xs, axis: np.concatenate(xs, axis=axis), vjp=_concat_vjp)


def concat(values: Sequence[Value], axis: int = 0) -> Value:
    """Join values along an existing axis."""
    values = list(values)
    if not values:
        raise GraphError(f"concat needs at least one value\n  at {user_location()}")
    (ax,) = normalize_axes(axis, values[0].ndim, "concat", values)
    if len(values) == 1:
        return values[0]
    return make("concat", values, axis=ax)


def _squeeze_infer(nodes: list[Node], axes: tuple) -> tuple:
    shape = nodes[0].shape
    for a in axes:
        if shape[a] != 1:
            raise InferError(f"cannot squeeze axis {a} of size "
                             f"{'run-time' if shape[a] is None else shape[a]}")
    return tuple(d for i, d in enumerate(shape) if i not in axes), nodes[0].dtype


def _expand_infer(nodes: list[Node], axes: tuple) -> tuple:
    shape = list(nodes[0].shape)
    for a in axes:
        shape.insert(a, 1)
    return tuple(shape), nodes[0].dtype


defop("squeeze", "view", _squeeze_infer, lambda x, axes: np.squeeze(x, axis=axes), arity=1,
      vjp=lambda g, out, x, needs, axes: (reshape_like(g, x[0]),))
defop("expand_dims", "view", _expand_infer, lambda x, axes: np.expand_dims(x, axes), arity=1,
      vjp=lambda g, out, x, needs, axes: (reshape_like(g, x[0]),))


def squeeze(x: Value, axis: Any = None) -> Value:
    """Remove axes of size 1 (default: every axis known to be 1)."""
    if axis is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = normalize_axes(axis, x.ndim, "squeeze", [x])
    if not axes:
        return x
    return make("squeeze", [x], axes=axes)


def expand_dims(x: Value, axis: Any) -> Value:
    """Insert axes of size 1 at the positions `axis` of the result."""
    items = axis if isinstance(axis, (tuple, list)) else (axis,)
    axes = normalize_axes(tuple(items), x.ndim + len(items), "expand_dims", [x])
    return make("expand_dims", [x], axes=axes)


def stack(values: Sequence[Value], axis: int = 0) -> Value:
    """Join values along a new axis."""
    values = list(values)
    if not values:
        raise GraphError(f"stack needs at least one value\n  at {user_location()}")
    (ax,) = normalize_axes(axis, values[0].ndim + 1, "stack", values)
    return concat([expand_dims(v, ax) for v in values], axis=ax)


# -- slicing ---------------------------------------------------------------------------

def _slices(index: tuple) -> tuple:
    return tuple(slice(*entry) for entry in index)


def _sliced_size(d: int | None, start: int | None, stop: int | None, step: int) -> int | None:
    """Size of `range(n)[start:stop:step]`; for a run-time `n`, known only when both ends
    count from the same side (e.g. `i:i+1`, `-3:`), assuming the axis is long enough (the
    run-time shape check catches it when it is not)."""
    if d is not None:
        return len(range(*slice(start, stop, step).indices(d)))
    if step != 1 or start is None:
        return None
    if stop is None:
        return -start if start < 0 else None
    if (start >= 0) == (stop >= 0) or stop == 0:
        return max(0, stop - start) if stop != 0 or start < 0 else None
    return None


def _slice_infer(nodes: list[Node], index: tuple) -> tuple:
    shape = [_sliced_size(d, *entry) for d, entry in zip(nodes[0].shape, index)]
    return tuple(shape), nodes[0].dtype


def _slice_ref(x: np.ndarray, index: tuple) -> np.ndarray:
    return x[_slices(index)]


def _slice_grad_ref(g: np.ndarray, ref: np.ndarray, index: tuple) -> np.ndarray:
    out = np.zeros(ref.shape, dtype=g.dtype)
    out[_slices(index)] = g
    return out


defop("slice", "view", _slice_infer, _slice_ref, arity=1,
      vjp=lambda g, out, x, needs, index: (make("slice_grad", [g, x[0]], index=index),))
defop("slice_grad", "index", lambda nodes, index: (nodes[1].shape, nodes[0].dtype),
      _slice_grad_ref, arity=2,
      vjp=lambda g, out, x, needs, index: (make("slice", [g], index=index), None))


def _as_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    raise GraphError(f"slice bounds must be ints or None, got {v!r}\n  at {user_location()}")


def getitem(x: Value, index: Any) -> Value:
    """Basic indexing: ints, slices, None (new axis), Ellipsis; or one integer Value (take
    along axis 0: its entries lie in [-n, n) for n = x.shape[0], a negative one counts from
    the end as in numpy)."""
    if isinstance(index, Value):
        return take(x, index, axis=0)
    items = list(index) if isinstance(index, tuple) else [index]
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise GraphError(f"getitem: an index can only have a single Ellipsis\n"
                         f"  operands: {describe_operands([x])}\n  at {user_location()}")
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    if consumed > x.ndim:
        raise GraphError(f"getitem: too many indices ({consumed}) for a value of shape "
                         f"{format_shape(x.shape)}\n  operands: {describe_operands([x])}\n"
                         f"  at {user_location()}")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (x.ndim - consumed)
    else:
        items += [slice(None)] * (x.ndim - consumed)
    spec: list[tuple] = []
    drop: list[int] = []
    new_axes: list[int] = []
    out_pos = 0
    for item in items:
        if item is None:
            new_axes.append(out_pos)
            out_pos += 1
            continue
        axis = len(spec)
        if isinstance(item, Value):
            raise GraphError("indexing with a Value mixed with other indices is not supported; "
                             f"use gc.take\n  at {user_location()}")
        if isinstance(item, slice):
            spec.append((_as_int(item.start), _as_int(item.stop), _as_int(item.step) or 1))
            out_pos += 1
        else:
            i = _as_int(item)
            size = x.shape[axis]
            if size is not None and not -size <= i < size:
                raise GraphError(f"getitem: index {i} is out of bounds for axis {axis} with "
                                 f"size {size}\n  operands: {describe_operands([x])}\n"
                                 f"  at {user_location()}")
            stop = None if i == -1 else i + 1
            spec.append((i, stop, 1))
            drop.append(axis)
    out = x
    if any(entry != (None, None, 1) for entry in spec):
        out = make("slice", [x], index=tuple(spec))
    if drop:
        out = make("squeeze", [out], axes=tuple(drop))
    if new_axes:
        out = expand_dims(out, tuple(new_axes))
    return out


# -- gathers ---------------------------------------------------------------------------

def _take_infer(nodes: list[Node], axis: int, what: str, wrap: bool) -> tuple:
    x, idx = nodes
    if idx.dtype not in ("int32", "int64", "int16", "int8", "uint8", "uint16", "uint32"):
        raise InferError(f"indices must be integers, got {idx.dtype}")
    return x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype


def check_index_range(idx: np.ndarray, size: int, what: str = "index",
                      wrap: bool = False) -> np.ndarray:
    """`idx` with negative entries counted from the end when `wrap`; IndexRangeError unless
    every entry lies in [-size, size) (wrap) or [0, size) (not)."""
    low_bound = -size if wrap else 0
    if idx.size:
        low, high = int(idx.min()), int(idx.max())
        if low < low_bound or high >= size:
            bad = low if low < low_bound else high
            raise IndexRangeError(f"{what} {bad} is out of range [{low_bound}, {size})")
    return np.where(idx < 0, idx + size, idx) if wrap else idx


def _take_ref(x: np.ndarray, idx: np.ndarray, axis: int, what: str,
              wrap: bool) -> np.ndarray:
    return np.take(x, check_index_range(idx, x.shape[axis], what, wrap), axis=axis)


def _take_grad_ref(g: np.ndarray, idx: np.ndarray, ref: np.ndarray, axis: int, what: str,
                   wrap: bool) -> np.ndarray:
    rows = check_index_range(idx, ref.shape[axis], what, wrap)
    out = np.zeros(ref.shape, dtype=g.dtype)
    np.add.at(out, (slice(None),) * axis + (rows,), g)
    return out


def _take_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axis: int, what: str,
              wrap: bool) -> tuple:
    return (make("take_grad", [g, x[1], x[0]], axis=axis, what=what, wrap=wrap), None)


def _take_grad_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axis: int, what: str,
                   wrap: bool) -> tuple:
    return (make("take", [g, x[1]], axis=axis, what=what, wrap=wrap), None, None)


defop("take", "index", _take_infer, _take_ref, vjp=_take_vjp, arity=2)
defop("take_grad", "index",
      lambda nodes, axis, what, wrap: (nodes[2].shape, nodes[0].dtype),
      _take_grad_ref, arity=3, vjp=_take_grad_vjp)


def take(x: Value, indices: Any, axis: int = 0, *, what: str = "index",
         wrap: bool = True) -> Value:
    """Gather entries of `x` along `axis` at integer `indices` (gradient: scatter-add).

    As in numpy, an index lies in [-n, n) for n = x.shape[axis], a negative one counting
    from the end; outside that range IndexRangeError names the node and its line.
    `wrap=False` admits only [0, n) (a negative index raises, as PyTorch's embedding and
    cross_entropy do). `what` names an index in that error (e.g. "softmax_cross_entropy
    label")."""
    if not isinstance(indices, Value):
        indices = x.graph.const(np.asarray(indices, dtype=np.int64))
    (ax,) = normalize_axes(axis, x.ndim, "take", [x, indices])
    return make("take", [x, indices], axis=ax, what=what, wrap=bool(wrap))


# -- gathers along an axis (numpy's take_along_axis) ------------------------------------

_INDEX_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")


def _along_infer(nodes: list[Node], axis: int) -> tuple:
    """x and indices of the same rank and the same sizes off `axis` (the public function
    broadcasts them); the result has the indices' shape."""
    x, idx = nodes[0], nodes[1]
    if idx.dtype not in _INDEX_DTYPES:
        raise InferError(f"indices must be integers, got {idx.dtype}")
    if len(idx.shape) != len(x.shape):
        raise InferError(f"indices have {len(idx.shape)} dimensions, the value "
                         f"{len(x.shape)}; they must have the same number")
    for k, (a, b) in enumerate(zip(x.shape, idx.shape)):
        if k != axis and a is not None and b is not None and a != b:
            raise InferError(f"sizes differ on axis {k}: {format_shape(x.shape)} and "
                             f"{format_shape(idx.shape)}")
    return idx.shape, x.dtype


def _along_positions(idx: np.ndarray, axis: int, n: int) -> tuple:
    """Index arrays addressing, for every entry of `idx`, the element it picks."""
    picked = np.where(idx < 0, idx + n, idx).astype(np.int64)
    if picked.size and (picked.min() < 0 or picked.max() >= n):
        raise IndexError(f"take_along_axis: index out of range for axis {axis} of size {n}")
    grids = list(np.indices(idx.shape, sparse=True))
    grids[axis] = picked
    return tuple(grids)


def _along_ref(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return x[_along_positions(idx, axis, x.shape[axis])]


def _along_grad_ref(g: np.ndarray, idx: np.ndarray, ref: np.ndarray, axis: int) -> np.ndarray:
    out = np.zeros(ref.shape, dtype=g.dtype)
    np.add.at(out, _along_positions(idx, axis, ref.shape[axis]), g)
    return out


def _along_vjp(g: Value, out: Value, x: list[Value], needs: tuple, axis: int) -> tuple:
    return (make("take_along_axis_grad", [g, x[1], x[0]], axis=axis), None)


defop("take_along_axis", "index", _along_infer, _along_ref, vjp=_along_vjp, arity=2)
def _along_grad_infer(nodes: list[Node], axis: int) -> tuple:
    """(g, indices, ref): g has the indices' shape, the result ref's."""
    _along_infer([nodes[2], nodes[1]], axis)
    return nodes[2].shape, nodes[0].dtype


defop("take_along_axis_grad", "index", _along_grad_infer, _along_grad_ref, arity=3,
      vjp=lambda g, out, x, needs, axis: (make("take_along_axis", [g, x[1]], axis=axis),
                                          None, None))


def take_along_axis(x: Value, indices: Any, axis: int | None) -> Value:
    """numpy's take_along_axis: out[..., j, ...] = x[..., indices[..., j, ...], ...] along
    `axis`, the other axes broadcast (None: the flattened x, 1-D indices). Negative indices
    count from the end; the gradient scatter-adds (repeated indices accumulate)."""
    if not isinstance(indices, Value):
        indices = x.graph.const(np.asarray(indices, dtype=np.int64))
    if axis is None:
        if indices.ndim != 1:
            raise GraphError("take_along_axis: with axis=None the indices must be 1-D, got "
                             f"{format_shape(indices.shape)}\n  at {user_location()}")
        x, axis = reshape(x, (-1,)), 0
    if indices.ndim != x.ndim:
        raise GraphError(f"take_along_axis: indices must have as many dimensions as the value "
                         f"({x.ndim}), got {indices.ndim}\n"
                         f"  operands: {describe_operands([x, indices])}\n"
                         f"  at {user_location()}")
    (ax,) = normalize_axes(axis, x.ndim, "take_along_axis", [x, indices])
    x, indices = _broadcast_off_axis(x, indices, ax)
    return make("take_along_axis", [x, indices], axis=ax)


def _broadcast_off_axis(x: Value, idx: Value, axis: int) -> tuple[Value, Value]:
    """x and idx broadcast against each other on every axis but `axis`."""
    off = [k for k in range(x.ndim) if k != axis]
    if all(x.shape[k] == idx.shape[k] for k in off):
        return x, idx
    try:
        common = broadcast_shapes(tuple(x.shape[k] for k in off),
                                  tuple(idx.shape[k] for k in off))
    except InferError as err:
        raise GraphError(f"take_along_axis: {err}\n  operands: "
                         f"{describe_operands([x, idx])}\n  at {user_location()}") from None
    def target(v: Value) -> tuple:
        dims = list(common)
        dims.insert(axis, v.shape[axis])
        return tuple(dims)

    if None not in target(x) + target(idx):
        return broadcast_to(x, target(x)), broadcast_to(idx, target(idx))
    # run-time sizes: `where` with equal branches broadcasts through a condition shaped
    # like the other operand with one entry on the axis
    from graphc.ops.elementwise import equal, where

    def first(v: Value) -> Value:
        row = make("slice", [v], index=tuple(
            (0, 1, 1) if k == axis else (None, None, 1) for k in range(v.ndim)))
        return equal(row, row)

    return where(first(idx), x, x), where(first(x), idx, idx)
