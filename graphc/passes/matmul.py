"""Matrix products over a flattened batch: one 2-D GEMM instead of many small ones."""

from __future__ import annotations

import math

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Rewriter


def flatten_matmuls(graph: Graph) -> Graph:
    """Turn products of a batched operand and a matrix into single 2-D matrix products.

    Rules (r >= 3, every size but the batch axes' fixed):
    - matmul(a (..., m, k), b (k, n)) -> reshape(reshape(a, (-1, k)) @ b, (..., m, n)): one
      GEMM of (prod(...) * m) rows instead of prod(...) GEMMs of m rows (a linear layer on
      3-D input and its input gradient);
    - sum(matmul(swap_last(a) (..., k, m), g (..., m, n)), axes=batch axes)
      -> swap_last(reshape(a, (-1, k))) @ reshape(g, (-1, n)): the weight gradient of such
      a layer as one GEMM over every row instead of a batched product and a sum.
    The output of a rewritten product may have at most one run-time size. Nodes the rules
    leave without users are removed by dead-code elimination.
    Invariant: every output and update has the same value before and after (up to the
    order in which BLAS sums).
    """
    rw = Rewriter(graph)
    for node in graph.nodes:
        if node.op == "matmul" and _batched_by_matrix(graph, node):
            _flatten_product(rw, graph, node)
        elif node.op == "sum" and _summed_weight_gradient(graph, node):
            _flatten_weight_gradient(rw, graph, node)
        else:
            rw.emit(node)
    return rw.finish()


def _flat_rows(shape: tuple) -> int | None:
    """Rows of `shape` with its last axis kept: the product of the others, None if unknown."""
    lead = shape[:-1]
    return None if None in lead else math.prod(lead)


def _runtime_dims(shape: tuple) -> int:
    return sum(d is None for d in shape)


def _batched_by_matrix(graph: Graph, node: Node) -> bool:
    a, b = (graph.nodes[i] for i in node.inputs)
    return (len(a.shape) >= 3 and len(b.shape) == 2 and a.shape[-1] is not None
            and None not in b.shape and _runtime_dims(node.shape) <= 1)


def _swap_last_perm(rank: int) -> tuple[int, ...]:
    return (*range(rank - 2), rank - 1, rank - 2)


def _summed_weight_gradient(graph: Graph, node: Node) -> bool:
    product = graph.nodes[node.inputs[0]]
    if product.op != "matmul":
        return False
    rank = len(product.shape)
    swapped, g = (graph.nodes[i] for i in product.inputs)
    if rank < 3 or swapped.op != "transpose" or swapped.attrs["perm"] != _swap_last_perm(rank):
        return False
    a = graph.nodes[swapped.inputs[0]]
    return (tuple(node.attrs["axes"]) == tuple(range(rank - 2))
            and len(a.shape) == rank and len(g.shape) == rank
            and a.shape[:-2] == g.shape[:-2] == product.shape[:-2]
            and a.shape[-1] is not None and g.shape[-1] is not None
            and None not in node.shape)


def _reshape(rw: Rewriter, template: Node, operand: int, shape: tuple) -> int:
    """Emit `operand` reshaped to `shape` (None: the one size known at run time)."""
    dims = tuple(-1 if d is None else d for d in shape)
    return rw.emit(template, inputs=(operand,), op="reshape", attrs={"shape": dims},
                   shape=shape)


def _flat(rw: Rewriter, template: Node, operand: Node) -> int:
    shape = (_flat_rows(operand.shape), operand.shape[-1])
    return _reshape(rw, template, rw.new_id(operand.id), shape)


def _flatten_product(rw: Rewriter, graph: Graph, node: Node) -> None:
    a, b = (graph.nodes[i] for i in node.inputs)
    flat_a = _flat(rw, node, a)
    rows = rw.target.nodes[flat_a].shape[0]
    product = rw.emit(node, inputs=(flat_a, rw.new_id(b.id)), shape=(rows, node.shape[-1]))
    _reshape(rw, node, product, node.shape)


def _flatten_weight_gradient(rw: Rewriter, graph: Graph, node: Node) -> None:
    product = graph.nodes[node.inputs[0]]
    swapped, g = (graph.nodes[i] for i in product.inputs)
    a = graph.nodes[swapped.inputs[0]]
    flat_a = _flat(rw, node, a)
    rows, k = rw.target.nodes[flat_a].shape
    swapped_a = rw.emit(node, inputs=(flat_a,), op="transpose", attrs={"perm": (1, 0)},
                        shape=(k, rows))
    flat_g = _flat(rw, node, g)
    out = rw.emit(node, inputs=(swapped_a, flat_g), op="matmul", attrs={},
                  shape=(k, g.shape[-1]))
    if node.shape != (k, g.shape[-1]):
        _reshape(rw, node, out, node.shape)
