"""PEP 562 lazy re-exports: a package's public names, each imported from its submodule on first use.

The top-level package and ``gate`` use it, so that ``import kvsafety_tests`` (which the pytest
plugin does in every run) and ``import kvsafety_tests.gate.thresholds`` (which the settings table
does) import none of the heavier modules behind the names.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import Any

__all__ = ["LazyExports"]


class LazyExports:
    """A package's public names over {submodule: names}; in its ``__init__``::

    _LAZY = LazyExports(__name__, {"engine": ("run_audit",), ...})
    __getattr__, __dir__ = _LAZY.getattr, _LAZY.dir
    __all__ = _LAZY.all
    """

    def __init__(self, package: str, exports: Mapping[str, Sequence[str]]) -> None:
        self.package = package
        #: Each public name by the submodule (relative to the package) that defines it.
        self.module_of: dict[str, str] = {name: module for module, names in exports.items() for name in names}
        self.all: list[str] = sorted(self.module_of)

    def getattr(self, name: str) -> Any:
        module = self.module_of.get(name)
        if module is None:  # AttributeError lets ``import package.submodule`` find the submodule
            raise AttributeError(f"module {self.package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{module}", self.package), name)
        vars(sys.modules[self.package])[name] = value  # later lookups skip __getattr__
        return value

    def dir(self) -> list[str]:
        return sorted({*vars(sys.modules[self.package]), *self.all})
