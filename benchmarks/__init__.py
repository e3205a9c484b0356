"""Benchmarks comparing graphc's compiled training step with numpy, PyTorch and JAX."""
