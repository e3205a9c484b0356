"""The op library: primitives (declared with `defop`) and composites built on them."""

from graphc.ops.elementwise import (
    abs,
    add,
    cast,
    clip,
    cos,
    div,
    elu,
    equal,
    erf,
    exp,
    expm1,
    greater,
    greater_equal,
    leaky_relu,
    less,
    less_equal,
    log,
    log1p,
    maximum,
    minimum,
    mul,
    neg,
    not_equal,
    pow,
    relu,
    rsqrt,
    sigmoid,
    sign,
    silu,
    sin,
    softplus,
    sqrt,
    square,
    stop_gradient,
    sub,
    tanh,
    where,
)
from graphc.ops.layout import arange, pad, tril, triu
from graphc.ops.linalg import matmul
from graphc.ops.conv import (
    avg_pool2d,
    conv1d,
    conv2d,
    conv2d_grad_input,
    conv2d_grad_weight,
    max_pool2d,
)
from graphc.ops.mode import mode_select
from graphc.ops.random import keep_mask
from graphc.ops.nnfuncs import (
    binary_cross_entropy_with_logits,
    gelu,
    log_softmax,
    logsumexp,
    mse,
    one_hot,
    softmax,
    softmax_cross_entropy,
)
from graphc.ops.reduce import count, max, mean, min, sum
from graphc.ops.cumsum import cumsum
from graphc.ops.statistics import argmax, argmin, std, var
from graphc.ops.registry import OPS, OpDef, defop, make
from graphc.ops.scan import scan
from graphc.ops.views import (
    broadcast_like,
    broadcast_to,
    concat,
    expand_dims,
    getitem,
    reshape,
    reshape_like,
    squeeze,
    stack,
    swapaxes,
    take,
    take_along_axis,
    transpose,
    zeros_like,
)

__all__ = [
    "OPS", "OpDef", "abs", "add", "broadcast_like", "broadcast_to", "cast", "concat", "count",
    "defop", "div", "equal", "erf", "exp", "expand_dims", "gelu", "getitem", "greater",
    "leaky_relu", "less", "log", "log_softmax", "logsumexp", "make", "matmul", "max", "maximum",
    "mean", "min", "minimum", "mse", "mul", "neg", "one_hot", "pow", "relu", "reshape",
    "reshape_like", "rsqrt", "scan", "sigmoid", "sign", "softmax", "softmax_cross_entropy", "sqrt",
    "square", "squeeze", "stack", "stop_gradient", "sub", "sum", "swapaxes", "take", "tanh",
    "transpose", "where", "zeros_like",
    # convolution, pooling, training/inference views, dropout masks
    "avg_pool2d", "conv1d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "keep_mask",
    "max_pool2d", "mode_select",
    # math, comparisons and losses
    "binary_cross_entropy_with_logits", "clip", "cos", "elu", "expm1", "greater_equal",
    "less_equal", "log1p", "not_equal", "silu", "sin", "softplus",
    # statistics, running sums, gathers along an axis, layout
    "arange", "argmax", "argmin", "cumsum", "pad", "std", "take_along_axis", "tril", "triu",
    "var",
]
