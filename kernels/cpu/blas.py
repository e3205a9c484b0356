"""Matrix products in compiled code: SciPy's OpenBLAS `sgemm`/`dgemm`, called by symbol.

Compiled code calls `graphc_sgemm` and `graphc_dgemm` (BLAS's Fortran interface, column
major), which importing this module binds to SciPy's OpenBLAS (`blas_arch.gemm_routines`).
Calls by name keep machine code loadable in another process; binding them here, rather than
through Numba's `np.dot` (which imports `scipy.linalg.cython_blas`, and with it all of
`scipy.linalg`: 0.13-0.19 s, most of a warm start), costs loading the library (8 ms).

    gemm_f32 / gemm_f64(transa, transb, m, n, k, a, lda, b, ldb, c, ldc)
        column-major c (m, n) = op(a) op(b) on addresses (generated kernels)
    matmul_into(a, b, out)
        out = a @ b for 2-D arrays of any strides (hand-written kernels)

Importing this module loads the library; `import graphc` does not import it (the first CPU
compile does), so the process's BLAS libraries stay as the user's environment makes them
until then (kernels/cpu/blas_arch.py).
"""

from __future__ import annotations

import numpy as np
from graphc.kernels.cpu.blas_arch import gemm_routines
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: The symbol compiled code calls for each BLAS routine (bound below).
SYMBOLS = {"sgemm": "graphc_sgemm", "dgemm": "graphc_dgemm"}

for _routine, _address in gemm_routines().items():
    binding.add_symbol(SYMBOLS[_routine], _address)


def _call_gemm(builder, float_type, kind, trans_a, trans_b, m, n, k,  # type: ignore
               a, lda, b, ldb, c, ldc) -> None:
    """Emit graphc_<kind>gemm(...) with every argument by reference (Fortran); `a`, `b`,
    `c` are `float_type` pointers, the others 64-bit integers (sizes must fit in 32)."""
    char, fint = ir.IntType(8), ir.IntType(32)
    fp = float_type.as_pointer()
    refs = [char.as_pointer()] * 2 + [fint.as_pointer()] * 3
    fnty = ir.FunctionType(ir.VoidType(), refs + [fp, fp, fint.as_pointer(), fp,
                                                  fint.as_pointer(), fp, fp,
                                                  fint.as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, SYMBOLS[kind + "gemm"])

    def by_ref(value, ty):  # type: ignore[no-untyped-def]
        return cgutils.alloca_once_value(builder, builder.trunc(value, ty))

    alpha = cgutils.alloca_once_value(builder, ir.Constant(float_type, 1.0))
    beta = cgutils.alloca_once_value(builder, ir.Constant(float_type, 0.0))
    builder.call(fn, [by_ref(trans_a, char), by_ref(trans_b, char), by_ref(m, fint),
                      by_ref(n, fint), by_ref(k, fint), alpha, a, by_ref(lda, fint), b,
                      by_ref(ldb, fint), beta, c, by_ref(ldc, fint)])


def _gemm_on_addresses(float_type: ir.Type, kind: str):  # type: ignore[no-untyped-def]
    """A `gemm(transa, transb, m, n, k, a, lda, b, ldb, c, ldc)` intrinsic for one float type:
    column-major c (m, n) = op(a) op(b). Every argument an int64: transposes as ord("n") or
    ord("t"), addresses, sizes. Returns 0."""
    @intrinsic
    def gemm(typingctx, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):  # type: ignore
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            ta, tb, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
            fp = float_type.as_pointer()
            _call_gemm(builder, float_type, kind, ta, tb, m_, n_, k_,
                       builder.inttoptr(a_, fp), lda_, builder.inttoptr(b_, fp), ldb_,
                       builder.inttoptr(c_, fp), ldc_)
            return ir.Constant(ir.IntType(64), 0)

        return types.int64(*([types.int64] * 11)), codegen

    return gemm


gemm_f32 = _gemm_on_addresses(ir.FloatType(), "s")
gemm_f64 = _gemm_on_addresses(ir.DoubleType(), "d")

_KINDS = {types.float32: ("s", ir.FloatType()), types.float64: ("d", ir.DoubleType())}


@intrinsic
def _gemm_arrays(typingctx, transa, transb, m, n, k, a, lda, b, ldb, c, ldc):  # type: ignore
    """gemm on the data of arrays `a`, `b`, `c` of one float dtype (from their first
    element: views included); the other arguments integers as for gemm_f32."""
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) for x in arrays) \
            or len({x.dtype for x in arrays}) != 1 or c.dtype not in _KINDS:
        return None
    kind, float_type = _KINDS[c.dtype]

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ta, tb, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
        i64 = ir.IntType(64)
        data = [context.make_array(ty)(context, builder, value).data
                for ty, value in zip(arrays, (a_, b_, c_))]
        ints = [builder.sext(v, i64) if v.type.width < 64 else v
                for v in (ta, tb, m_, n_, k_, lda_, ldb_, ldc_)]
        _call_gemm(builder, float_type, kind, *ints[:5], data[0], ints[5], data[1], ints[6],
                   data[2], ints[7])
        return context.get_dummy_value()

    return types.none(transa, transb, m, n, k, a, lda, b, ldb, c, ldc), codegen


@njit(cache=True, nogil=True)
def _major(x, rows, cols):  # type: ignore[no-untyped-def]
    """How BLAS can read the (rows, cols) matrix `x` in place: (ord("r"), leading dimension)
    if each row is contiguous, (ord("c"), leading dimension) if each column is, (0, 0) if
    neither. A size-1 axis fits either way."""
    item = x.itemsize
    s0, s1 = x.strides[0], x.strides[1]
    if (cols == 1 or s1 == item) and (rows == 1 or (s0 > 0 and s0 % item == 0
                                                     and s0 // item >= cols)):
        return ord("r"), s0 // item if rows > 1 else max(cols, 1)
    if (rows == 1 or s0 == item) and (cols == 1 or (s1 > 0 and s1 % item == 0
                                                     and s1 // item >= rows)):
        return ord("c"), s1 // item if cols > 1 else max(rows, 1)
    return 0, 0


@njit(cache=True, nogil=True)
def _product(a, b, out, m, n, k):  # type: ignore[no-untyped-def]
    """out = a @ b, where BLAS can read `out` in place; operands it cannot are copied."""
    la, lda = _major(a, m, k)
    if la == 0:
        a = np.ascontiguousarray(a)
        la, lda = ord("r"), max(k, 1)
    lb, ldb = _major(b, k, n)
    if lb == 0:
        b = np.ascontiguousarray(b)
        lb, ldb = ord("r"), max(n, 1)
    lo, ldc = _major(out, m, n)
    # an operand stored like `out` is read as is, the other transposed
    ta = ord("n") if la == lo else ord("t")
    tb = ord("n") if lb == lo else ord("t")
    if lo == ord("r"):   # row-major out = a @ b is column-major out^T = b^T a^T
        _gemm_arrays(tb, ta, n, m, k, b, ldb, a, lda, out, ldc)
    else:
        _gemm_arrays(ta, tb, m, n, k, a, lda, b, ldb, out, ldc)


@njit(cache=True, nogil=True)
def matmul_into(a, b, out):  # type: ignore[no-untyped-def]
    """out[...] = a @ b for 2-D float32 or float64 arrays of one dtype and any strides, as
    `np.dot(a, b, out)` (operands BLAS cannot read in place are copied first)."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
        raise ValueError("matmul_into: shapes of a, b and out do not match")
    if max(m, n, k) > 2147483647:
        raise ValueError("matmul_into: a size does not fit BLAS's 32-bit integers")
    if m == 0 or n == 0:
        return
    if k == 0:
        out[...] = 0
        return
    if _major(out, m, n)[0] != 0:
        _product(a, b, out, m, n, k)
        return
    result = np.empty((m, n), dtype=out.dtype)
    _product(a, b, result, m, n, k)
    out[...] = result
