"""Where graphc's kernel library `graphc.kernels` is found.

Installed (`pip install .`), the library is the subpackage graphc/kernels. In the repository
it is the folder kernels/ beside graphc/ (a checkout on PYTHONPATH, or an editable install):
`mount` then imports that folder as `graphc.kernels`, so that it is never a top-level
`kernels` package (another distribution of that name would shadow it, or be shadowed).
This module imports nothing of graphc: compile workers use it without importing graphc.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

PACKAGE = "graphc.kernels"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def checkout_folder() -> str:
    """The repository's kernels/ folder beside graphc/ (absent in an installed graphc)."""
    return os.path.join(os.path.dirname(_PACKAGE_DIR), "kernels")


def mount() -> ModuleType:
    """Import `graphc.kernels` (the `graphc` package must be in sys.modules): the installed
    subpackage if there is one, else the repository's kernels/ folder."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        # PathFinder names the folder by the last part of PACKAGE: <root>/kernels
        spec = importlib.machinery.PathFinder.find_spec(
            PACKAGE, [os.path.dirname(checkout_folder())])
    if spec is None or spec.loader is None:
        raise ImportError(f"graphc's kernel library is missing: neither "
                          f"{os.path.join(_PACKAGE_DIR, 'kernels')} nor {checkout_folder()} "
                          f"exists; reinstall graphc", name=PACKAGE)
    module = execute(PACKAGE, spec)
    sys.modules["graphc"].kernels = module
    return module


def execute(name: str, spec: importlib.machinery.ModuleSpec) -> ModuleType:
    """Create the module of `spec` as sys.modules[`name`] and run it; if running it
    raises, `name` is taken out of sys.modules again."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        del sys.modules[name]
        raise
    return module


def library_folder() -> str:
    """The folder `graphc.kernels` is imported from."""
    return os.path.dirname(os.path.abspath(mount().__file__))


def import_without_graphc() -> ModuleType:
    """Make `graphc.kernels` importable in a process that does not import graphc itself
    (whose import loads SciPy and the compiler): a bare `graphc` package that holds only
    its submodules' path, then the kernel library. For compile workers."""
    if "graphc" not in sys.modules:
        bare = ModuleType("graphc")
        bare.__path__ = [_PACKAGE_DIR]
        bare.__file__ = os.path.join(_PACKAGE_DIR, "__init__.py")
        sys.modules["graphc"] = bare
    return mount()
