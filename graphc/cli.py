"""The `graphc` command: a demo, graph listings of your own scripts, and the benchmarks.

    graphc demo [--epochs N]                  train the digits MLP (examples/mlp_digits.py)
    graphc show model.py[:VAR] [--backward] [--format text|dot|svg|html] [-o FILE]
    graphc profile model.py[:VAR] [--steps N] [--batch B] [--json FILE]
    graphc bench [ARGS...]                    run benchmarks/run.py of a source checkout
    graphc cache [info|clear|prune [--max-mb N]]  the kernel cache: show, empty, shrink
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DESCRIPTION = "graphc: a JIT-compiled static-graph framework for training neural networks."
EPILOG = """subcommands:
  demo    train a two-hidden-layer MLP on the bundled 8x8 digits with a compiled training
          step (the job of examples/mlp_digits.py; its options pass through, e.g.
          `graphc demo --epochs 5 --show-backward`); ends with test_accuracy=0.xxxx
  show    run a Python script and print the graph it builds: `graphc show model.py`
          picks the variable `loss`, else the last graphc Value or Graph the script
          defines at module level, or (graphs built inside functions) in the function
          where it first calls gc.compile, gc.grad or gc.evaluate, where the script is
          stopped before training; `model.py:logits` picks another. --backward shows
          the backward graph of gc.grad(VAR, graph.params); --format dot prints Graphviz
          DOT, --format svg renders it with the `dot` binary (Graphviz), --format html
          writes one self-contained interactive page (-o FILE, default graph.html)
  profile time every kernel call of the script's compiled training step (`step`,
          else its loss compiled with SGD) and print a table: share, us/call, GFLOP/s
          and GB/s against this machine's measured peaks
  bench   run the benchmarks (benchmarks/run.py of a source checkout; its options
          pass through, e.g. `graphc bench --workloads digits --rounds 3`)
  cache   the kernel cache (GRAPHC_CACHE_DIR, default ~/.cache/graphc): `graphc cache
          info` shows its directory, entries, size, cap (GRAPHC_CACHE_MAX_MB) and
          oldest/newest use; `graphc cache clear` removes every kernel graphc keeps
          there; `graphc cache prune [--max-mb N]` removes the least recently used ones
          until the cache fits the cap (or N MB)

`graphc SUBCOMMAND --help` describes each one."""


def source_checkout_file(*parts: str) -> str | None:
    """The path of a file of the source checkout graphc runs from, if there is one."""
    path = os.path.join(_ROOT, *parts)
    return path if os.path.isfile(path) else None


def _run_script(path: str, argv: list[str], run_name: str = "__main__") -> dict[str, Any]:
    """Run a Python file as a script with `sys.argv = [path, *argv]` and its directory on
    sys.path; returns its module globals."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [path, *argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        return runpy.run_path(path, run_name=run_name)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


# -- demo ---------------------------------------------------------------------------------

def _builtin_demo(argv: list[str]) -> int:
    """The digits MLP job, for installs without the examples directory."""
    import graphc as gc

    parser = argparse.ArgumentParser(prog="graphc demo")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-backward", action="store_true",
                        help="print every node of the backward graph with its provenance")
    parser.add_argument("--save", metavar="PATH", help="save the trained step to PATH (.npz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    print("examples/mlp_digits.py is not part of this installation: running the same "
          "training job built into graphc")
    data = gc.data.load_digits(seed=args.seed)
    g = gc.Graph("mlp_digits", seed=args.seed)
    x = g.input("x", (None, 64))
    y = g.input("y", (None,), dtype="int64")
    h = gc.relu(gc.nn.linear(x, args.hidden, name="fc1", init="he"))
    h = gc.relu(gc.nn.linear(h, args.hidden, name="fc2", init="he"))
    logits = gc.nn.linear(h, 10, name="out")
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    if args.show_backward:
        print("The backward graph (every gradient graphc will compute):")
        print(gc.format_graph(gc.grad(loss, g.params)))
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=args.lr))
    predict = gc.compile([logits])
    print(f"compiled in {step.compile_report.total:.2f} s: {step.compile_report.kernels} "
          f"fused kernels, {len(step.backward)} backward/update nodes")
    gc.fit(step, lambda epoch: gc.data.batches(data.x_train, data.y_train, args.batch_size,
                                               seed=args.seed + epoch),
           epochs=args.epochs, validation=(data.x_test, data.y_test),
           metrics={"accuracy": gc.metrics.accuracy}, predict=predict,
           verbose=0 if args.quiet else 1)
    if args.save:
        print(f"saved the step to {step.save(args.save)}")
    (scores,) = predict(x=data.x_test)
    print(f"test_accuracy={gc.metrics.accuracy(data.y_test, scores):.4f}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    """`graphc demo [OPTIONS]`: examples/mlp_digits.py (or its job built in)."""
    example = source_checkout_file("examples", "mlp_digits.py")
    if example is None:
        return _builtin_demo(argv)
    _run_script(example, argv)
    return 0


# -- show -----------------------------------------------------------------------------------

class CommandError(Exception):
    """A user-facing failure of a subcommand (printed without a traceback)."""


def _split_target(target: str) -> tuple[str, str | None]:
    path, sep, var = target.rpartition(":")
    if sep and path and var.isidentifier() and not os.path.exists(target):
        return path, var
    return target, None


def pick_variable(namespace: dict[str, Any], var: str | None) -> tuple[str, Any]:
    """(name, object) of the Value or Graph to show from a script's globals."""
    import graphc as gc

    if var is not None:
        if var not in namespace:
            raise CommandError(f"the script defines no variable {var!r} at module level")
        obj = namespace[var]
        if not isinstance(obj, (gc.Value, gc.Graph)):
            raise CommandError(f"{var!r} is a {type(obj).__name__}, not a graphc Value or "
                               "Graph")
        return var, obj
    if isinstance(namespace.get("loss"), gc.Value):
        return "loss", namespace["loss"]
    found = [(k, v) for k, v in namespace.items()
             if isinstance(v, (gc.Value, gc.Graph)) and not k.startswith("__")]
    target = namespace.get("__graphc_target__")
    if not found and isinstance(target, (list, tuple)) and target and all(
            isinstance(v, gc.Value) for v in target):
        return "the values first used", list(target)
    if not found:
        raise CommandError("the script defines no graphc Value or Graph at module level "
                           "(build the graph outside functions, or name one: FILE.py:VAR)")
    return found[-1]


class _GraphReadyError(Exception):
    """Raised by the first gc.compile / gc.grad / gc.evaluate of a script run by `show`:
    its graph is complete there. Carries the variables of the code that called it."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        super().__init__("graph ready")
        self.namespace = namespace


_STOP_AT = ("compile", "grad", "evaluate")


@contextlib.contextmanager
def _stop_at_first_use() -> Iterator[None]:
    """While active, the first gc.compile, gc.grad or gc.evaluate raises _GraphReadyError with
    its caller's globals and locals (the first argument as `__graphc_target__`)."""
    import graphc as gc

    saved = {name: getattr(gc, name) for name in _STOP_AT}

    def stop(*args: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        namespace = {**frame.f_globals, **frame.f_locals}
        if args:
            namespace["__graphc_target__"] = args[0]
        raise _GraphReadyError(namespace)

    for name in _STOP_AT:
        setattr(gc, name, stop)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(gc, name, fn)


def trace_script(path: str, argv: list[str]) -> dict[str, Any]:
    """The variables from which `show` picks a graph: the script's module-level globals
    (run as module `__graphc_show__`) if it defines a graphc Value or Graph there; else,
    running it as `__main__`, the variables of the function that first compiles,
    differentiates or evaluates a graph, where the script is stopped (before training).
    The script's own output goes to stderr."""
    import graphc as gc

    def has_graph(namespace: dict[str, Any]) -> bool:
        return any(isinstance(v, (gc.Value, gc.Graph)) for k, v in namespace.items()
                   if not k.startswith("__"))

    with contextlib.redirect_stdout(sys.stderr), _stop_at_first_use():
        for run_name in ("__graphc_show__", "__main__"):
            try:
                namespace = _run_script(path, argv, run_name=run_name)
            except _GraphReadyError as ready:
                return ready.namespace
            except SystemExit as done:
                raise CommandError(f"the script exited ({done.code}) before building a "
                                   "graph; pass its arguments after --") from None
            if has_graph(namespace):
                return namespace
    return namespace


def _render_svg(dot_text: str) -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise CommandError("--format svg needs the Graphviz `dot` binary, which is not on "
                           "PATH: install Graphviz (apt install graphviz, brew install "
                           "graphviz, conda install graphviz), or use --format dot and "
                           "render the text elsewhere")
    done = subprocess.run([dot, "-Tsvg"], input=dot_text, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise CommandError(f"dot failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def cmd_show(args: argparse.Namespace) -> int:
    """`graphc show FILE.py[:VAR] [--backward] [--format ...] [-o FILE]`."""
    import graphc as gc

    path, var = _split_target(args.target)
    if not os.path.isfile(path):
        raise CommandError(f"no such file: {path}")
    namespace = trace_script(path, list(args.script_args))
    name, obj = pick_variable(namespace, var)
    target: Any = obj
    if args.backward:
        if not isinstance(obj, gc.Value):
            raise CommandError(f"--backward needs a scalar Value (a loss); {name!r} is a Graph")
        if obj.shape != ():
            raise CommandError(f"--backward needs a scalar Value (a loss); {name!r} has shape "
                               f"{obj.shape}")
        params = obj.graph.params
        if not params:
            raise CommandError(f"the graph of {name!r} has no parameters to differentiate")
        # Built through code named after the command, so the listing's source column
        # says where these gradient nodes come from.
        scope = {"grad": gc.grad, "loss": obj, "params": params}
        exec(compile("grads = grad(loss, params)", "<graphc show --backward>", "exec"), scope)
        target = scope["grads"]
    if args.format == "html":
        written = gc.to_html(target, args.output or "graph.html")
        print(f"wrote html of {name}{' (backward)' if args.backward else ''} to {written}")
        return 0
    if args.format == "text":
        text = gc.format_graph(target)
    else:
        text = gc.to_dot(target)
        if args.format == "svg":
            text = _render_svg(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(f"wrote {args.format} of {name}{' (backward)' if args.backward else ''} "
              f"to {args.output}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


# -- profile --------------------------------------------------------------------------------

def synthetic_feeds(step: Any, batch: int) -> dict[str, Any]:
    """Feeds for every input of `step`: None axes of size `batch`, floats from a normal
    distribution, integers 0 (a valid class and index for any size)."""
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = {}
    for node in step._inputs:
        shape = tuple(batch if d is None else d for d in node.shape)
        feeds[node.name] = rng.standard_normal(shape).astype(node.dtype) \
            if np.dtype(node.dtype).kind == "f" else np.zeros(shape, dtype=node.dtype)
    return feeds


def cmd_profile(args: argparse.Namespace) -> int:
    """`graphc profile FILE.py[:VAR] [--steps N] [--batch B] [--json FILE]`."""
    import json

    import graphc as gc
    from graphc.runtime import CompiledFunction

    path, var = _split_target(args.target)
    if not os.path.isfile(path):
        raise CommandError(f"no such file: {path}")
    namespace = _run_script(path, list(args.script_args), run_name="__graphc_show__")
    step = namespace.get(var or "step")
    if not isinstance(step, CompiledFunction):
        name, loss = pick_variable(namespace, var)
        if not isinstance(loss, gc.Value) or loss.shape != ():
            raise CommandError(f"profile needs a compiled step or a scalar loss; {name!r} "
                               "is neither")
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.01))
    feeds = namespace.get("feeds")
    if not isinstance(feeds, dict):
        feeds = synthetic_feeds(step, args.batch)
    result = step.profile(feeds, steps=args.steps)
    print(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.as_dict(), f, indent=1)
        print(f"wrote the profile to {args.json}")
    return 0


# -- bench ----------------------------------------------------------------------------------

def cmd_bench(argv: list[str]) -> int:
    """`graphc bench [ARGS...]`: benchmarks/run.py of the source checkout, in a subprocess."""
    script = source_checkout_file("benchmarks", "run.py")
    if script is None:
        print("graphc bench: the benchmarks ship with graphc's source, not with the installed "
              "package. Clone the repository and run `python benchmarks/run.py` (or `graphc "
              "bench` from an editable install, `pip install -e .`); `pip install "
              "\".[bench]\"` adds PyTorch and JAX to compare against.", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, script, *argv], cwd=_ROOT)


# -- cache ----------------------------------------------------------------------------------

def _when(timestamp: float | None) -> str:
    import time

    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                       time.localtime(timestamp))


def cmd_cache(args: argparse.Namespace) -> int:
    """`graphc cache [info|clear|prune [--max-mb N]]`."""
    from graphc.codegen import cache

    action = args.cache_command or "info"
    if action == "clear":
        report = cache.clear()
        print(f"removed {report.removed} entries ({report.freed / (1 << 20):.1f} MB) from "
              f"{report.directory}")
        return 0
    if action == "prune":
        if args.max_mb is not None and args.max_mb < 0:
            raise CommandError("--max-mb must be 0 or more")
        limit = None if args.max_mb is None else int(args.max_mb * (1 << 20))
        if limit is None and cache.max_cache_bytes() is None:
            print(f"{cache.cache_dir()}: no cap (GRAPHC_CACHE_MAX_MB="
                  f"{os.environ.get('GRAPHC_CACHE_MAX_MB')}), nothing to prune; "
                  "--max-mb N prunes to N MB")
            return 0
        print(cache.prune(limit))
        return 0
    info = cache.cache_info()
    cap = "no cap" if info.limit is None else f"cap {info.limit / (1 << 20):.0f} MB"
    print(f"kernel cache: {info.directory}")
    if info.problem is not None:
        print(f"  not writable ({info.problem}):\n  graphc compiles into a temporary "
              "directory instead and keeps nothing")
    elif not info.exists:
        print("  empty: the directory does not exist (graphc creates it when it compiles)")
    print(f"  entries:   {info.entries} (a generated module each, with its machine code)")
    print(f"  size:      {info.bytes / (1 << 20):.1f} MB, {cap} (GRAPHC_CACHE_MAX_MB)")
    print(f"  last used: oldest {_when(info.oldest_use)}, newest {_when(info.newest_use)}")
    return 0


# -- entry point ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `graphc` command."""
    parser = argparse.ArgumentParser(prog="graphc", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"graphc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,show,profile,bench,cache}")
    sub.add_parser("demo", help="train an MLP on the bundled digits (examples/mlp_digits.py)",
                   description="Train a two-hidden-layer MLP on the bundled 8x8 digits with a "
                   "compiled training step and gc.fit. Options (--epochs, --batch-size, "
                   "--hidden, --lr, --seed, --show-backward, --save) pass through to "
                   "examples/mlp_digits.py.", add_help=False)
    show = sub.add_parser(
        "show", help="print the graph (or backward graph) a script builds",
        description="Run a Python script (as module __graphc_show__, so code under `if "
        "__name__ == '__main__':` does not run) and print a graph it builds: VAR if given "
        "as FILE.py:VAR, else the variable `loss`, else the last graphc Value or Graph "
        "defined at module level. A script with no graph at module level is run as "
        "__main__ up to its first gc.compile, gc.grad or gc.evaluate (before training), "
        "and the variables of the function calling it are used instead.")
    show.add_argument("target", metavar="FILE.py[:VAR]")
    show.add_argument("--backward", action="store_true",
                      help="show the backward graph: gc.grad(VAR, graph.params)")
    show.add_argument("--format", choices=("text", "dot", "svg", "html"), default="text",
                      help="text listing (default), Graphviz DOT, SVG (needs `dot`), or an "
                      "interactive HTML page (written to -o, default graph.html)")
    show.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    show.add_argument("script_args", nargs="*", metavar="ARG",
                      help="arguments for the script (after --)")
    prof = sub.add_parser(
        "profile", help="time every kernel call of a script's compiled training step",
        description="Run a Python script (as for `show`) and time every kernel call of its "
        "compiled CPU training step: the variable `step` (or VAR) if it is a compiled step, "
        "else the loss compiled with SGD. Feeds: the script's `feeds` dict, else random "
        "floats and zero integers with None axes of --batch. Parameters are restored "
        "afterwards.")
    prof.add_argument("target", metavar="FILE.py[:VAR]")
    prof.add_argument("--steps", type=int, default=50, help="profiled steps (default 50)")
    prof.add_argument("--batch", type=int, default=32,
                      help="size of None axes of synthetic feeds (default 32)")
    prof.add_argument("--json", metavar="FILE", help="also write the profile as JSON")
    prof.add_argument("script_args", nargs="*", metavar="ARG",
                      help="arguments for the script (after --)")
    sub.add_parser("bench", help="run the benchmarks (benchmarks/run.py, source checkout)",
                   description="Run benchmarks/run.py of graphc's source checkout; every "
                   "option passes through (see `graphc bench --help`).", add_help=False)
    cache = sub.add_parser(
        "cache", help="show, clear or prune the kernel cache",
        description="The kernel cache: generated kernel sources and their compiled machine "
        "code, in GRAPHC_CACHE_DIR (default ~/.cache/graphc), kept under GRAPHC_CACHE_MAX_MB "
        "megabytes (default 2048; 0 or none: no cap) by removing the least recently used "
        "kernels after each compile. Without an action: info.")
    actions = cache.add_subparsers(dest="cache_command", metavar="{info,clear,prune}")
    actions.add_parser("info", help="directory, entries, size, cap, oldest and newest use",
                       description="Show the cache directory, its entries (a kernel each), "
                       "their total size, the cap and when the least and most recently used "
                       "entries were last used.")
    actions.add_parser("clear", help="remove every kernel graphc keeps there",
                       description="Remove every entry graphc keeps in the cache directory "
                       "(other files stay). The next compile compiles everything again.")
    prune = actions.add_parser(
        "prune", help="remove least recently used kernels down to the cap",
        description="Remove the least recently used entries until the cache holds at most "
        "GRAPHC_CACHE_MAX_MB (or --max-mb) megabytes. Entries used in the last 5 minutes "
        "are kept: another process may be about to load them.")
    prune.add_argument("--max-mb", type=float, metavar="N",
                       help="prune to N megabytes instead of GRAPHC_CACHE_MAX_MB (0: "
                       "everything not used in the last 5 minutes)")
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("graphc")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `graphc` command with `argv` (default: sys.argv[1:]); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args_list and args_list[0] in ("demo", "bench"):
        rest = args_list[1:]
        return cmd_demo(rest) if args_list[0] == "demo" else cmd_bench(rest)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "profile":
            return cmd_profile(args)
        return cmd_cache(args) if args.command == "cache" else cmd_show(args)
    except CommandError as err:
        print(f"graphc {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
