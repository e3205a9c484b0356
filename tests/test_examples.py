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
    assert "forward values kept for the backward graph" in text and "GFLOP/s" in text
    assert "graphcView" in (out / "step.html").read_text()
    if "backward.svg" in lines[-1]:
        assert (out / "backward.svg").read_text().lstrip().startswith("<")
    else:
        assert "no SVG" in text


def test_char_transformer_loss_decreases_and_it_samples() -> None:
    """A 2-block char transformer (tied embeddings) compiles, its loss falls over 30 Adam
    steps, and it ends with a sampled line (~6 s, most of it compiling)."""
    lines, _ = run_example("char_transformer.py", "--blocks", "2", "--width", "32",
                           "--steps", "30", "--sample-length", "40")
    text = "\n".join(lines)
    assert re.search(r"^2 blocks, width 32, 4 heads, context 32, tied output: \d+ parameters",
                     text, flags=re.M)
    assert len(re.findall(r"^step +\d+  loss \d+\.\d{4}", text, flags=re.M)) >= 5
    match = re.search(r"^loss (\d+\.\d+) -> (\d+\.\d+) ", text, flags=re.M)
    assert match, text
    first, last = float(match.group(1)), float(match.group(2))
    assert last < 0.8 * first, text
    assert lines[-2].startswith("prompt: ") and lines[-1].startswith("sample: ")
    assert len(lines[-1]) <= len("sample: ") + 40


@pytest.mark.parametrize("name", ["mlp_digits.py", "regression_diabetes.py",
                                  "inspect_backward.py", "char_transformer.py"])
def test_examples_document_themselves(name: str) -> None:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout
