"""Each example runs as a script (in a subprocess, small settings) and ends with its line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import networkx as nx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name: str, *args: str, cwd: str = ROOT) -> tuple[list[str], str]:
    """(stdout lines, stderr) of `python examples/NAME ARGS`, which must exit with 0."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.splitlines(), done.stderr


def test_mlp_digits() -> None:
    lines, err = run_example("mlp_digits.py", "--epochs", "4", "--hidden", "64")
    match = re.fullmatch(r"test_accuracy=(0\.\d{4}|1\.0000)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0.85
    text = "\n".join(lines)
    assert "backward nodes by op: " in text and "--show-backward" in text
    assert "[backward:" not in text
    assert re.search(r"max rel\. error \S+ -> ok", text)
    assert re.search(r"\d+ fused kernels", text)
    assert len(re.findall(r"^epoch \d/4 ", err, flags=re.M)) == 4
    assert "val_accuracy" in err and "samples/s" in err


def test_mlp_digits_full_backward_listing() -> None:
    lines, _ = run_example("mlp_digits.py", "--epochs", "1", "--hidden", "64",
                           "--show-backward", "--quiet")
    text = "\n".join(lines)
    assert "[backward: matmul vjp of" in text and "mlp_digits.py:" in text
    assert lines[-1].startswith("test_accuracy=")


def test_regression_diabetes(tmp_path) -> None:
    lines, err = run_example("regression_diabetes.py", "--epochs", "15")
    match = re.fullmatch(r"test_r2=(-?\d\.\d{4})", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) > 0.2
    assert "val_r2" in err


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rnn_sequence(cell: str) -> None:
    lines, _ = run_example("rnn_sequence.py", "--cell", cell, "--epochs", "8")
    match = re.fullmatch(r"test_mse=(\d\.\d{4})", lines[-1])
    assert match, lines[-1]
    assert float(match.group(1)) < 0.1   # predicting 0 (no memory) gives about 0.85
    assert len([line for line in lines if line.startswith("epoch ")]) == 8


def test_inspect_backward(tmp_path) -> None:
    out = tmp_path / "graphs"
    lines, _ = run_example("inspect_backward.py", "--out", str(out), cwd=str(tmp_path))
    assert lines[-1].startswith("wrote backward.graphml backward.dot")
    assert lines[-1].endswith(f" to {out}")
    text = "\n".join(lines)
    assert "[backward:" in text and "@cfunc(KERNEL_SIGNATURE" in text and "def kernel(" in text
    graph = nx.read_graphml(out / "backward.graphml")
    roles = {attrs["role"] for _, attrs in graph.nodes(data=True)}
    assert {"input", "param", "forward", "backward"} <= roles
    assert (out / "backward.dot").read_text().startswith('digraph "small"')
    if "backward.svg" in lines[-1]:
        assert (out / "backward.svg").read_text().lstrip().startswith("<")
    else:
        assert "no SVG" in text


@pytest.mark.parametrize("name", ["mlp_digits.py", "regression_diabetes.py",
                                  "inspect_backward.py"])
def test_examples_document_themselves(name: str) -> None:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout
