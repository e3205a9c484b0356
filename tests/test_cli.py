"""The `graphc` command: help, show (text, DOT, SVG, backward, variable choice, errors),
demo and bench."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from graphc import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = textwrap.dedent("""
    import graphc as gc

    g = gc.Graph("cli_model", seed=0)
    x = g.input("x", (None, 3))
    y = g.input("y", (None,))
    pred = gc.nn.linear(gc.tanh(gc.nn.linear(x, 4, name="fc1")), 1, name="fc2")[:, 0]
    loss = gc.mse(pred, y)
    scale = 2.0

    if __name__ == "__main__":
        raise SystemExit("the script's main block must not run under graphc show")
""")

NO_LOSS = textwrap.dedent("""
    import graphc as gc

    g = gc.Graph("no_loss", seed=0)
    x = g.input("x", (None, 3))
    first = gc.relu(x)
    second = gc.exp(first)
    note = "not a value"
""")


def run_cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphc.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def model(tmp_path) -> str:
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return str(path)


def test_help_explains_every_subcommand() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("demo", "show", "profile", "bench"):
        assert re.search(rf"^  {command}\s", done.stdout, flags=re.M), command
    assert "--backward" in done.stdout and "--format" in done.stdout
    show = run_cli("show", "--help")
    assert show.returncode == 0 and "FILE.py[:VAR]" in show.stdout
    version = subprocess.run([sys.executable, "-m", "graphc", "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("graphc ")


def test_show_prints_the_loss_graph(model: str, capsys) -> None:
    assert cli.main(["show", model]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph 'cli_model': ")
    assert re.search(r"= div\(.*model\.py:8\s+<- output 0", out)
    assert "[backward:" not in out


def test_show_backward(model: str, capsys) -> None:
    assert cli.main(["show", f"{model}:loss", "--backward"]) == 0
    out = capsys.readouterr().out
    assert "[backward: tanh vjp of" in out and "<graphc show --backward>:1" in out
    assert len(re.findall(r"<- output \d", out)) == 4


def test_show_picks_a_named_variable_or_the_last_value(model: str, tmp_path, capsys) -> None:
    assert cli.main(["show", f"{model}:pred"]) == 0
    assert "= squeeze(" in capsys.readouterr().out.splitlines()[-1]
    assert cli.main(["show", f"{model}:g"]) == 0
    assert capsys.readouterr().out.startswith("graph 'cli_model': 18 nodes (2 input, 4 param")
    other = tmp_path / "no_loss.py"
    other.write_text(NO_LOSS)
    assert cli.main(["show", str(other)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "= exp(" in last and last.endswith("<- output 0")


def test_show_formats(model: str, tmp_path, capsys, monkeypatch) -> None:
    assert cli.main(["show", model, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "cli_model" {') and dot.rstrip().endswith("}")
    target = tmp_path / "graph.dot"
    assert cli.main(["show", model, "--backward", "--format", "dot", "-o", str(target)]) == 0
    assert "backward" in capsys.readouterr().out
    assert "mistyrose" in target.read_text()
    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    assert cli.main(["show", model, "--format", "svg"]) == 1
    err = capsys.readouterr().err
    assert "Graphviz `dot` binary" in err and "--format dot" in err


def test_show_svg_uses_dot(model: str, tmp_path, capsys, monkeypatch) -> None:
    fake = tmp_path / "dot"
    fake.write_text("#!/bin/sh\necho '<svg>'\ncat >/dev/null\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cli.shutil, "which", lambda name: str(fake))
    assert cli.main(["show", model, "--format", "svg"]) == 0
    assert capsys.readouterr().out == "<svg>\n"


def test_show_errors_are_clear(model: str, tmp_path, capsys) -> None:
    cases = [
        ([str(tmp_path / "absent.py")], "no such file"),
        ([f"{model}:nothing"], "defines no variable 'nothing'"),
        ([f"{model}:scale"], "'scale' is a float, not a graphc Value or Graph"),
        ([f"{model}:g", "--backward"], "needs a scalar Value (a loss); 'g' is a Graph"),
        ([f"{model}:pred", "--backward"], "'pred' has shape (None,)"),
    ]
    for args, message in cases:
        assert cli.main(["show", *args]) == 1, args
        assert message in capsys.readouterr().err, args
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert cli.main(["show", str(empty)]) == 1
    assert "no graphc Value or Graph" in capsys.readouterr().err


def test_demo_runs_the_mlp_digits_example() -> None:
    done = run_cli("demo", "--epochs", "2", "--hidden", "32", "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("digits: 1438 train / 359 test images")
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", lines[-1])


def test_demo_without_the_examples_directory(monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "source_checkout_file", lambda *parts: None)
    assert cli.main(["demo", "--epochs", "2", "--hidden", "32"]) == 0
    captured = capsys.readouterr()
    assert "built into graphc" in captured.out
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", captured.out.splitlines()[-1])
    assert "epoch 2/2" in captured.err


def test_bench(monkeypatch, capsys) -> None:
    done = run_cli("bench", "--help")
    assert done.returncode == 0 and "--workloads" in done.stdout
    monkeypatch.setattr(cli, "source_checkout_file", lambda *parts: None)
    assert cli.main(["bench"]) == 2
    assert "python benchmarks/run.py" in capsys.readouterr().err


EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_show_works_on_every_example(example: str, capsys) -> None:
    """Examples build their graphs inside functions: `show` runs the script up to its first
    gc.compile / gc.grad / gc.evaluate and shows the graph there, training nothing."""
    path = os.path.join(ROOT, "examples", example)
    assert cli.main(["show", path]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("graph '") and example in captured.out
    assert "epoch" not in captured.err and "test_accuracy" not in captured.err
    if example == "custom_op.py":   # its first graph (a finite-difference check) has no params
        assert cli.main(["show", path, "--backward"]) == 1
        assert "'f' has no parameters to differentiate" in capsys.readouterr().err
    else:
        assert cli.main(["show", path, "--backward"]) == 0
        assert "[backward:" in capsys.readouterr().out


def test_show_backward_of_an_example_lists_gradients(capsys) -> None:
    assert cli.main(["show", os.path.join(ROOT, "examples", "mlp_digits.py"), "--backward"]) == 0
    out = capsys.readouterr().out
    assert "backward" in out and "mlp_digits.py" in out


@pytest.mark.parametrize("installed", [False, True])
def test_demo_rejects_unknown_options(installed: bool, monkeypatch, capsys) -> None:
    if installed:   # as after a non-editable `pip install .`: no examples directory
        monkeypatch.setattr(cli, "source_checkout_file", lambda *parts: None)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--epochz", "2"])
    assert info.value.code == 2 and "--epochz" in capsys.readouterr().err


def test_demo_without_the_examples_directory_shows_the_backward_graph(monkeypatch,
                                                                      capsys) -> None:
    monkeypatch.setattr(cli, "source_checkout_file", lambda *parts: None)
    assert cli.main(["demo", "--epochs", "1", "--hidden", "8", "--show-backward",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "The backward graph" in out and "[backward:" in out
    assert re.fullmatch(r"test_accuracy=0\.\d{4}", out.splitlines()[-1])
