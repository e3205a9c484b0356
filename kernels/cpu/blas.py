"""Matrix products in compiled code: SciPy's OpenBLAS `sgemm`/`dgemm`, called by symbol.

Compiled code calls `graphc_sgemm` and `graphc_dgemm` (BLAS's Fortran interface, column
major), which importing this module binds to SciPy's OpenBLAS (`blas_arch.gemm_routines`).
Calls by name keep machine code loadable in another process; binding them here, rather than
through Numba's `np.dot` (which imports `scipy.linalg.cython_blas`, and with it all of
`scipy.linalg`: 0.13-0.19 s, most of a warm start), costs loading the library (8 ms).

    gemm_f32 / gemm_f64(transa, transb, m, n, k, a, lda, b, ldb, c, ldc)
        column-major c (m, n) = op(a) op(b) on addresses (generated kernels)
    matmul_into(a, b, out)
        out = a @ b for 2-D C- or Fortran-ordered arrays (hand-written kernels)

Both are intrinsics: their code is emitted into the caller. Generated kernels name this
file's digest (kernels/cpu/program.py `library_digest`); Numba's own cache of conv.py's and
linalg.py's kernels does not notice a change here, so change those files with it.

Importing this module loads the library; `import graphc` does not import it (the first CPU
compile does), so the process's BLAS libraries stay as the user's environment makes them
until then (kernels/cpu/blas_arch.py).
"""

from __future__ import annotations

from graphc.kernels.cpu.blas_arch import gemm_routines
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
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
_INT32_MAX = 2**31 - 1


@intrinsic
def matmul_into(typingctx, a, b, out):  # type: ignore[no-untyped-def]
    """out[...] = a @ b for 2-D contiguous (C or Fortran order) float32 or float64 arrays
    of one dtype, as `np.dot(a, b, out)`; an empty inner axis gives zeros. Raises
    ValueError if the shapes do not match. Emitted into the caller, as Numba's `np.dot`
    is: it compiles no function of its own."""
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout in "CF"
               for x in arrays) or len({x.dtype for x in arrays}) != 1 \
            or out.dtype not in _KINDS:
        raise TypingError("matmul_into(a, b, out) takes 2-D C- or Fortran-ordered float32 "
                          f"or float64 arrays of one dtype, not {a}, {b}, {out}")
    kind, float_type = _KINDS[out.dtype]

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        arrs = [context.make_array(t)(context, builder, v) for t, v in zip(arrays, args)]
        (m, k), (k_b, n), (m_out, n_out) = (cgutils.unpack_tuple(builder, x.shape, 2)
                                            for x in arrs)

        def raise_value_error(failed, message):  # type: ignore[no-untyped-def]
            with builder.if_then(failed, likely=False):
                context.call_conv.return_user_exc(builder, ValueError, (message,))

        def eq(x, y):  # type: ignore[no-untyped-def]
            return builder.icmp_signed("==", x, y)

        def limit(x):  # type: ignore[no-untyped-def]
            return builder.icmp_signed(">", x, ir.Constant(x.type, _INT32_MAX))

        raise_value_error(builder.not_(builder.and_(eq(k, k_b), builder.and_(
            eq(m, m_out), eq(n, n_out)))), "matmul_into: shapes of a, b and out do not match")
        raise_value_error(builder.or_(limit(m), builder.or_(limit(n), limit(k))),
                          "matmul_into: a size does not fit BLAS's 32-bit integers")
        zero = ir.Constant(m.type, 0)
        nothing = builder.or_(eq(m, zero), builder.or_(eq(n, zero), eq(k, zero)))
        with builder.if_else(nothing, likely=False) as (empty, product):
            with empty:   # an empty sum is 0 (no-op when out itself is empty)
                out_array = arrs[2]
                cgutils.memset(builder, out_array.data,
                               builder.mul(out_array.nitems, out_array.itemsize), 0)
            with product:
                _emit_product(builder, float_type, kind, arrays, arrs, m, n, k)
        return context.get_dummy_value()

    return types.none(a, b, out), codegen


def _emit_product(builder, float_type, kind, types_, arrs, m, n, k) -> None:  # type: ignore
    """The gemm call of matmul_into for non-empty sizes: an operand stored in `out`'s
    order is read as is, the other transposed; the leading dimension of a C-ordered
    (rows, cols) matrix is cols, of a Fortran-ordered one rows."""
    a_type, b_type, out_type = types_
    a, b, out = arrs

    def trans(ty):  # type: ignore[no-untyped-def]
        return ir.Constant(ir.IntType(64), ord("n" if ty.layout == out_type.layout else "t"))

    def lead(ty, rows, cols):  # type: ignore[no-untyped-def]
        return cols if ty.layout == "C" else rows

    if out_type.layout == "C":   # row-major out = a @ b is column-major out^T = b^T a^T
        _call_gemm(builder, float_type, kind, trans(b_type), trans(a_type), n, m, k,
                   b.data, lead(b_type, k, n), a.data, lead(a_type, m, k), out.data, n)
    else:
        _call_gemm(builder, float_type, kind, trans(a_type), trans(b_type), m, n, k,
                   a.data, lead(a_type, m, k), b.data, lead(b_type, k, n), out.data, m)
