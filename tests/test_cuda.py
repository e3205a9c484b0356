"""The CUDA target (`gc.compile(..., target="cuda")`), from the default test run.

What runs where:
* tests/cuda_sim: every op, training steps against the CPU target, checkpoints, `to()`,
  errors — on Numba's CUDA simulator, which must be switched on before numba is imported,
  so `test_simulator_suite` runs it in a subprocess (NUMBA_ENABLE_CUDASIM=1). (Running it
  alongside the PTX test was slower on 2 cores than one after the other.)
* here: without a GPU and without the simulator, `target="cuda"` raises a clear
  CudaUnavailableError (a gc.GraphError); every kernel the code generator emits for the op
  table and the training steps compiles to PTX (`cuda.compile_ptx`, no GPU needed, but the
  CUDA toolkit libraries of `numba-cuda[cu12]`): the simulator runs Python and accepts code
  the real compiler rejects.
* with a real GPU: the tests/cuda_sim suite once more, on the device.

Skips: everything needs numba-cuda (the `cuda` / `test` extras); the PTX test needs the
toolkit; the GPU suite a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

import graphc as gc
import graphc.backends as backends
import graphc.backends.cuda.codegen as cudagen
import graphc.backends.cuda.runtime as runtime_cuda
from graphc.codegen.cache import CacheStats, load_module
from graphc.ir import ancestors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
SIMULATING = cudagen.simulator_enabled()
SUITE_TIMEOUT = 900


@functools.cache
def gpu_available() -> bool:
    if not HAS_NUMBA_CUDA or SIMULATING:
        return False
    from numba import cuda

    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def _suite(switch: str) -> subprocess.Popen:
    """`python -m pytest tests/cuda_sim` with `switch` (an environment variable) = 1."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "GRAPHC_CUDA_GPU_TESTS")}
    env[switch] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests/cuda_sim", "-q", "-p", "no:cacheprovider",
         "-o", "addopts=-ra"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tiny_loss() -> gc.Value:
    g = gc.Graph("cuda_error", seed=0)
    x = g.input("x", (None, 3))
    return gc.mean(gc.square(gc.nn.linear(x, 2, name="fc")))


# -- no GPU --------------------------------------------------------------------------------

@pytest.mark.skipif(SIMULATING, reason="the CUDA simulator is on in this process")
def test_cuda_without_a_gpu_says_why_and_how_to_simulate() -> None:
    if gpu_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(gc.GraphError) as err:
        gc.compile(tiny_loss(), optimizer=gc.optim.SGD(0.1), target="cuda")
    assert isinstance(err.value, cudagen.CudaUnavailableError)
    message = str(err.value)
    assert "NUMBA_ENABLE_CUDASIM=1" in message and "before" in message
    if HAS_NUMBA_CUDA:
        assert "no CUDA driver" in message or "no usable GPU" in message or \
            "could not be initialised" in message, message
    else:
        assert "numba-cuda" in message and "graphc[cuda]" in message, message


@pytest.mark.skipif(SIMULATING, reason="the CUDA simulator is on in this process")
def test_missing_numba_cuda_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cudagen, "numba_cuda_installed", lambda: False)
    with pytest.raises(cudagen.CudaUnavailableError,
                       match=r"needs the numba-cuda package.*pip install 'graphc\[cuda\]'"):
        gc.compile([tiny_loss()], target="cuda")


@pytest.mark.skipif(SIMULATING or not HAS_NUMBA_CUDA, reason="needs numba-cuda, no simulator")
def test_no_device_and_a_late_simulator_switch_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from numba import cuda

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda, "cuda_error", lambda: None)
    with pytest.raises(cudagen.CudaUnavailableError, match="found no usable GPU"):
        gc.compile([tiny_loss()], target="cuda")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(cudagen.CudaUnavailableError,
                       match="numba was imported before it was set"):
        gc.compile([tiny_loss()], target="cuda")


# -- PTX: every generated kernel through the real CUDA compiler ---------------------------

def _toolchain_missing() -> str | None:
    if SIMULATING:
        return "the CUDA simulator is on in this process"
    if not HAS_NUMBA_CUDA:
        return "numba-cuda is not installed"
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(7, 5))
    except Exception as err:  # no NVVM / NVRTC: numba-cuda[cu12] not installed
        return f"no CUDA toolkit for compile_ptx (pip install 'numba-cuda[cu12]'): {err}"
    return None


def _writers(monkeypatch: pytest.MonkeyPatch) -> list[cudagen.CudaStepWriter]:
    """Code generation for the op table and training steps with the GPU configuration,
    through gc.compile with the device part stubbed out."""
    writers: list[cudagen.CudaStepWriter] = []

    def build(program, groups, memory, report, optimizer, single, user_graph):  # type: ignore[no-untyped-def]
        writer = cudagen.CudaStepWriter(program, groups, memory, CacheStats(),
                                        cudagen.LaunchConfig())
        writer.write()
        writers.append(writer)
        return SimpleNamespace()

    monkeypatch.setattr(backends, "require", lambda target: None)
    monkeypatch.setattr(runtime_cuda, "build", build)
    from tests.test_compile_ops import GROUPS, _weight

    for dtype, groups in (("float32", list(GROUPS)), ("float64", ["elementwise"])):
        for group in groups:
            spec = GROUPS[group]
            rng = np.random.default_rng(zlib.crc32(f"{group}/{dtype}".encode()))
            graph = gc.Graph(f"ptx_{group}", dtype=dtype)
            values = {name: graph.input(name, shape, dtype=dt) for name, (shape, dt) in
                      spec.inputs.items()}
            v = SimpleNamespace(**values)
            outputs = [build_op(v) for build_op in spec.ops.values()]
            terms = [gc.sum(o * _weight(graph, o, rng)) for o in outputs
                     if gc.ir.is_float(o.dtype)]
            needed = ancestors(graph, [t.id for t in terms])
            wrt = [x for x in values.values() if gc.ir.is_float(x.dtype) and x.id in needed]
            loss = terms[0]
            for t in terms[1:]:
                loss = loss + t
            gc.compile(outputs + gc.grad(loss, wrt), target="cuda")
    from tests.cuda_sim.test_sim_ops import conv_program
    from tests.cuda_sim.test_sim_training import sgd, small_layer_model

    gc.compile(conv_program("float32")[1], target="cuda")

    # dropout's uint64 hash, state updates, SGD with momentum and clip_norm
    gc.compile(small_layer_model("float32"), optimizer=sgd(), target="cuda")
    return writers


def test_every_generated_kernel_compiles_to_ptx(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    from numba import cuda

    jobs = {}
    for writer in _writers(monkeypatch):
        for kernel in writer.kernels:
            for function, signatures in kernel.functions.items():
                for sig in signatures:
                    jobs[(kernel.module, function, sig)] = kernel
    assert len(jobs) > 100
    failures = []
    for (module, function, sig), kernel in jobs.items():
        fn = getattr(load_module(module, kernel.path), function)
        try:
            ptx, _ = cuda.compile_ptx(fn.py_func, sig, cc=(7, 5))
            assert ".entry" in ptx
        except Exception as err:
            failures.append(f"{kernel.path}:{function} {sig}: {type(err).__name__}: {err}")
    assert not failures, f"{len(failures)} of {len(jobs)} kernels do not compile:\n" + \
        "\n".join(failures[:5])


# -- the device suites -------------------------------------------------------------------

def _finish(proc: subprocess.Popen) -> None:
    try:
        out, _ = proc.communicate(timeout=SUITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the CUDA suite did not finish in {SUITE_TIMEOUT} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"tests/cuda_sim failed:\n{out[-8000:]}"
    assert " passed" in out.splitlines()[-1], out[-2000:]


def test_simulator_suite() -> None:
    """tests/cuda_sim under NUMBA_ENABLE_CUDASIM=1, in a subprocess."""
    if SIMULATING:
        pytest.skip("the simulator is on in this process: run tests/cuda_sim directly")
    if not HAS_NUMBA_CUDA:
        pytest.skip("numba-cuda is not installed (pip install 'graphc[cuda]')")
    _finish(_suite("NUMBA_ENABLE_CUDASIM"))


def test_gpu_suite() -> None:
    """tests/cuda_sim on a real GPU (GRAPHC_CUDA_GPU_TESTS=1)."""
    if not gpu_available():
        pytest.skip("no CUDA GPU here")
    _finish(_suite("GRAPHC_CUDA_GPU_TESTS"))
