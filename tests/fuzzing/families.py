"""The op families the generator draws from. Each family is `f(b, v) -> Value`: it applies
one randomly configured op of its family to the previous value `v` (or to fresh inputs
when `v` is None or does not fit, coupled to `v` so the chain stays connected).

Domain constraints are built into the expressions, so every drawn point is valid:
* log / sqrt / rsqrt / pow bases are square(v) + 0.5 (>= 0.5); divisors square(v) + 0.5;
* log1p's argument is 0.9 tanh(v) (> -1); exp / expm1 see tanh(v) or v / 2 of a bounded
  value, so chains cannot overflow;
* var/std reduce over at least two entries; std's operand has a fresh random term added
  (its derivative is infinite at variance 0, which a chain can reach by construction:
  std(1.5 - v + v));
* take / embedding indices are in range ([0, n): graphc's take rejects negative indices),
  take_along_axis indices in [-n, n) (numpy's negative indices);
* cross-entropy labels are in [0, classes) with the ignored label only where asked and
  at least one row kept for reduction="mean" (the mean over no rows is NaN, by design).
Kinks (relu, abs, leaky_relu, elu, sign, maximum/minimum, clip, comparisons, max/min,
argmax, max pooling) are NOT avoided here: the finite-difference check (tests/fuzzing/
checks.py) detects a kink crossed by the difference step and moves to another point.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import graphc as gc
from tests.fuzzing.builder import Builder, all_fixed, fixed_axes

Family = Callable[[Builder, "gc.Value | None"], gc.Value]


def _positive(v: gc.Value) -> gc.Value:
    return gc.square(v) + 0.5


SMOOTH_UNARY: dict[str, Callable[[gc.Value], gc.Value]] = {
    "neg": lambda v: -v,
    "exp": lambda v: gc.exp(gc.tanh(v)),
    "log": lambda v: gc.log(_positive(v)),
    "sqrt": lambda v: gc.sqrt(_positive(v)),
    "rsqrt": lambda v: gc.rsqrt(_positive(v)),
    "tanh": gc.tanh,
    "sigmoid": gc.sigmoid,
    "erf": gc.erf,
    "sin": gc.sin,
    "cos": gc.cos,
    "log1p": lambda v: gc.log1p(gc.tanh(v) * 0.9),
    "expm1": lambda v: gc.expm1(gc.tanh(v)),
    "softplus": gc.softplus,
    "silu": gc.silu,
    "square": gc.square,
    "gelu": gc.gelu,
    "gelu_tanh": lambda v: gc.gelu(v, approximate="tanh"),
    "elu": gc.elu,
    "pow_const": lambda v: _positive(v) ** 1.5,
    "pow_negative": lambda v: _positive(v) ** -0.5,
    "pow_int": lambda v: gc.tanh(v) ** 3,
    "pow_const_base": lambda v: 2.0 ** gc.tanh(v),
    "abs_positive": lambda v: gc.abs(_positive(v)),
}

KINKED_UNARY: dict[str, Callable[[gc.Value], gc.Value]] = {
    "relu": gc.relu,
    "abs": gc.abs,
    "leaky_relu": lambda v: gc.leaky_relu(v, alpha=0.2),
    "elu_alpha": lambda v: gc.elu(v, alpha=0.5),
    "sign": lambda v: gc.sign(v) * 0.5 + v,
    "maximum_zero": lambda v: gc.maximum(v, 0.0),
    "minimum_const": lambda v: gc.minimum(v, 0.3),
}


def _start(b: Builder, v: gc.Value | None) -> gc.Value:
    return v if v is not None else b.input(b.shape(0, 3))


def unary(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    table = b.pick([SMOOTH_UNARY, KINKED_UNARY])
    name = b.pick(sorted(table))
    b.note(f"{name}(.)")
    return table[name](v)


BINARY: dict[str, Callable[[gc.Value, gc.Value], gc.Value]] = {
    "add": lambda a, c: a + c,
    "sub": lambda a, c: a - c,
    "rsub_scalar": lambda a, c: 1.5 - a + c,
    "mul": lambda a, c: a * c,
    "div": lambda a, c: a / _positive(c),
    "rdiv": lambda a, c: c / _positive(a),
    "pow": lambda a, c: _positive(a) ** gc.tanh(c),
    "maximum": gc.maximum,
    "minimum": gc.minimum,
}


def _partner(b: Builder, v: gc.Value) -> gc.Value:
    """A second operand broadcasting against v: v itself, or a fresh input."""
    if b.integer(0, 4) == 0:
        b.note("  second operand: the value itself")
        return v
    return b.input(b.broadcast_partner(v.shape))


def binary(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    name = b.pick(sorted(BINARY))
    other = _partner(b, v)
    if b.coin():
        b.note(f"{name}(., other)")
        return BINARY[name](v, other)
    b.note(f"{name}(other, .)")
    return BINARY[name](other, v)


COMPARISONS = {"greater": gc.greater, "less": gc.less, "greater_equal": gc.greater_equal,
               "less_equal": gc.less_equal, "equal": gc.equal, "not_equal": gc.not_equal}


def compare(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    name = b.pick(sorted(COMPARISONS))
    other = _partner(b, v)
    mask = COMPARISONS[name](v, other)
    if b.coin():
        b.note(f"where({name}(., other), . * 2, other)")
        return gc.where(mask, v * 2.0, other)
    b.note(f"cast({name}(., other)) * . + .")
    return gc.cast(mask, v.dtype) * v + v * 0.5


def clip(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    form = b.integer(0, 3)
    if form == 0:
        b.note("clip(., -0.5, 0.7)")
        return gc.clip(v, -0.5, 0.7)
    if form == 1:
        b.note("clip(., None, 0.2)")
        return gc.clip(v, None, 0.2)
    if form == 2:
        b.note("clip(., -0.3, None)")
        return gc.clip(v, -0.3, None)
    lo = b.input(b.broadcast_partner(v.shape), scale=0.5)
    hi = b.input(b.broadcast_partner(v.shape), scale=0.5)
    b.note("clip(., lo, hi) (bounds may be inverted: numpy gives a_max there)")
    return gc.clip(v, lo - 0.5, hi + 0.5)


def _axis_arg(b: Builder, v: gc.Value, allow_tuple: bool = True):
    nd = v.ndim
    choices: list = [None, *range(nd), *range(-nd, 0)]
    if allow_tuple and nd >= 2:
        choices += [(0, nd - 1), tuple(range(nd))]
    return b.pick(choices)


def reduce(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    if v.ndim == 0:
        v = gc.stack([v, v * 0.5 + 0.25, -v])
    op = b.pick(["sum", "mean", "max", "min"])
    axis, keepdims = _axis_arg(b, v), b.coin()
    b.note(f"{op}(., axis={axis}, keepdims={keepdims})")
    return getattr(gc, op)(v, axis=axis, keepdims=keepdims)


def _size(b: Builder, v: gc.Value, axis) -> int:
    axes = range(v.ndim) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    return int(np.prod([b.least(v.shape)[a] for a in axes]))


def statistics(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    if v.ndim == 0:
        v = gc.stack([v, v * 0.5 + 0.25, -v])
    form = b.pick(["var", "std", "argmax", "argmin", "logsumexp"])
    if form == "std" and not all_fixed(v):
        form = "var"
    if form in ("var", "std"):
        if form == "std":  # sqrt' is infinite at variance 0 (v may be constant by structure)
            b.note("  std of . + fresh (a positive variance)")
            v = v + b.input(v.shape)
        axis = _axis_arg(b, v)
        ddof = b.integer(0, 1)
        if _size(b, v, axis) < 2 + ddof:
            v = gc.concat([v, v * 0.5 - 1.0, gc.tanh(v)], axis=0) if v.shape[0] is not None \
                else gc.stack([v, gc.tanh(v) + 1.0, v * v], axis=0)
            axis = 0
        keepdims = b.coin()
        b.note(f"{form}(., axis={axis}, keepdims={keepdims}, ddof={ddof})")
        return getattr(gc, form)(v, axis=axis, keepdims=keepdims, ddof=ddof)
    if form == "logsumexp":
        axis = _axis_arg(b, v)
        axis = tuple(range(v.ndim)) if axis is None else axis
        keepdims = b.coin()
        b.note(f"logsumexp(., axis={axis}, keepdims={keepdims})")
        return gc.logsumexp(v, axis=axis, keepdims=keepdims)
    axis = b.pick([None, *range(v.ndim)])
    found = getattr(gc, form)(v, axis=axis, keepdims=axis is not None)
    b.ints.append(found)
    if axis is None:
        b.note(f"{form}(.) (int output), then take_along_axis of the flattened value")
        return gc.take_along_axis(v, gc.reshape(found, (1,)), None) * 2.0
    b.note(f"{form}(., axis={axis}, keepdims=True) (int output), then take_along_axis")
    return gc.take_along_axis(v, found, axis) + v * 0.5


def matmul(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    if v.ndim == 0 or v.shape[-1] is None:
        v = b.coupled((b.integer(1, 3), b.integer(1, 4)), v)
    k = v.shape[-1]
    forms = ["right_matrix", "right_vector", "batch_right"]
    if v.ndim >= 2 and v.shape[-2] is not None:
        forms += ["left_matrix", "gram"]
    if v.ndim == 1:
        forms += ["vector_vector", "left_matrix_vector"]
    form = b.pick(forms)
    n = b.integer(1, 4)
    b.note(f"matmul {form}")
    if form == "right_matrix":
        return v @ b.input((k, n), scale=0.7)
    if form == "right_vector":
        return v @ b.input((k,), scale=0.7)
    if form == "batch_right":
        lead = v.shape[-3] if v.ndim >= 3 else b.integer(1, 3)
        return gc.matmul(v, b.input((b.pick([1, lead]) if lead else 1, k, n), scale=0.7))
    if form == "left_matrix":
        return b.input((n, v.shape[-2]), scale=0.7) @ v
    if form == "gram":
        return gc.matmul(v, gc.swapaxes(v, -1, -2)) * 0.3
    if form == "vector_vector":
        return v @ b.input((k,))
    return b.input((n, k), scale=0.7) @ v


def _index_key(b: Builder, v: gc.Value) -> tuple:
    """A basic-indexing key: per axis an int, a non-empty slice (any step sign), or ':';
    maybe a new axis; run-time axes are kept whole."""
    key: list = []
    for d in v.shape:
        if d is None:
            key.append(slice(None))
            continue
        form = b.integer(0, 4)
        if form == 0:
            key.append(b.integer(-d, d - 1))
        elif form == 1:
            start = b.integer(0, d - 1)
            key.append(slice(start, b.integer(start + 1, d + 1)))
        elif form == 2:
            key.append(slice(None, None, b.pick([-1, -2, 2])))
        elif form == 3:  # backwards from the end to `stop` (excluded), maybe written < 0
            stop = b.integer(-1, d - 2)
            if stop >= 0 and b.coin():
                stop -= d
            key.append(slice(d - 1, stop if stop != -1 else None, -1))
        else:
            key.append(slice(None))
    if b.integer(0, 3) == 0:
        key.insert(b.integer(0, len(key)), None)
    return tuple(key)


def layout(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    forms = ["transpose", "expand_squeeze", "broadcast_to", "getitem", "stack"]
    if v.ndim:
        forms += ["reshape", "concat", "pad", "swapaxes", "tril"]
    form = b.pick(forms)
    nd, shape = v.ndim, v.shape
    if form == "transpose":
        rest, perm = list(range(nd)), []
        while rest:
            perm.append(rest.pop(b.integer(0, len(rest) - 1)))
        perm = tuple(perm)
        b.note(f"transpose(., {perm})")
        return gc.transpose(v, perm) if nd else v * 1.5
    if form == "swapaxes":
        a, c = b.integer(-nd, nd - 1), b.integer(-nd, nd - 1)
        b.note(f"swapaxes(., {a}, {c})")
        return gc.swapaxes(v, a, c)
    if form == "expand_squeeze":
        axis = b.integer(0, nd)
        b.note(f"expand_dims(., {axis}), then squeeze of every size-1 fixed axis")
        e = gc.expand_dims(v, axis) * 1.5
        ones = tuple(a for a, d in enumerate(e.shape) if d == 1)
        return gc.squeeze(e, ones) if ones and b.coin() else e
    if form == "broadcast_to":
        lead = b.integer(1, 3)
        target = (lead,) + tuple(b.integer(1, 3) if d == 1 else d for d in shape)
        if None in target:
            b.note("broadcast_like(., . * other)")
            return gc.broadcast_to(v, v * gc.sum(b.input(b.broadcast_partner(shape)))) + v
        b.note(f"broadcast_to(., {target})")
        return gc.broadcast_to(v, target)
    if form == "getitem":
        key = _index_key(b, v)
        b.note(f"getitem(., {key})")
        return v[key] if key else v * 1.5
    if form == "stack":
        axis = b.integer(-nd - 1, nd)
        b.note(f"stack([., fresh], axis={axis})")
        return gc.stack([v, b.input(shape)], axis=axis)
    if form == "reshape":
        return _reshape(b, v)
    if form == "concat":
        axes = fixed_axes(v)
        if not axes:
            v, axes = gc.expand_dims(v, nd), [nd]
            shape = v.shape
        axis = b.pick(axes)
        if b.coin():
            b.note(f"concat([., . * 2], axis={axis})")
            return gc.concat([v, v * 2.0], axis=axis)
        other = list(shape)
        other[axis] = b.integer(1, 3)
        b.note(f"concat([., fresh {tuple(other)}], axis={axis})")
        return gc.concat([b.input(tuple(other)), v], axis=axis)
    if form == "pad":
        return _pad(b, v)
    if form == "tril":
        if None in shape[-2:]:
            return v * 1.5
        k = b.integer(-2, 2)
        which = b.pick(["tril", "triu"])
        b.note(f"{which}(., k={k})")
        return getattr(gc, which)(v, k)
    raise AssertionError(form)


def _factor(b: Builder, size: int) -> tuple[int, ...]:
    dims = []
    while size > 1 and len(dims) < 3 and b.coin():
        divisors = [d for d in range(2, size + 1) if size % d == 0]
        d = b.pick(divisors)
        dims.append(d)
        size //= d
    return tuple(dims) + (size,)


def _reshape(b: Builder, v: gc.Value) -> gc.Value:
    if all_fixed(v):
        target = _factor(b, int(np.prod(v.shape)))
        if b.coin():
            hole = b.integer(0, len(target) - 1)
            target = tuple(-1 if i == hole else d for i, d in enumerate(target))
    else:  # keep the run-time axis first and whole (it must stay `batch` long)
        if v.shape[0] is not None:
            return v * 1.5
        rest = int(np.prod(v.shape[1:]))
        target = (-1,) if v.ndim == 1 else (-1,) + _factor(b, rest)
    b.note(f"reshape(., {target})")
    return gc.reshape(v, target)


def _pad(b: Builder, v: gc.Value) -> gc.Value:
    mode = b.pick(["constant", "edge", "reflect", "symmetric", "wrap"])
    widths = []
    for d in v.shape:
        if d is None:
            widths.append((0, 0))
            continue
        limit = d - 1 if mode == "reflect" else d
        limit = min(limit, 2) if mode != "constant" else 2
        widths.append((b.integer(0, max(limit, 0)), b.integer(0, max(limit, 0))))
    widths = tuple(widths)
    if mode == "constant":
        value = b.pick([0.0, 0.5, -1.0])
        b.note(f"pad(., {widths}, constant {value})")
        return gc.pad(v, widths, constant_values=value)
    b.note(f"pad(., {widths}, mode={mode!r})")
    return gc.pad(v, widths, mode=mode)


def cumsum(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    axis = b.pick([None, *range(-v.ndim, v.ndim)]) if v.ndim and all_fixed(v) else \
        b.pick(range(-v.ndim, v.ndim)) if v.ndim else None
    b.note(f"cumsum(., axis={axis})")
    out = gc.cumsum(v, axis=axis)
    return out * 0.5


def gather(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    form = b.pick(["take", "take_along_axis", "embedding", "one_hot", "getitem_value"])
    if form in ("take", "getitem_value", "take_along_axis") and not fixed_axes(v):
        v = b.coupled((b.integer(1, 4), b.integer(1, 3)), v)
    if form == "take":
        axis = b.pick(fixed_axes(v))
        n = v.shape[axis]
        idx = b.int_input(b.shape(0, 2, 4, dynamic=False), 0, n,
                          dtype=b.pick(["int64", "int32"]))
        b.note(f"take(., idx, axis={axis})")
        return gc.take(v, idx, axis=axis)
    if form == "getitem_value":
        if v.shape[0] is None:
            v = gc.swapaxes(v, 0, fixed_axes(v)[0])
        idx = b.int_input((b.integer(1, 5),), 0, v.shape[0])
        b.note(".[idx]")
        return v[idx]
    if form == "take_along_axis":
        axis = b.pick(fixed_axes(v))
        n = v.shape[axis]
        ishape = tuple(b.integer(1, 4) if a == axis else (1 if b.integer(0, 3) == 0 else d)
                       for a, d in enumerate(v.shape))
        idx = b.int_input(ishape, -n, n)
        b.note(f"take_along_axis(., idx, axis={axis})")
        return gc.take_along_axis(v, idx, axis)
    if form == "embedding":
        num, dim = b.integer(1, 5), b.integer(1, 3)
        ids = b.int_input(b.shape(0, 2, 4), 0, num)
        name = b.name("emb")
        rows = gc.nn.embedding(ids, num, dim, name=name)
        b.param_leaf(f"{name}.w")
        b.note(f"embedding(ids, {num}, {dim})")
        scale = gc.tanh(gc.mean(v)) + 1.5
        return rows * scale
    # one_hot
    if v.ndim == 0 or v.shape[-1] is None:
        v = b.coupled((None, b.integer(1, 4)), v)
    depth = v.shape[-1]
    labels = b.int_input(v.shape[:-1], 0, depth)
    b.note(f"one_hot(labels, {depth}) * .")
    return gc.one_hot(labels, depth, dtype=v.dtype) * v + v * 0.25


def _spatial_input(b: Builder, v: gc.Value | None, rank: int, channels: int,
                   min_size: int) -> gc.Value:
    """v itself when it is (N, channels, *spatial) with spatial sizes >= min_size; else a
    fresh coupled input of that layout."""
    if v is not None and v.ndim == rank and v.shape[1] == channels and \
            all(d is not None and d >= min_size for d in v.shape[2:]):
        return v
    n = b.pick([None, 1, 2])
    spatial = tuple(b.integer(min_size, min_size + 3) for _ in range(rank - 2))
    return b.coupled((n, channels) + spatial, v)


def conv2d(b: Builder, v: gc.Value | None) -> gc.Value:
    groups = b.integer(1, 2)
    cin, cout = groups * b.integer(1, 2), groups * b.integer(1, 2)
    kh, kw = b.integer(1, 3), b.integer(1, 3)
    stride = (b.integer(1, 2), b.integer(1, 2))
    padding = (b.integer(0, 2), b.integer(0, 2))
    dilation = (b.integer(1, 2), b.integer(1, 2))
    extent = max((kh - 1) * dilation[0] + 1 - 2 * padding[0],
                 (kw - 1) * dilation[1] + 1 - 2 * padding[1], 1)
    x = _spatial_input(b, v, 4, cin, extent)
    w = b.input((cout, cin // groups, kh, kw), scale=0.5)
    b.note(f"conv2d(x, w, stride={stride}, padding={padding}, dilation={dilation}, "
           f"groups={groups})")
    return gc.ops.conv2d(x, w, stride, padding, dilation, groups)


def conv1d(b: Builder, v: gc.Value | None) -> gc.Value:
    groups = b.integer(1, 2)
    cin, cout = groups * b.integer(1, 2), groups * b.integer(1, 2)
    k, stride, padding, dilation = b.integer(1, 3), b.integer(1, 2), b.integer(0, 2), \
        b.integer(1, 2)
    x = _spatial_input(b, v, 3, cin, max((k - 1) * dilation + 1 - 2 * padding, 1))
    w = b.input((cout, cin // groups, k), scale=0.5)
    b.note(f"conv1d(x, w, stride={stride}, padding={padding}, dilation={dilation}, "
           f"groups={groups})")
    return gc.ops.conv1d(x, w, stride, padding, dilation, groups)


def pool(b: Builder, v: gc.Value | None) -> gc.Value:
    kernel = (b.integer(1, 3), b.integer(1, 3))
    stride = b.pick([None, (b.integer(1, 3), b.integer(1, 2))])
    padding = (b.integer(0, kernel[0] // 2), b.integer(0, kernel[1] // 2))
    channels = v.shape[1] if v is not None and v.ndim == 4 and v.shape[1] else b.integer(1, 2)
    x = _spatial_input(b, v, 4, channels, max(max(kernel) - 2 * min(padding), 1))
    op = b.pick(["max_pool2d", "avg_pool2d"])
    b.note(f"{op}(., {kernel}, stride={stride}, padding={padding})")
    return getattr(gc.nn, op)(x, kernel, stride, padding)


def norm(b: Builder, v: gc.Value | None) -> gc.Value:
    form = b.pick(["batch_norm", "layer_norm"])
    name = b.name("norm")
    if form == "batch_norm":
        if v is None or v.ndim not in (2, 4) or v.shape[1] is None or \
                int(np.prod(b.least(v.shape))) < 2 * v.shape[1]:
            rank = b.pick([2, 4])
            # at least 2 values per channel whatever the batch (torch refuses 1)
            shape = (b.pick([None, 2, 3] if rank == 4 else [2, 3]), b.integer(1, 3)) + \
                (2,) * (rank - 2)
            v = b.coupled(shape, v)
        out = gc.nn.batch_norm(v, name=name, training=True)
        b.param_leaf(f"{name}.gain", scale=0.3, offset=1.0)
        b.param_leaf(f"{name}.bias", scale=0.3)
        b.note("batch_norm(., training=True)")
        return out
    v = _start(b, v)
    if v.ndim == 0 or v.shape[-1] is None or v.shape[-1] < 2:
        v = b.coupled((None, b.integer(2, 4)), v)
    axes = -1
    if v.ndim >= 2 and v.shape[-2] is not None and b.coin():
        axes = (-2, -1)
    out = gc.nn.layer_norm(v, name=name, axes=axes)
    b.param_leaf(f"{name}.gain", scale=0.3, offset=1.0)
    b.param_leaf(f"{name}.bias", scale=0.3)
    b.note(f"layer_norm(., axes={axes})")
    return out


def softmax(b: Builder, v: gc.Value | None) -> gc.Value:
    v = _start(b, v)
    form = b.pick(["softmax", "log_softmax", "cross_entropy", "bce", "mse"])
    if form in ("softmax", "log_softmax"):
        if v.ndim == 0:
            v = gc.stack([v, -v, v * 0.5])
        axis = b.integer(-v.ndim, v.ndim - 1)
        b.note(f"{form}(., axis={axis})")
        return getattr(gc, form)(v, axis=axis) * 2.0
    if form == "bce":
        target = b.uniform_input(b.broadcast_partner(v.shape), 0.0, 1.0)
        reduction = b.pick(["none", "mean", "sum"])
        b.note(f"binary_cross_entropy_with_logits(., t, reduction={reduction!r})")
        return gc.binary_cross_entropy_with_logits(v, target, reduction=reduction)
    if form == "mse":
        b.note("mse(., fresh)")
        return gc.mse(v, b.input(b.broadcast_partner(v.shape)))
    if v.ndim == 0 or v.shape[-1] is None:
        v = b.coupled((None, b.integer(1, 4)), v)
    classes = v.shape[-1]
    smoothing = b.pick([0.0, 0.0, 0.1])
    reduction = b.pick(["none", "mean", "sum"])
    ignore = b.pick([None, None, 0, -100] if classes > 1 else [None, -100])
    dtype = b.pick(["int64", "int32"])
    labels = b.int_input(v.shape[:-1], 0, classes, dtype=dtype)
    if ignore is not None:
        _ignore_some(b, labels, ignore, keep_one=reduction == "mean")
    b.note(f"softmax_cross_entropy(., labels, label_smoothing={smoothing}, "
           f"ignore_index={ignore}, reduction={reduction!r})")
    kwargs = {} if ignore is None else {"ignore_index": ignore}
    return gc.softmax_cross_entropy(v, labels, label_smoothing=smoothing,
                                    reduction=reduction, **kwargs)


def _ignore_some(b: Builder, labels: gc.Value, ignore: int, keep_one: bool) -> None:
    leaf = next(leaf for leaf in b.fixed if leaf.value is labels)
    data = leaf.data
    drop = b.rng.random(data.shape) < 0.3
    data[drop] = ignore
    if keep_one and data.size and np.all(data == ignore):
        data.flat[0] = 1 if ignore == 0 else 0


SCAN_CELLS: dict[str, Callable[[gc.Value, gc.Value, gc.Value], gc.Value]] = {
    "tanh_rnn": lambda c, x, w: gc.tanh(c * w + x),
    "gated": lambda c, x, w: c * gc.sigmoid(x) + gc.tanh(x * w),
    "leaky": lambda c, x, w: c * 0.5 + gc.relu(x) * w,
    "sin_mix": lambda c, x, w: gc.sin(c) * 0.8 + x * w,
}


def scan(b: Builder, v: gc.Value | None) -> gc.Value:
    if v is None or v.ndim == 0 or None in v.shape or v.shape[0] > 5:
        v = b.coupled((b.integer(1, 4), b.integer(1, 3)), v)
    step_shape = v.shape[1:]
    init = b.input(tuple(d for d in step_shape))
    w = b.input(tuple(d for d in step_shape) or (), scale=0.7)
    cell_name = b.pick(sorted(SCAN_CELLS))
    cell = SCAN_CELLS[cell_name]
    output = b.pick(["ys", "carry", "both"])

    def body(c: gc.Value, x: gc.Value) -> tuple[gc.Value, gc.Value]:
        new = cell(c, x, w)
        return new, new * x

    reverse = b.coin()
    b.note(f"scan(cell={cell_name}, reverse={reverse}) -> {output}")
    final, ys = gc.scan(body, init, v, reverse=reverse)
    if output == "ys":
        return ys
    if output == "carry":
        return final
    return ys + final


FAMILIES: dict[str, Family] = {
    "unary": unary, "binary": binary, "compare": compare, "clip": clip, "reduce": reduce,
    "statistics": statistics, "matmul": matmul, "layout": layout, "cumsum": cumsum,
    "gather": gather, "conv2d": conv2d, "conv1d": conv1d, "pool": pool, "norm": norm,
    "softmax": softmax, "scan": scan,
}
