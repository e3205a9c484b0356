"""CPU code for a scan: the body's graph compiled ONCE into a program of its own (a sub-table
of kernel calls), and one instruction of the outer program that runs that sub-table T times.

The scan kernel (one source for every scan) walks its block: before each step it writes the
addresses of the body's inputs into the sub-table (step t of each sequence: base + t *
row stride; the carry buffers; the captured values), copies the start-of-step carries into
the stacked residuals, runs the sub-table's kernels, then copies the body's new carries into
the carry buffers and its per-step outputs into row t of the stacked ys. Before the loop the
initial carries are copied into the carry buffers, after it the carry buffers into the final
carries. The code compiled grows with the body, never with T.

Block (int64): T, the sub-table's count, its function addresses, block addresses, whether
the steps run in reverse, then the counts of links and of the four copy lists (before the
loop, before each step, after each step, after the loop); then each link (the address of the
sub-table entry, a base address, an offset, a per-step stride in bytes) and each copy (source
address, its per-step stride, destination address, its per-step stride, byte count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphc.ir import Graph
from graphc.ops.scan import ScanBody

#: Fixed entries at the start of a scan kernel's block.
HEADER = 10


@dataclass
class ScanCode:
    """What the runtime needs to fill a scan instruction's block: the body's program
    (`code`, a codegen Program) and graph, and the outer program's references."""

    body: ScanBody
    graph: Graph                 # the body's scheduled graph (inputs named as in `body`)
    code: Any                    # codegen.Program of the body
    scan: int                    # the scan node of the outer program
    operands: list[tuple]        # outer references of the scan's operands (contiguous)
    results: dict[int, tuple]    # result index -> outer reference, for the stored results


def scan_kernel_source() -> str:
    """The kernel that runs a body's sub-table T times (see the module docstring)."""
    from graphc.backends.cpu.codegen import _source

    def copies(start: str, count: str, step: str) -> list[str]:
        return [f"for j in range({count}):",
                f"    q = {start} + 5 * j",
                f"    src = carray(address(a[q] + {step} * a[q + 1]), (a[q + 4],), np.uint8)",
                f"    dst = carray(address(a[q + 2] + {step} * a[q + 3]), (a[q + 4],), "
                "np.uint8)",
                "    for b in range(a[q + 4]):",
                "        dst[b] = src[b]"]

    body = ["length = a[0]", "count = a[1]",
            "functions = carray(address(a[2]), (count,), np.int64)",
            "blocks = carray(address(a[3]), (count,), np.int64)",
            "reverse = a[4]", "nlinks = a[5]",
            f"before = {HEADER} + 4 * nlinks", "pre = before + 5 * a[6]",
            "post = pre + 5 * a[7]", "after = post + 5 * a[8]"]
    body += copies("before", "a[6]", "0")
    body += ["for t in range(length):",
             "    i = length - 1 - t if reverse else t",
             "    for j in range(nlinks):",
             f"        q = {HEADER} + 4 * j",
             "        entry = carray(address(a[q]), (1,), np.int64)",
             "        entry[0] = a[q + 1] + a[q + 2] + i * a[q + 3]"]
    body += ["    " + line for line in copies("pre", "a[7]", "i")]
    body += ["    for k in range(count):",
             "        s = call_kernel(functions[k], blocks[k])",
             "        if s != 0:",
             "            return np.int32(s)"]
    body += ["    " + line for line in copies("post", "a[8]", "i")]
    body += copies("after", "a[9]", "0")
    return _source("exact", "scan: a sub-program run once per step", body,
                   "from graphc.kernels.cpu.program import call_kernel\n")
