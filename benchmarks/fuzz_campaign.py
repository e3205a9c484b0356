"""A long fuzzing campaign outside pytest: random graphs over every op family
(tests/fuzzing), many per compile.

    python benchmarks/fuzz_campaign.py --examples 20000 --compiled 2000 --seed 1
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/fuzz_campaign.py --target cuda \
        --examples 200 --compiled 200 --per-compile 20
    python benchmarks/fuzz_campaign.py --replay 1:7:12      # seed:graph:example

Examples are drawn in graphs of `--per-compile` examples. Every example's interpreter
gradients are checked against finite differences; the first `--compiled` examples' graphs
are also compiled for `--target` and every output and gradient compared with the
interpreter, at two run-time batch sizes (one compiled program; compiling costs ~0.3 s per
kernel not yet in the kernel cache, the interpreter ~2 ms per example, hence the two
counts). Example k of graph j is drawn from numpy's default_rng([seed, j, k]) (its run-time
axes hold the sizes graph_batches(seed, j) gives), so `--replay seed:j:k` rebuilds it
alone and checks it again. Prints per-family counts, the
worst error/bound ratios and every mismatch with its reproducer; exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing.batch import Packed, pack, run_packed
from tests.fuzzing.checks import Mismatch, Stats, check_finite_differences
from tests.fuzzing.choices import NumpyChooser


def graph_batches(seed: int, graph: int) -> list[int]:
    """The two run-time batch sizes a graph runs at (one compile): two of 1, 2, 3."""
    return [int(b) for b in np.random.default_rng([seed, graph]).permutation([1, 2, 3])[:2]]


def draw_graph(seed: int, graph: int, examples: range, dtype: str, batch: int) -> Packed:
    choosers = [NumpyChooser(np.random.default_rng([seed, graph, k])) for k in examples]
    return pack(choosers, batch, dtype, name=f"fuzz_{seed}_{graph}")


def check_graph(seed: int, graph: int, examples: range, dtype: str, target: str | None,
                stats: Stats) -> tuple[Packed, list[Mismatch]]:
    """Draw graph `graph` at its batch sizes; check it (compiled for `target` at both, or
    with finite differences only when `target` is None)."""
    first, second = (draw_graph(seed, graph, examples, dtype, b)
                     for b in graph_batches(seed, graph))
    rng = np.random.default_rng([seed, graph])
    if target is None:
        found = []
        for ex in first.examples:
            found += check_finite_differences(ex, rng, stats)
        return first, found
    return first, run_packed(first, target, rng, stats, also=[second])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000,
                        help="examples checked against finite differences")
    parser.add_argument("--compiled", type=int, default=200,
                        help="of those, examples also compiled and compared")
    parser.add_argument("--per-compile", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop starting graphs after this long")
    parser.add_argument("--replay", default=None, help="seed:graph:example")
    args = parser.parse_args(argv)

    if args.replay:
        seed, graph, k = (int(p) for p in args.replay.split(":"))
        stats = Stats()
        packed, found = check_graph(seed, graph, range(k, k + 1), args.dtype, args.target,
                                    stats)
        for error in packed.errors:
            print(error)
        print(packed.examples[0].describe() if packed.examples else "(not built)")
        for m in found:
            print(m.report())
        print(f"{len(found)} mismatches; {stats}")
        return 1 if found or packed.errors else 0

    start = time.time()
    stats, families = Stats(), collections.Counter()
    mismatches: list[tuple[str, Mismatch]] = []
    errors: list[str] = []
    done = compiled = 0
    graph = 0
    while done < args.examples:
        if args.minutes is not None and time.time() - start > args.minutes * 60:
            print(f"time limit reached after {done} examples")
            break
        n = min(args.per_compile, args.examples - done)
        target = args.target if compiled < args.compiled else None
        try:
            packed, found = check_graph(args.seed, graph, range(n), args.dtype, target, stats)
        except Exception as err:  # a compile or run failure of the whole graph
            errors.append(f"graph {graph} ({target}): {type(err).__name__}: {err}")
            graph += 1
            done += n
            continue
        errors += [f"graph {graph} {e} (replay {args.seed}:{graph}:{e[1:].split(':')[0]})"
                   for e in packed.errors]
        for m in found:
            k = int(m.example.prefix[1:-1])
            mismatches.append((f"{args.seed}:{graph}:{k}", m))
        for ex in packed.examples:
            families.update(set(ex.families))
        done += n
        compiled += n if target else 0
        graph += 1
        print(f"[{time.time() - start:7.1f} s] graph {graph}: {done} examples, {compiled} "
              f"compiled ({args.target}), {len(mismatches)} mismatches, {len(errors)} errors",
              flush=True)

    print(f"\n{done} examples ({compiled} compiled for {args.target}, {args.dtype}) in "
          f"{time.time() - start:.0f} s, seed {args.seed}")
    print(f"finite-difference checks {stats.fd_checked}, moved off a kink {stats.moves} "
          f"times; worst error/bound: compiled {stats.compiled_worst:.3g}, "
          f"finite differences {stats.fd_worst:.3g}")
    print("examples per family: " + ", ".join(f"{k} {v}" for k, v in sorted(families.items())))
    for error in errors:
        print(f"ERROR {error}")
    for key, m in mismatches:
        print(f"MISMATCH (replay: python benchmarks/fuzz_campaign.py --replay {key} "
              f"--target {args.target})\n{m.report()}\n")
    return 1 if mismatches or errors else 0


if __name__ == "__main__":
    sys.exit(main())
