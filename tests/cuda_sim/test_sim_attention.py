"""A tiny transformer (tied embedding, RMS norm, causal multi-head attention with 4-D
batched matmuls, layer norm, tied output) on the CUDA target against the CPU target.

Tolerances as in test_sim_training.py (float64: the targets differ only in summation
order, ~1e-16 relative per value; measured 2.2e-16 on losses and parameters). SGD,
not Adam: the key bias of attention has an exactly-zero gradient (softmax ignores a
constant added to every score of a row), which Adam's normalisation would blow up from
rounding noise (1e-17) to updates of lr * 1e-9.
"""

from __future__ import annotations

import numpy as np

import graphc as gc

TOL = dict(rtol=1e-12, atol=1e-12)


def tiny_gpt(dtype: str) -> gc.Value:
    g = gc.Graph("tiny_gpt", seed=0, dtype=dtype)
    ids = g.input("ids", (None, 4), dtype="int64")
    targets = g.input("targets", (None, 4), dtype="int64")
    h = gc.nn.embedding(ids, 7, 8, name="tok", std=0.3)
    h = h + gc.nn.multi_head_attention(gc.nn.rms_norm(h, name="norm"), 2, name="attn")
    logits = gc.nn.embedding_logits(gc.nn.layer_norm(h, name="ln"), "tok")
    return gc.mean(gc.softmax_cross_entropy(logits, targets))


def test_tiny_transformer_training_matches_the_cpu_target() -> None:
    cpu = gc.compile(tiny_gpt("float64"), optimizer=gc.optim.SGD(0.5))
    gpu = gc.compile(tiny_gpt("float64"), optimizer=gc.optim.SGD(0.5), target="cuda")
    rng = np.random.default_rng(0)
    for n in (3, 2):
        feeds = {"ids": rng.integers(0, 7, (n, 4)), "targets": rng.integers(0, 7, (n, 4))}
        np.testing.assert_allclose(gpu(**feeds), cpu(**feeds), rtol=TOL["rtol"])
    assert sorted(gpu.params) == sorted(cpu.params)
    for name in cpu.params:
        np.testing.assert_allclose(gpu.params[name], cpu.params[name], rtol=0,
                                   atol=TOL["atol"], err_msg=name)
