"""graphc: a JIT-compiled static-graph framework for training neural networks.

Declare a graph (`Graph`, ops, `nn`), derive its backward graph symbolically (`grad`),
inspect it (`format_graph`, `Graph.to_networkx`), evaluate it with the numpy reference
interpreter (`evaluate`), compile a whole training step into Numba kernels (`compile`),
train it on data (`fit`, `metrics`) and save or resume it (`step.save`, `step.load`).
"""

# the kernel library, graphc.kernels: installed inside graphc, or kernels/ of the repository
from graphc._library import mount as _mount_kernel_library

_mount_kernel_library()

from graphc import data, distributed, metrics, nn, optim
from graphc.autodiff import grad
from graphc.checkpoint import CheckpointError
from graphc.compiler import compile
from graphc.errors import FeedError, GraphError, IndexRangeError, NonFiniteError
from graphc.html_view import to_html
from graphc.inspect import format_graph, to_dot, to_networkx
from graphc.interpret import evaluate
from graphc.ir import Graph, Value
from graphc.ops.custom import custom_op
from graphc.ops.registry import defop
from graphc.ops import (
    abs, add, broadcast_to, cast, concat, div, equal, erf, exp, expand_dims, gelu, greater,
    leaky_relu, less, log, log_softmax, logsumexp, matmul, max, maximum, mean, min, minimum,
    mse, mul, neg, one_hot, pow, relu, reshape, rsqrt, scan, sigmoid, sign, softmax,
    softmax_cross_entropy, sqrt, square, squeeze, stack, stop_gradient, sub, sum, swapaxes,
    take, tanh, transpose, where, zeros_like,
)
from graphc.ops import (
    binary_cross_entropy_with_logits, clip, cos, elu, expm1, greater_equal, less_equal, log1p,
    not_equal, silu, sin, softplus,
)
from graphc.ops import (  # statistics, running sums, gathers along an axis, layout
    arange, argmax, argmin, cumsum, pad, std, take_along_axis, tril, triu, var,
)
from graphc.train import Callback, Checkpoint, EarlyStopping, History, fit

__version__ = "0.1.0"

__all__ = [
    "custom_op", "defop",
    "Callback", "Checkpoint", "CheckpointError", "EarlyStopping", "History", "fit", "metrics",
    "FeedError", "Graph", "GraphError", "IndexRangeError", "NonFiniteError", "Value", "abs",
    "add", "broadcast_to", "cast", "compile", "concat", "data", "distributed", "div", "equal",
    "erf", "evaluate", "exp", "expand_dims", "format_graph", "gelu", "grad", "greater",
    "leaky_relu", "less", "log",
    "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum", "mse",
    "mul", "neg", "nn", "one_hot", "optim", "pow", "relu", "reshape", "rsqrt", "scan", "sigmoid",
    "sign", "softmax", "softmax_cross_entropy", "sqrt", "square", "squeeze", "stack",
    "stop_gradient", "sub", "sum", "swapaxes", "take", "tanh", "to_dot", "to_html", "to_networkx",
    "transpose", "where", "zeros_like",
    "binary_cross_entropy_with_logits", "clip", "cos", "elu", "expm1", "greater_equal",
    "less_equal", "log1p", "not_equal", "silu", "sin", "softplus",
    "arange", "argmax", "argmin", "cumsum", "pad", "std", "take_along_axis", "tril", "triu",
    "var",
]
