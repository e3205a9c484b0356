"""The op library: primitives (declared with `defop`) and composites built on them."""

from graphc.ops.elementwise import (
    abs,
    add,
    cast,
    div,
    equal,
    erf,
    exp,
    greater,
    leaky_relu,
    less,
    log,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    relu,
    rsqrt,
    sigmoid,
    sign,
    sqrt,
    square,
    stop_gradient,
    sub,
    tanh,
    where,
)
from graphc.ops.linalg import matmul
from graphc.ops.conv import (
    avg_pool2d,
    conv2d,
    conv2d_grad_input,
    conv2d_grad_weight,
    max_pool2d,
)
from graphc.ops.mode import mode_select
from graphc.ops.random import keep_mask
from graphc.ops.nnfuncs import (
    gelu,
    log_softmax,
    logsumexp,
    mse,
    one_hot,
    softmax,
    softmax_cross_entropy,
)
from graphc.ops.reduce import count, max, mean, min, sum
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
    "avg_pool2d", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "keep_mask",
    "max_pool2d", "mode_select",
]
