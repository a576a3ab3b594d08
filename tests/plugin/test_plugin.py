"""The plugin as pytest loads it: options, markers, GPU skips, cheap import, fail-closed gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Imported at collection, before pytester snapshots sys.modules: a torch first imported inside a
# pytester test would be dropped from sys.modules afterwards, and its C extension cannot reload.
torch = pytest.importorskip("torch")


def test_help_shows_the_kvsafety_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*KV-cache quantization safety gate (pytest-kvsafety)*",
            "*--kvsafety *run the KV-cache safety audit*",
            "*--kvsafety-quantizer=SPEC*",
        ]
    )


def test_markers_are_registered_and_strict_clean(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kvsafety
        def test_a():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.kvsafety:*"])
    # gpu, slow and model are this repository's own (conftest.py), not every plugin user's
    markers.stdout.no_fnmatch_line("@pytest.mark.gpu*")
    markers.stdout.no_fnmatch_line("@pytest.mark.slow*")


def test_gpu_tests_skip_with_a_reason_naming_what_is_missing(pytester: pytest.Pytester) -> None:
    """The repository's conftest.py (not the plugin) skips its own gpu-marked tests without CUDA."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path is not taken")
    pytester.makeconftest((Path(__file__).parents[2] / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.gpu
        def test_on_gpu():
            raise AssertionError("must not run without CUDA")

        def test_on_cpu():
            pass
        """
    )
    # a subprocess: torch's C extension does not survive pytester's in-process module snapshot
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*needs a CUDA GPU: torch.cuda.is_available() is False (torch *, CPU-only torch build)*"]
    )


def test_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_modules():
            heavy = [m for m in ("torch", "transformers", "triton", "vllm", "numpy") if m in sys.modules]
            assert heavy == [], heavy
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


def test_kvsafety_with_nothing_selected_fails_closed(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject='[tool.kvsafety]\nmodels = ["smollm2-135m-instruct"]\nlimit = 2\n')
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--kvsafety", "-k", "no_such_test", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    report = json.loads((pytester.path / ".kvsafety" / "report.json").read_text())
    assert report["status"] == "incomplete" and report["gate"]["passed"] is False
    assert "nothing was measured" in " ".join(report["notes"])
    result.stdout.fnmatch_lines(["kvsafety gate: FAILED (report incomplete: *nothing was measured*"])


def test_bad_quantizer_on_the_command_line_is_one_line_naming_the_choices(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess(
        "--kvsafety", "--kvsafety-quantizer=int9", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: kvsafety: --kvsafety-quantizer: quantizers: invalid quantizer spec 'int9': int bits 9 "
            "not supported; valid: 2, 3, 4, 5, 6, 7, 8"
        ]
    )
    alone = pytester.runpytest_subprocess("--kvsafety-limit=3", "-p", "no:cacheprovider")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR  # a gate option without the gate never reads as a pass
    alone.stderr.fnmatch_lines(["ERROR: --kvsafety-limit needs --kvsafety: nothing would be audited"])
    assert "Traceback" not in result.stderr.str()
