"""Gathers, scatters and copies for the CUDA target, as source templates per rank.

Every array is a flat 1-D buffer read through an offset and per-axis strides (in
elements), so views (slices, transposes, broadcasts) are read in place. All kernels are
grid-stride loops over their output, one thread per output element, and deterministic:

- take: out[p, j, q] = x[p, idx[j], q]; an index outside [-n, n) (a negative one counts
  from the end), or outside [0, n) without `wrap`, sets err[0] = 1 (the runtime raises
  IndexRangeError) and writes 0.
- take_grad (scatter-add): out[p, r, q] = sum over j in order of g[p, j, q] where idx[j]
  == r. Each output element is owned by one thread that walks the indices in order: no
  atomics, the same summation order as the CPU kernel, so the result does not depend on
  the launch configuration.
- cumsum: one thread per line along the axis, summing in order (numpy's order).
- take_along_axis: out[p] = x[p with axis -> idx[p]] (x and idx of one rank, the same
  sizes off the axis); err[0] = 1 for an index out of range.
- take_along_axis_grad: out[p with axis = r] = sum over u in order of g[p with axis = u]
  where idx[p with axis = u] == r; one owner thread per output element, as take_grad.
- copy: dst (strided) = src (strided), for materialised reshapes, concat, slice_grad and
  parameter updates that could not be written in place.
- fill_zero: dst[:n] = 0.
- finite_check: flag[0] = 1 if any element of a strided array is NaN or infinite (the
  step reads the one flag before it launches any update).
"""

from __future__ import annotations

from graphc.kernels.cuda.common import CTOR, DECORATOR, Param, horner, product, strided, unravel

_LOOP = "    for t in range(cuda.grid(1), total, cuda.gridsize(1)):"


def _def(params: list[Param]) -> list[str]:
    return [DECORATOR, f"def kernel({', '.join(name for _, name in params)}):"]


def _read_index(at: str, wrap: bool, indent: str) -> list[str]:
    """`v` = the index at `at`, a negative one counted from the end (`wrap`)."""
    lines = [f"{indent}v = np.int64(idx[{at}])"]
    if wrap:
        lines += [f"{indent}if v < 0:", f"{indent}    v += n"]
    return lines


def take_source(x_rank: int, axis: int, idx_rank: int, x_dtype: str,
                idx_dtype: str, wrap: bool) -> tuple[str, list[Param]]:
    """Gather along `axis` of an `x_rank`-D x with an `idx_rank`-D index array."""
    post = x_rank - axis - 1
    pre = [f"p{a}" for a in range(axis)]
    inner = [f"j{a}" for a in range(idx_rank)]
    rest = [f"q{a}" for a in range(post)]
    out_names = pre + inner + rest
    sizes = [f"d{k}" for k in range(len(out_names))]
    xs = [f"xs{a}" for a in range(x_rank)]
    iss = [f"is{a}" for a in range(idx_rank)]
    params: list[Param] = [("int", s) for s in sizes] + [("int", "n")]
    params += [(x_dtype, "x"), ("int", "xo")] + [("int", s) for s in xs]
    params += [(idx_dtype, "idx"), ("int", "io")] + [("int", s) for s in iss]
    params += [(x_dtype, "out"), ("int32", "err")]
    lines = _def(params) + [f"    total = {product(sizes)}", _LOOP]
    lines += unravel("t", out_names, sizes, " " * 8)
    lines += _read_index(strided('io', inner, iss), wrap, " " * 8)
    lines += ["        if v < 0 or v >= n:",
              "            err[0] = 1",
              "            out[t] = 0",
              "        else:",
              f"            out[t] = x[{strided('xo', pre + ['v'] + rest, xs)}]"]
    return "\n".join(lines) + "\n", params


def take_grad_source(ref_rank: int, axis: int, idx_rank: int, dtype: str,
                     idx_dtype: str, wrap: bool) -> tuple[str, list[Param]]:
    """Scatter-add of g (rank axis + idx_rank + post) into a dense `ref_rank`-D output."""
    post = ref_rank - axis - 1
    pre = [f"p{a}" for a in range(axis)]
    inner = [f"j{a}" for a in range(idx_rank)]
    rest = [f"q{a}" for a in range(post)]
    out_names = pre + ["row"] + rest
    sizes = [f"d{k}" for k in range(ref_rank)]
    isizes = [f"e{k}" for k in range(idx_rank)]
    gs = [f"gs{a}" for a in range(axis + idx_rank + post)]
    iss = [f"is{a}" for a in range(idx_rank)]
    params: list[Param] = [("int", s) for s in sizes + isizes]
    params += [(dtype, "g"), ("int", "go")] + [("int", s) for s in gs]
    params += [(idx_dtype, "idx"), ("int", "io")] + [("int", s) for s in iss]
    params += [(dtype, "out"), ("int32", "err")]
    lines = _def(params) + [f"    total = {product(sizes)}", f"    n = d{axis}",
                            f"    nidx = {product(isizes)}", _LOOP]
    lines += unravel("t", out_names, sizes, " " * 8)
    lines += [f"        acc = {CTOR[dtype]}(0)",
              "        for u in range(nidx):"]
    lines += unravel("u", inner, isizes, " " * 12)
    lines += _read_index(strided('io', inner, iss), wrap, " " * 12)
    lines += ["            if v < 0 or v >= n:",
              "                err[0] = 1",
              "            elif v == row:",
              f"                acc += g[{strided('go', pre + inner + rest, gs)}]",
              "        out[t] = acc"]
    return "\n".join(lines) + "\n", params


def cumsum_source(rank: int, axis: int, dtype: str) -> tuple[str, list[Param]]:
    """Running sum along `axis` of a strided `rank`-D x into a dense out."""
    names = [f"i{a}" for a in range(rank)]
    sizes = [f"d{a}" for a in range(rank)]
    lines_of = [n for k, n in enumerate(names) if k != axis]
    xs = [f"xs{a}" for a in range(rank)]
    params: list[Param] = [("int", s) for s in sizes]
    params += [(dtype, "x"), ("int", "xo")] + [("int", s) for s in xs] + [(dtype, "out")]
    first = [n if k != axis else "0" for k, n in enumerate(names)]
    lines = _def(params) + [
        f"    total = {product([s for k, s in enumerate(sizes) if k != axis])}",
        f"    if d{axis} == 0:", "        return", _LOOP]
    lines += unravel("t", lines_of, [s for k, s in enumerate(sizes) if k != axis], " " * 8)
    lines += [f"        i{axis} = 0",
              f"        acc = x[{strided('xo', names, xs)}]",
              f"        out[{horner(first, sizes)}] = acc",
              f"        for i{axis} in range(1, d{axis}):",
              f"            acc += x[{strided('xo', names, xs)}]",
              f"            out[{horner(names, sizes)}] = acc"]
    return "\n".join(lines) + "\n", params


def take_along_source(rank: int, axis: int, x_dtype: str,
                      idx_dtype: str) -> tuple[str, list[Param]]:
    """Gather along `axis`: out (dense, the indices' shape) = x at the picked entries."""
    names = [f"i{a}" for a in range(rank)]
    picked = ["v" if k == axis else n for k, n in enumerate(names)]
    sizes = [f"d{a}" for a in range(rank)]
    xs = [f"xs{a}" for a in range(rank)]
    iss = [f"is{a}" for a in range(rank)]
    params: list[Param] = [("int", s) for s in sizes] + [("int", "n")]
    params += [(x_dtype, "x"), ("int", "xo")] + [("int", s) for s in xs]
    params += [(idx_dtype, "idx"), ("int", "io")] + [("int", s) for s in iss]
    params += [(x_dtype, "out"), ("int32", "err")]
    lines = _def(params) + [f"    total = {product(sizes)}", _LOOP]
    lines += unravel("t", names, sizes, " " * 8)
    lines += _read_index(strided('io', names, iss), True, " " * 8)
    lines += ["        if v < 0 or v >= n:",
              "            err[0] = 1",
              "            out[t] = 0",
              "        else:",
              f"            out[t] = x[{strided('xo', picked, xs)}]"]
    return "\n".join(lines) + "\n", params


def take_along_grad_source(rank: int, axis: int, dtype: str,
                           idx_dtype: str) -> tuple[str, list[Param]]:
    """Scatter-add along `axis` of g (the indices' shape, m long on the axis) into a dense
    out; each output element sums its contributions in index order."""
    names = [f"i{a}" for a in range(rank)]
    walked = ["u" if k == axis else n for k, n in enumerate(names)]
    sizes = [f"d{a}" for a in range(rank)]
    gs = [f"gs{a}" for a in range(rank)]
    iss = [f"is{a}" for a in range(rank)]
    params: list[Param] = [("int", s) for s in sizes] + [("int", "m")]
    params += [(dtype, "g"), ("int", "go")] + [("int", s) for s in gs]
    params += [(idx_dtype, "idx"), ("int", "io")] + [("int", s) for s in iss]
    params += [(dtype, "out"), ("int32", "err")]
    lines = _def(params) + [f"    total = {product(sizes)}", f"    n = d{axis}", _LOOP]
    lines += unravel("t", names, sizes, " " * 8)
    lines += [f"        acc = {CTOR[dtype]}(0)",
              "        for u in range(m):"]
    lines += _read_index(strided('io', walked, iss), True, " " * 12)
    lines += ["            if v < 0 or v >= n:",
              "                err[0] = 1",
              f"            elif v == i{axis}:",
              f"                acc += g[{strided('go', walked, gs)}]",
              "        out[t] = acc"]
    return "\n".join(lines) + "\n", params


def copy_source(rank: int, dtype: str) -> tuple[str, list[Param]]:
    """dst[i...] = src[i...] over an n0 x ... x n{rank-1} box, both strided."""
    names = [f"i{a}" for a in range(rank)]
    sizes = [f"n{a}" for a in range(rank)]
    ss = [f"ss{a}" for a in range(rank)]
    ds = [f"ds{a}" for a in range(rank)]
    params: list[Param] = [("int", s) for s in sizes]
    params += [(dtype, "src"), ("int", "so")] + [("int", s) for s in ss]
    params += [(dtype, "dst"), ("int", "do")] + [("int", s) for s in ds]
    lines = _def(params) + [f"    total = {product(sizes)}", _LOOP]
    lines += unravel("t", names, sizes, " " * 8)
    lines.append(f"        dst[{strided('do', names, ds)}] = src[{strided('so', names, ss)}]")
    return "\n".join(lines) + "\n", params


def fill_zero_source(dtype: str) -> tuple[str, list[Param]]:
    """dst[:n] = 0."""
    params: list[Param] = [("int", "total"), (dtype, "dst")]
    lines = _def(params) + [_LOOP, "        dst[t] = 0"]
    return "\n".join(lines) + "\n", params


def finite_check_source(rank: int, dtype: str) -> tuple[str, list[Param]]:
    """flag[0] = 1 if any element of src (strided, n0 x ... x n{rank-1}) is not finite."""
    names = [f"i{a}" for a in range(rank)]
    sizes = [f"n{a}" for a in range(rank)]
    ss = [f"ss{a}" for a in range(rank)]
    params: list[Param] = [("int", s) for s in sizes]
    params += [(dtype, "src"), ("int", "so")] + [("int", s) for s in ss]
    params += [("int32", "flag")]
    lines = _def(params) + [f"    total = {product(sizes)}", _LOOP]
    lines += unravel("t", names, sizes, " " * 8)
    lines += [f"        v = src[{strided('so', names, ss)}]",
              "        if math.isinf(v) or math.isnan(v):",
              "            flag[0] = 1"]
    return "\n".join(lines) + "\n", params
