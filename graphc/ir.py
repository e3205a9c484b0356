"""The graph IR: immutable nodes appended to a `Graph`, and `Value`, the user's handle on one.

Invariants: a node's inputs always have smaller ids than the node itself, so the node list is
in topological order; nodes are never changed or removed once appended (passes build new
graphs). Shapes are tuples of ints, with `None` for a size known only at run time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import GraphError, user_location

Shape = tuple[int | None, ...]

FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)

ROLES = ("input", "param", "const", "forward", "backward")


def canonical_dtype(dtype: Any) -> str:
    """Name of a supported dtype ('float32', 'int64', 'bool', ...) or GraphError."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise GraphError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}\n"
                         f"  at {user_location()}") from None
    if name not in DTYPES:
        raise GraphError(f"unsupported dtype {name!r}; expected one of {', '.join(DTYPES)}\n"
                         f"  at {user_location()}")
    return name


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def format_shape(shape: Shape) -> str:
    """`(None, 64)` style, with `None` for run-time sizes."""
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


@dataclass(frozen=True)
class Provenance:
    """Why a backward node exists: the forward node whose rule built it, and the rule."""

    forward: int
    rule: str


@dataclass(frozen=True)
class GradientBroadcast:
    """A gradient summed to its operand's shape as it is known when the graph is built.

    On `axes` the operand's size is known only at run time and `gradient`'s is not 1: the
    sum is right only if the two sizes agree at run time (an operand fed 1 there that
    broadcast against a larger size would need its gradient summed over that axis).
    """

    operand: int
    gradient: int
    forward: int
    axes: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Node:
    """One operation. `attrs` hold the op's static parameters; never mutate a Node."""

    id: int
    op: str
    inputs: tuple[int, ...]
    attrs: dict[str, Any]
    shape: Shape
    dtype: str
    role: str
    where: str
    name: str | None = None
    provenance: Provenance | None = None

    @property
    def label(self) -> str:
        """The node's name if it has one, else `%id`."""
        return self.name if self.name is not None else f"%{self.id}"


@dataclass
class CustomGradient:
    """A gradient rule that replaces autodiff through the subgraph ending at `node`.

    `rule(g, out, inputs, needs)` returns one gradient (or None) per entry of `inputs`.
    """

    name: str
    inputs: tuple[int, ...]
    rule: Callable[..., Sequence[Any]]


_provenance: contextvars.ContextVar[Provenance | None] = contextvars.ContextVar(
    "graphc_provenance", default=None
)


@dataclass(frozen=True)
class RunningVariance:
    """How a layer updates its running-variance state, for data-parallel steps that combine
    the ranks' batches as one batch (graphc.distributed): running * (1 - momentum) +
    momentum * count / (count - 1) * var, where `var` is the biased variance of `count` rows
    around their mean `mean`, and `shift` a value equal on every rank near that mean (the
    running mean). Node ids, per channel (`count` a scalar)."""

    mean: int
    var: int
    count: int
    shift: int
    momentum: float


@contextlib.contextmanager
def building_gradient(forward: int, rule: str) -> Iterator[None]:
    """Mark every node built inside the block as a backward node produced by `rule`."""
    token = _provenance.set(Provenance(forward, rule))
    try:
        yield
    finally:
        _provenance.reset(token)


class Graph:
    """A static computation graph: inputs, parameters, constants and the ops between them.

    `seed` drives the parameter initialisers of `graphc.nn`; `dtype` is the default float
    dtype of inputs, parameters and constants.
    """

    def __init__(self, name: str = "graph", seed: int = 0, dtype: str = "float32") -> None:
        self.name = name
        self.seed = seed
        self.dtype = canonical_dtype(dtype)
        if not is_float(self.dtype):
            raise GraphError(f"Graph dtype must be a float dtype, got {self.dtype!r}")
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []
        self.param_values: dict[str, np.ndarray] = {}
        self.custom_gradients: dict[int, CustomGradient] = {}
        self.outputs: list[int] = []
        # Compiled programs only: state buffers (optimizer moments) and in-place updates,
        # each (storage name, node id) meaning "after the step, storage[name] = node".
        self.state_values: dict[str, np.ndarray] = {}
        self.updates: list[tuple[str, int]] = []
        # State updates layers declare (batch-norm statistics, RNG counters), each
        # (state name, new-value node, anchor node, follows the training/inference view):
        # compile adds those whose anchor it runs (graphc.passes.mode.apply_view).
        self.state_updates: list[tuple[str, int, int, bool]] = []
        # The running variances among those, by state name (RunningVariance).
        self.running_variances: dict[str, RunningVariance] = {}
        # Gradients whose sum over broadcast axes holds only for run-time sizes that agree
        # (autodiff.grad records them; autodiff.check_gradient_broadcast checks them).
        self.gradient_broadcasts: list[GradientBroadcast] = []
        # Set by the scheduling passes (fusion, sharding, memory planning) on compiled programs.
        self.groups: list[Any] | None = None
        self.memory: Any = None
        self.shards: Any = None
        self._names: dict[str, int] = {}
        self._auto_names: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

    # -- declaring leaves -------------------------------------------------------------

    def input(self, name: str, shape: Sequence[int | None], dtype: Any = None) -> Value:
        """A value fed at run time. `None` in `shape` = size known only at run time."""
        dims = _check_shape(shape, f"input {name!r}")
        dt = self.dtype if dtype is None else canonical_dtype(dtype)
        self._claim_name(name, "input")
        return self._leaf("input", dims, dt, name, {})

    def param(self, name: str, value: Any, dtype: Any = None) -> Value:
        """A trainable parameter with initial `value`; floats take the graph's dtype."""
        array = np.asarray(value)
        if dtype is not None:
            dt = canonical_dtype(dtype)
        elif array.dtype.kind == "f":
            dt = self.dtype
        else:
            dt = canonical_dtype(array.dtype)
        if not is_float(dt):
            raise GraphError(f"parameter {name!r} must be floating point, got {dt}\n"
                             f"  at {user_location()}")
        self._claim_name(name, "param")
        self.param_values[name] = np.array(array, dtype=dt, order="C", copy=True)
        return self._leaf("param", tuple(array.shape), dt, name, {})

    def const(self, value: Any, dtype: Any = None) -> Value:
        """A constant; Python and numpy floats take the graph's dtype unless `dtype` says."""
        array = np.asarray(value)
        if dtype is not None:
            dt = canonical_dtype(dtype)
        elif array.dtype.kind == "f":
            dt = self.dtype
        elif array.dtype.kind in "iu" and isinstance(value, int):
            dt = "int64"
        else:
            dt = canonical_dtype(array.dtype)
        frozen = np.array(array, dtype=dt, copy=True)
        frozen.setflags(write=False)
        return self._leaf("const", tuple(frozen.shape), dt, None, {"value": frozen})

    def fresh_name(self, prefix: str) -> str:
        """A parameter-name prefix not used yet in this graph: `prefix0`, `prefix1`, ..."""
        while True:
            n = self._auto_names.get(prefix, 0)
            self._auto_names[prefix] = n + 1
            candidate = f"{prefix}{n}"
            if not any(k == candidate or k.startswith(candidate + ".") for k in self._names):
                return candidate

    # -- reading ----------------------------------------------------------------------

    @property
    def inputs(self) -> list[Value]:
        """Input values, in creation order."""
        return [Value(self, n.id) for n in self.nodes if n.op == "input"]

    @property
    def params(self) -> list[Value]:
        """Parameter values, in creation order."""
        return [Value(self, n.id) for n in self.nodes if n.op == "param"]

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def value(self, node_id: int) -> Value:
        return Value(self, node_id)

    def lookup(self, name: str) -> Value:
        """The input or parameter called `name`."""
        if name not in self._names:
            known = ", ".join(sorted(self._names)) or "none"
            raise GraphError(f"graph {self.name!r} has no input or parameter {name!r}; "
                             f"known names: {known}")
        return Value(self, self._names[name])

    def __getitem__(self, name: str) -> Value:
        return self.lookup(name)

    def to_networkx(self, values: Any = None) -> Any:
        """A `networkx.DiGraph` of the graph (or of the subgraph the `values` depend on)."""
        from graphc.inspect import to_networkx

        return to_networkx(self if values is None else values)

    # -- building ---------------------------------------------------------------------

    def add_node(self, op: str, inputs: Sequence[int], attrs: dict[str, Any], shape: Shape,
                 dtype: str, *, name: str | None = None, where: str | None = None) -> Node:
        """Append a node (inputs must already be in this graph). Used by op definitions."""
        prov = _provenance.get()
        if op in ("input", "param", "const", "state"):
            role = "param" if op == "state" else op
        else:
            role = "backward" if prov is not None else "forward"
        node = Node(len(self.nodes), op, tuple(inputs), attrs, tuple(shape), dtype, role,
                    where if where is not None else user_location(), name, prov)
        self.nodes.append(node)
        return node

    def _leaf(self, op: str, shape: Shape, dtype: str, name: str | None,
              attrs: dict[str, Any]) -> Value:
        node = self.add_node(op, (), attrs, shape, dtype, name=name)
        if name is not None:
            self._names[name] = node.id
        return Value(self, node.id)

    def _claim_name(self, name: str, what: str) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"{what} name must be a non-empty string, got {name!r}\n"
                         f"  at {user_location()}")
        if name in self._names:
            other = self.nodes[self._names[name]]
            raise GraphError(f"{what} {name!r}: the name is already used by the {other.op} "
                             f"declared at {other.where}\n  at {user_location()}")

    def state(self, name: str, value: np.ndarray) -> Value:
        """A non-trainable buffer updated by the compiled step (optimizer moments)."""
        self._claim_name(name, "state")
        self.state_values[name] = np.array(value, order="C", copy=True)
        return self._leaf("state", tuple(value.shape), canonical_dtype(value.dtype), name, {})

    def copy_structure(self) -> Graph:
        """A new empty graph sharing this one's name, seed, dtype and leaf storage."""
        other = Graph.__new__(Graph)
        other.name, other.seed, other.dtype, other.rng = self.name, self.seed, self.dtype, self.rng
        other.nodes = []
        other.param_values = self.param_values
        other.state_values = self.state_values
        other.custom_gradients = {}
        other.outputs = []
        other.updates = []
        other.state_updates = []
        other.running_variances = {}
        other.gradient_broadcasts = []
        other.groups, other.memory, other.shards = None, None, None
        other._names, other._auto_names = {}, self._auto_names
        return other

    def fork(self) -> Graph:
        """A copy with the same nodes that new nodes can be appended to without changing
        this graph (parameter storage stays shared)."""
        other = self.copy_structure()
        other.nodes = list(self.nodes)
        other.custom_gradients = dict(self.custom_gradients)
        other.outputs = list(self.outputs)
        other.updates = list(self.updates)
        other.state_updates = list(self.state_updates)
        other.running_variances = dict(self.running_variances)
        other.gradient_broadcasts = list(self.gradient_broadcasts)
        other._names = dict(self._names)
        return other


def _check_shape(shape: Sequence[int | None], what: str) -> Shape:
    try:
        dims = tuple(shape)
    except TypeError:
        raise GraphError(f"{what}: shape must be a tuple of ints or None, got {shape!r}\n"
                         f"  at {user_location()}") from None
    for d in dims:
        if d is not None and (not isinstance(d, (int, np.integer)) or d < 0):
            raise GraphError(f"{what}: shape must be a tuple of ints >= 0 or None, got "
                             f"{shape!r}\n  at {user_location()}")
    return tuple(None if d is None else int(d) for d in dims)


class Value:
    """A handle on one node of a graph; supports numpy-style operators."""

    __slots__ = ("graph", "id")
    __array_ufunc__ = None  # numpy defers to our reflected operators

    def __init__(self, graph: Graph, node_id: int) -> None:
        self.graph = graph
        self.id = node_id

    @property
    def node(self) -> Node:
        return self.graph.nodes[self.id]

    @property
    def shape(self) -> Shape:
        return self.node.shape

    @property
    def dtype(self) -> str:
        return self.node.dtype

    @property
    def ndim(self) -> int:
        return len(self.node.shape)

    @property
    def name(self) -> str | None:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op

    def __repr__(self) -> str:
        n = self.node
        return f"<Value {n.label} = {n.op} {format_shape(n.shape)} {n.dtype}>"

    def __hash__(self) -> int:
        return hash((id(self.graph), self.id))

    def __bool__(self) -> bool:
        raise TypeError("a graphc Value has no truth value while the graph is being built; "
                        "use gc.where for data-dependent choices")

    def __len__(self) -> int:
        if not self.shape or self.shape[0] is None:
            raise TypeError(f"len() of a Value with shape {format_shape(self.shape)}")
        return self.shape[0]

    def __iter__(self) -> Iterable[Value]:
        raise TypeError("a graphc Value cannot be iterated; index it with slices")

    # Operators delegate to the op library (imported late: ops depend on this module).
    def __add__(self, other: Any) -> Value:
        from graphc import ops
        return ops.add(self, other)

    def __radd__(self, other: Any) -> Value:
        from graphc import ops
        return ops.add(other, self)

    def __sub__(self, other: Any) -> Value:
        from graphc import ops
        return ops.sub(self, other)

    def __rsub__(self, other: Any) -> Value:
        from graphc import ops
        return ops.sub(other, self)

    def __mul__(self, other: Any) -> Value:
        from graphc import ops
        return ops.mul(self, other)

    def __rmul__(self, other: Any) -> Value:
        from graphc import ops
        return ops.mul(other, self)

    def __truediv__(self, other: Any) -> Value:
        from graphc import ops
        return ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Value:
        from graphc import ops
        return ops.div(other, self)

    def __pow__(self, other: Any) -> Value:
        from graphc import ops
        return ops.pow(self, other)

    def __rpow__(self, other: Any) -> Value:
        from graphc import ops
        return ops.pow(other, self)

    def __matmul__(self, other: Any) -> Value:
        from graphc import ops
        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Value:
        from graphc import ops
        return ops.matmul(other, self)

    def __neg__(self) -> Value:
        from graphc import ops
        return ops.neg(self)

    def __abs__(self) -> Value:
        from graphc import ops
        return ops.abs(self)

    def __gt__(self, other: Any) -> Value:
        from graphc import ops
        return ops.greater(self, other)

    def __lt__(self, other: Any) -> Value:
        from graphc import ops
        return ops.less(self, other)

    def __ge__(self, other: Any) -> Value:
        from graphc import ops
        return ops.greater_equal(self, other)

    def __le__(self, other: Any) -> Value:
        from graphc import ops
        return ops.less_equal(self, other)

    # `==` stays identity (Values are dict keys and `in` operands); gc.equal compares
    # elementwise. `!=` never takes part in hashing or containment, so it is elementwise.
    def __ne__(self, other: Any) -> Value:  # type: ignore[override]
        from graphc import ops
        return ops.not_equal(self, other)

    @property
    def T(self) -> Value:  # noqa: N802 - numpy's name
        from graphc import ops
        return ops.transpose(self)

    def __getitem__(self, index: Any) -> Value:
        from graphc import ops
        return ops.getitem(self, index)

    def reshape(self, *shape: Any) -> Value:
        from graphc import ops
        return ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple)
                           else shape)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Value:
        from graphc import ops
        return ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Value:
        from graphc import ops
        return ops.mean(self, axis=axis, keepdims=keepdims)

    def astype(self, dtype: Any) -> Value:
        from graphc import ops
        return ops.cast(self, dtype)


def as_values(values: Any) -> tuple[list[Value], bool]:
    """(list of Values, whether a single Value was given)."""
    if isinstance(values, Value):
        return [values], True
    try:
        items = list(values)
    except TypeError:
        raise GraphError(f"expected a Value or a list of Values, got {type(values).__name__}") \
            from None
    for v in items:
        if not isinstance(v, Value):
            raise GraphError(f"expected Values, got {type(v).__name__}: {v!r}")
    if items and any(v.graph is not items[0].graph for v in items):
        raise GraphError("values from different graphs cannot be used together")
    return items, False


def ancestors(graph: Graph, roots: Iterable[int], *, through_custom: bool = False) -> set[int]:
    """Ids of `roots` and every node they depend on (iterative: deep graphs are fine)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        custom = graph.custom_gradients.get(nid) if through_custom else None
        stack.extend(custom.inputs if custom is not None else graph.nodes[nid].inputs)
    return seen


