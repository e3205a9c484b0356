"""The CPU step as a program: a table of kernel calls run by one executor.

A compiled CPU step is a list of instructions, each a generated kernel and its argument
block. Every kernel is a `numba.cfunc` of one C signature, `int32 kernel(int64 *block)`: the
block holds the kernel's sizes, the addresses of its arrays and, for strided operands, their
byte strides; the kernel returns 0, or a status that stops the step (a failed check, an index
out of range). The executor (EXECUTOR_SOURCE, a generated module like the kernels) walks the
table and calls each kernel through its address.

Why not one jitted step function calling every kernel: LLVM's time for such a function grows
faster than its call count (a 2-block transformer step of 128 calls took 31 s to compile, 8
blocks 206 s), while this executor is compiled once for every model, a kernel is compiled
once for every graph that computes the same thing, and a call through the table costs a few
nanoseconds.

Generated kernels read their blocks with the helpers below: `address(v)` (an int64 block
entry as a `void*` for `numba.carray`), `strided(ptr, shape, strides, dtype)` (an array
of any layout over existing memory, strides in bytes); matrix products call
kernels/cpu/blas.py's `gemm_f32`/`gemm_f64`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from typing import Any

from graphc.kernels.sealed import seal, unseal
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: The signature of every kernel of a program.
KERNEL_SIGNATURE = types.int32(types.CPointer(types.int64))

#: Statuses a kernel returns (0: go on).
STATUS_NOT_FINITE = 1
STATUS_INDEX_RANGE = 2


@intrinsic
def address(typingctx, value):  # type: ignore[no-untyped-def]
    """An int64 holding an address, as a `void*` (for `numba.carray(ptr, shape, dtype)`)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(value), codegen


@intrinsic
def strided(typingctx, ptr, shape, strides, dtype):  # type: ignore[no-untyped-def]
    """An array (layout "A") over the memory at `ptr`, of `shape` and byte `strides`."""
    if not isinstance(shape, types.BaseTuple) or not isinstance(strides, types.BaseTuple):
        return None
    ndim = len(shape)
    item = dtype.instance_type if hasattr(dtype, "instance_type") else dtype.dtype
    array_type = types.Array(item, ndim, "A")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data, shape_value, strides_value, _ = args
        array = context.make_array(array_type)(context, builder)
        intp = context.get_value_type(types.intp)
        dims = [builder.sext(v, intp) if v.type.width < intp.width else v
                for v in cgutils.unpack_tuple(builder, shape_value, ndim)]
        steps = [builder.sext(v, intp) if v.type.width < intp.width else v
                 for v in cgutils.unpack_tuple(builder, strides_value, ndim)]
        itemsize = context.get_abi_sizeof(context.get_data_type(item))
        typed = builder.bitcast(data, context.get_data_type(item).as_pointer())
        context.populate_array(array, data=typed, shape=cgutils.pack_array(builder, dims),
                               strides=cgutils.pack_array(builder, steps),
                               itemsize=context.get_constant(types.intp, itemsize),
                               meminfo=None)
        return array._getvalue()

    return array_type(ptr, shape, strides, dtype), codegen


@intrinsic
def call_kernel(typingctx, function, block):  # type: ignore[no-untyped-def]
    """Call the kernel at address `function` with the block at address `block`."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i64 = ir.IntType(64)
        kernel_type = ir.FunctionType(ir.IntType(32), [i64.as_pointer()])
        kernel = builder.inttoptr(args[0], kernel_type.as_pointer())
        status = builder.call(kernel, [builder.inttoptr(args[1], i64.as_pointer())])
        return builder.sext(status, i64)

    return types.int64(types.int64, types.int64), codegen


#: The signature of the executor: (kernel addresses, block addresses, check flags, count,
#: whether to run checks, where to write the stopping status) -> the index of the
#: instruction that stopped the step, or -1.
EXECUTOR_SIGNATURE = types.int64(types.CPointer(types.int64), types.CPointer(types.int64),
                                 types.CPointer(types.uint8), types.int64, types.int64,
                                 types.CPointer(types.int64))

EXECUTOR_SOURCE = """
@cfunc(EXECUTOR_SIGNATURE)
def kernel(functions, blocks, is_check, count, check, status):
    for i in range(count):
        if is_check[i] and not check:
            continue
        s = call_kernel(functions[i], blocks[i])
        if s != 0:
            status[0] = s
            return i
    return -1
"""


@functools.cache
def library_digest() -> str:
    """sha256 (16 hex digits) of this file and kernels/cpu/blas.py: generated kernels use
    their helpers, and Numba's cache of a kernel does not notice a change in them. Read once
    per process."""
    digest = hashlib.sha256()
    for name in (__file__, os.path.join(os.path.dirname(__file__), "blas.py")):
        with open(name, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


# -- machine code -----------------------------------------------------------------------------
# A kernel's machine code is kept beside its source as `<module>.<machine>.obj`, a pickle of
# Numba's object-code serialisation of the cfunc's library and the name of its C entry point,
# sealed with its sha256 (kernels/sealed.py): damaged machine code is never linked.
# Loading it skips importing the module and Numba's dispatcher and cache machinery: 1.5 ms a
# kernel instead of 5-15 ms (measured on 17 kernels: 25 ms against 250 ms).

_machine: str | None = None


def machine_tag() -> str:
    """What the machine code depends on beyond the source: the target triple, CPU name and
    features Numba compiles for (as Numba's own cache does), hashed."""
    global _machine
    if _machine is None:
        from numba.core.registry import cpu_target

        magic = cpu_target.target_context.codegen().magic_tuple()
        _machine = hashlib.sha256(repr(magic).encode()).hexdigest()[:12]
    return _machine


def object_path(path: str) -> str:
    """Where the machine code of the generated module at `path` is kept."""
    directory, name = os.path.split(path)
    return os.path.join(directory, "__pycache__", f"{name[:-3]}.{machine_tag()}.obj")


def save_object(kernel: Any, path: str) -> None:
    """Keep the machine code of `kernel` (a compiled cfunc of the module at `path`).
    Written to a temporary file and renamed: readers see the whole file or none."""
    target = object_path(path)
    data = seal(pickle.dumps((kernel._library.serialize_using_object_code(),
                              kernel.native_name)))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-", suffix=".obj")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


_libraries: list[Any] = []   # loaded machine code stays alive as long as the process


class DamagedObjectError(Exception):
    """Kept machine code that cannot be loaded (truncated, overwritten, another format)."""


def load_object(path: str) -> int | None:
    """The address of the kernel of the module at `path` from its kept machine code, or None
    if none is kept. Raises DamagedObjectError (after removing the file) if it cannot be
    loaded."""
    target = object_path(path)
    try:
        with open(target, "rb") as f:
            data = f.read()
    except OSError:
        return None
    from numba.core.registry import cpu_target
    from numba.core.runtime import nrt

    try:
        unsealed = unseal(data)
        if unsealed is None:
            raise ValueError("truncated or damaged (its sha256 does not match)")
        serialized, entry = pickle.loads(unsealed)
        context = cpu_target.target_context
        nrt.rtsys.initialize(context)
        library = context.codegen().unserialize_library(serialized)
        address = library.get_pointer_to_function(entry)
        if not address:
            raise LookupError(f"no function {entry} in it")
    except Exception as err:   # whatever unpickling or the linker raises on junk
        try:
            os.remove(target)
        except OSError:
            pass
        raise DamagedObjectError(f"{target}: {err}") from err
    _libraries.append(library)
    return address
