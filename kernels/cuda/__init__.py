"""CUDA kernels (numba.cuda): the device scalar library generated kernels call, and the
source templates of the hand-written kernels (tiled matmul, gathers, copies, block
reductions) that graphc/backends/cuda/codegen.py instantiates per dtype and rank.

Only `scalar` imports numba.cuda; the template modules are plain Python, so the code
generator can run (and tests can compile every kernel to PTX) without a GPU.
"""
