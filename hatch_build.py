"""Build hook: a wheel installs the kernel library, the repository's kernels/ folder, as
graphc/kernels. An editable install maps only graphc/; graphc/_library.py then imports
kernels/ from beside it (a forced inclusion would put a second copy in site-packages)."""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class KernelLibraryHook(BuildHookInterface):
    """Installs kernels/ as graphc/kernels in a standard (not editable) wheel."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"]["kernels"] = "graphc/kernels"
