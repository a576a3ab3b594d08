"""One error base: every public error class of the package is a KvSafetyError and a ValueError.

The classes are found by walking every module's ``__all__`` (no hand-kept list), so a new error
class that forgets the base fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import kvsafety_tests
from kvsafety_tests.errors import KvSafetyError

#: Every module of the package and of its subpackages (skipping ``__main__`` entry points);
#: kernels/ lives outside kvsafety_tests/ on disk (setuptools' package-dir), so it is walked too.
MODULES = sorted(
    m.name
    for package in ("kvsafety_tests", "kvsafety_tests.kernels")
    for m in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")
    if not m.name.endswith("__main__")
)


def _public_error_classes(module_name: str) -> list[type[BaseException]]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # an optional third-party package (triton, vllm) that is not installed
        if (e.name or "").startswith("kvsafety_tests"):
            raise
        pytest.skip(f"{module_name} needs {e.name}, not installed")
    names = getattr(module, "__all__", None)
    if names is None:  # no __all__: its own public names
        names = [
            n for n, v in vars(module).items() if not n.startswith("_") and inspect.getmodule(v) is module
        ]
    return [
        obj
        for obj in (getattr(module, name) for name in names)
        # warnings and assertion failures (items.GateFailure: how pytest shows a gate's failing
        # test) are outcomes, not errors a user fixes in an argument or a file
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and not issubclass(obj, Warning | AssertionError)
    ]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_error_class_is_a_kvsafety_error_and_a_value_error(module_name: str) -> None:
    for cls in _public_error_classes(module_name):
        assert issubclass(cls, KvSafetyError), (
            f"{module_name}.{cls.__name__} does not derive from KvSafetyError"
        )
        assert issubclass(cls, ValueError), f"{module_name}.{cls.__name__} is not a ValueError"


def test_the_walk_reaches_both_packages_and_finds_the_errors() -> None:
    assert {"kvsafety_tests.report", "kvsafety_tests.spec", "kvsafety_tests.kernels.stored"} <= set(MODULES)
    found = {
        cls.__name__
        for name in ("kvsafety_tests.report", "kvsafety_tests.kernels.stored")
        for cls in _public_error_classes(name)
    }
    assert found == {"ReportError", "NonFiniteError"}


def test_one_except_catches_them_and_value_error_still_does() -> None:
    from kvsafety_tests.spec import SpecError, parse_spec

    with pytest.raises(KvSafetyError) as info:
        parse_spec("int5x")
    assert isinstance(info.value, SpecError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_views_error_stays_a_runtime_error_for_callers_that_caught_that() -> None:
    from kvsafety_tests.report.views import ViewError

    assert issubclass(ViewError, KvSafetyError) and issubclass(ViewError, RuntimeError)


def test_the_package_exports_the_base_lazily_and_errors_imports_nothing_heavy() -> None:
    assert kvsafety_tests.KvSafetyError is KvSafetyError
    assert "KvSafetyError" in kvsafety_tests.__all__
    code = (
        "import sys, kvsafety_tests.errors; "
        "print(sorted(m for m in ('torch', 'transformers', 'triton', 'vllm', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
