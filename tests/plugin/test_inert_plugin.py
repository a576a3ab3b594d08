"""Without ``--kvsafety`` the installed plugin is inert: it imports nothing heavy, registers only its
own marker, and leaves a user's tests (their own ``gpu`` marker included) exactly as it found them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvsafety_tests

HEAVY = ("torch", "numpy", "transformers", "triton", "vllm")
#: All the package an inactive plugin may import: the entry point and the parts that define its
#: hooks and fixtures (not its items: those load with --kvsafety), the settings table its options
#: come from, its hookspecs.
CHEAP = {
    "kvsafety_tests",
    "kvsafety_tests.plugin",
    "kvsafety_tests.plugin.collection",
    "kvsafety_tests.plugin.configure",
    "kvsafety_tests.plugin.finish",
    "kvsafety_tests.plugin.fixtures",
    "kvsafety_tests.plugin.hookspecs",
    "kvsafety_tests.plugin.options",
    "kvsafety_tests.plugin.state",
    "kvsafety_tests.plugin.xdist",
    "kvsafety_tests.settings",
    "kvsafety_tests.gate",
    "kvsafety_tests.gate.thresholds",
    "kvsafety_tests.errors",
    "kvsafety_tests.lazy",
}


def test_a_users_own_gpu_marker_is_theirs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        def pytest_configure(config):
            config.addinivalue_line("markers", "gpu: runs on the team's own accelerator")
        """
    )
    pytester.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.gpu
        def test_on_my_gpu():
            pass

        def test_the_plugin_is_loaded(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("kvsafety")
        """
    )
    # a subprocess: the plugin loads from its pytest11 entry point, as in a user's own run
    result = pytester.runpytest_subprocess("--strict-markers", "-v", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_user.py::test_on_my_gpu PASSED*"])
    collected = pytester.runpytest_subprocess("--co", "-q", "-p", "no:cacheprovider", timeout=120)
    assert [line for line in collected.outlines if "::" in line] == [
        "test_user.py::test_on_my_gpu",
        "test_user.py::test_the_plugin_is_loaded",
    ]
    markers = pytester.runpytest_subprocess("--markers", "-p", "no:cacheprovider", timeout=120)
    markers.stdout.fnmatch_lines(["@pytest.mark.gpu: runs on the team's own accelerator"])
    markers.stdout.no_fnmatch_line("@pytest.mark.gpu: needs a CUDA GPU*")


#: Appended to each start: the modules it left behind, as the last line of stdout.
CHECK_MODULES = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("kvsafety_tests", *HEAVY))))
"""

STARTS = {
    "import-entry-point": "import kvsafety_tests.plugin",
    "pytest-collect-only": "import pytest\npytest.main(['--co', '-q', '-p', 'no:cacheprovider', '.'])",
}


@pytest.mark.parametrize("start", list(STARTS))
def test_an_inactive_plugin_imports_nothing_heavy(start: str, tmp_path: Path) -> None:
    """A fresh interpreter (this process already holds torch): pytest in an empty folder loads the
    plugin from its entry point, and nothing beyond the option parsers comes with it."""
    code = f"{STARTS[start]}\nHEAVY = {HEAVY!r}\n{CHECK_MODULES}"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS")
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    modules = set(json.loads(out.stdout.splitlines()[-1]))
    assert "kvsafety_tests.plugin" in modules, "the entry point did not load: the check proves nothing"
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []
    assert sorted(modules - CHEAP) == [], "imported without --kvsafety"


def test_every_public_name_resolves_lazily() -> None:
    exported = set(kvsafety_tests.__all__) - {"__version__"}
    assert exported == set(kvsafety_tests._LAZY.module_of), "__all__ and _EXPORTS name different things"
    for name in sorted(exported):
        module = importlib.import_module(f"kvsafety_tests.{kvsafety_tests._LAZY.module_of[name]}")
        assert getattr(kvsafety_tests, name) is getattr(module, name), name
    assert set(kvsafety_tests.__all__) <= set(dir(kvsafety_tests))
    assert isinstance(kvsafety_tests.__version__, str)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = kvsafety_tests.no_such_name


def test_from_import_finds_names_and_subpackages() -> None:
    from kvsafety_tests import SpecError, kernels, parse_spec

    assert str(parse_spec("int4")) == "int4"
    assert issubclass(SpecError, Exception)
    assert kernels.__name__ == "kvsafety_tests.kernels"
