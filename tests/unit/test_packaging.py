"""Layout promises: kernels/ and fixtures/ live inside the kvsafety_tests namespace, never top-level."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import kvsafety_tests

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_kernels_and_fixtures_ship_inside_the_namespace() -> None:
    spec = importlib.util.find_spec("kvsafety_tests.kernels")
    assert spec is not None and spec.origin is not None
    assert pathlib.Path(spec.origin).parent.name == "kernels"
    assert importlib.util.find_spec("kvsafety_tests.fixtures") is not None


def test_no_top_level_kernels_module_from_this_repo() -> None:
    """PyPI's 'kernels' (Hugging Face's kernel hub, which transformers probes for) must not be shadowed."""
    code = (
        "import importlib.util, sys; s = importlib.util.find_spec('kernels'); "
        "print('none' if s is None else (s.origin or list(s.submodule_search_locations)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert str(ROOT / "kernels") not in out.stdout


def test_public_api_is_reexported() -> None:
    assert set(kvsafety_tests.__all__) >= {"QuantSpec", "parse_spec", "SpecError", "IntScheme", "Fp8Scheme"}
    from kvsafety_tests import kernels

    for name in kernels.__all__:
        assert hasattr(kernels, name), name


def test_every_subpackage_is_listed_for_the_wheel() -> None:
    """setuptools' packages list is explicit: a subpackage missing from it is missing from the wheel
    (the editable install used by the tests would never notice)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "kvsafety_tests." + ".".join(p.parent.relative_to(ROOT / "kvsafety_tests").parts)
        for p in (ROOT / "kvsafety_tests").rglob("__init__.py")
        if p.parent != ROOT / "kvsafety_tests" and "__pycache__" not in p.parts
    }
    assert on_disk, "no subpackage found: the check proves nothing"
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"kvsafety_tests", "kvsafety_tests.kernels", "kvsafety_tests.fixtures"} <= listed
