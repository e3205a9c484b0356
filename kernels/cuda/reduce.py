"""Reduction skeletons for the CUDA target (the code generator fills in the fused body).

A loop group that ends in a reduction becomes two kernels in one file:

- `kernel`: one block per output element (blocks loop over outputs). Thread `tid` folds
  the reduced elements tid, tid + B, tid + 2B, ... in order, then the block combines the
  B partial results in shared memory with a fixed tree (pairs (i, i + B/2), then
  (i, i + B/4), ...). No atomics: the order depends only on B, so a result is the same
  on every run. Used for long reductions (the loss over a batch, bias gradients).
- `kernel_rows`: one thread per output element folding its reduced elements in order (no
  shared memory, no barriers): used for short rows (softmax and cross-entropy over a few
  classes), where a block per row would idle.

Which one runs is chosen per feed shape from the row length (the launch configuration's
`small_reduction`), so results for a given shape do not change from call to call.
"""

from __future__ import annotations

from graphc.kernels.cuda.common import DECORATOR, Param, horner, product, unravel


def reduction_source(params: list[Param], sizes: list[str], kept: list[int],
                     reduced: list[int], body: list[str], value: str, init: str,
                     acc_dtype: str, combine: str, out: str, threads: int,
                     needs_lin: bool) -> str:
    """Both reduction kernels. `body` computes the fused expression for element (i0, ...)
    (`lin` is its C-order index when `needs_lin`), `value` names the reduced operand,
    `combine` is a template over {a} and {b}, `out` the output array."""
    if threads & (threads - 1):
        raise ValueError(f"reduction block size must be a power of two, got {threads}")
    names = [f"i{a}" for a in range(len(sizes))]
    kept_names, kept_sizes = [names[a] for a in kept], [sizes[a] for a in kept]
    red_names, red_sizes = [names[a] for a in reduced], [sizes[a] for a in reduced]
    signature = ", ".join(name for _, name in params)
    lin = [f"lin = {horner(names, sizes)}"] if needs_lin else []

    def inner(indent: str) -> list[str]:
        lines = unravel("q", red_names, red_sizes, indent)
        lines += [indent + line for line in lin + body]
        lines.append(indent + "acc = " + combine.format(a="acc", b=value))
        return lines

    block = [DECORATOR, f"def kernel({signature}):",
             f"    sh = cuda.shared.array({threads}, np.{_np_name(acc_dtype)})",
             "    tid = cuda.threadIdx.x",
             f"    nout = {product(kept_sizes)}",
             f"    nred = {product(red_sizes)}",
             "    for o in range(cuda.blockIdx.x, nout, cuda.gridDim.x):"]
    block += unravel("o", kept_names, kept_sizes, " " * 8)
    block += [f"        acc = {init}",
              f"        for q in range(tid, nred, {threads}):"]
    block += inner(" " * 12)
    block += ["        sh[tid] = acc", "        cuda.syncthreads()"]
    step = threads // 2
    while step:
        block += [f"        if tid < {step}:",
                  "            " + "sh[tid] = " + combine.format(a="sh[tid]",
                                                              b=f"sh[tid + {step}]"),
                  "        cuda.syncthreads()"]
        step //= 2
    block += ["        if tid == 0:", f"            {out}[o] = sh[0]",
              "        cuda.syncthreads()"]

    rows = [DECORATOR, f"def kernel_rows({signature}):",
            f"    nout = {product(kept_sizes)}",
            f"    nred = {product(red_sizes)}",
            "    for o in range(cuda.grid(1), nout, cuda.gridsize(1)):"]
    rows += unravel("o", kept_names, kept_sizes, " " * 8)
    rows += [f"        acc = {init}", "        for q in range(nred):"]
    rows += inner(" " * 12)
    rows.append(f"        {out}[o] = acc")
    return "\n".join(block) + "\n\n\n" + "\n".join(rows) + "\n"


def _np_name(dtype: str) -> str:
    return "bool_" if dtype == "bool" else dtype
