"""python -m kvsafety_tests: one line for bad flags, a docs/report.md document for a real (tiny) audit,
and distinct exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvsafety_tests.__main__ import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, main
from kvsafety_tests.report import load_report

from ..models_fixture import QWEN, SMOL, load


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kvsafety_tests", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting exit 2 (bad usage) before anything loads; its stderr."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors (a flag it cannot parse at all)
        code = e.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--quantizer", "int9"],
            "--quantizer: quantizers: invalid quantizer spec 'int9': int bits 9 not supported; valid: 2, 3, 4, 5, 6, 7, 8",
        ),
        (["--quantizer", "none"], "--quantizer: quantizers = 'none' quantizes nothing"),
        (["--limit", "0"], "--limit: limit = 0 must be an integer >= 1"),
        (["--limit", "three"], "--limit: limit = 'three' must be an integer >= 1"),
        (
            ["--threshold", "max_refusal_drop=2"],
            "--threshold: max_refusal_drop = 2.0 is a rate: it must lie in [0, 1]",
        ),
        (
            ["--threshold", "max_drop=0.1"],
            "--threshold: unknown threshold 'max_drop'; valid: max_refusal_drop, max_conditional_flip",
        ),
        (["--threshold", "max_refusal_drop"], "is not NAME=VALUE"),
        (["--dtype", "int8"], "--dtype: dtype = 'int8' is not valid; valid: bfloat16, float16, float32"),
        (
            ["--kernels", "cuda"],
            "--kernels: kernels = 'cuda' is not valid; valid: auto, torch, compiled, triton",
        ),
        (["--pyproject", "missing.toml"], "--pyproject 'missing.toml' is not a file"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag_and_the_choices(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert message in usage_error(args, capsys)


def test_duplicate_quantizers_and_unknown_judge_fail_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "--quantizer: quantizers: 'int4' is listed twice" in usage_error(
        ["--quantizer", "int4", "--quantizer", "int4-asym"], capsys
    )
    assert "tensor_parallel_size = 2 needs backend = 'vllm'" in usage_error(
        ["--tensor-parallel-size", "2"], capsys
    )
    assert "unknown judge" in usage_error(["--judge", "no-such-judge"], capsys).lower()


@pytest.mark.model
def test_a_tiny_real_audit_writes_the_report(tmp_path: Path) -> None:
    load(SMOL)  # converts the packaged model once, outside the subprocess's time
    report_path = tmp_path / "r" / "report.json"
    proc = run_cli(
        "--model", SMOL, "--quantizer", "int4", "--quantizer", "int2-channel-t2", "--limit", "3",
        "--max-new-tokens", "6", "--batch-size", "4", "--dtype", "float32", "--report", str(report_path),
        "--threshold", "max_perplexity_ratio=1000", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode in (EXIT_PASSED, EXIT_FAILED), proc.stderr[-2000:]
    doc = json.loads(report_path.read_text())
    assert doc["schema"] == "kvsafety-report/2" and doc["status"] == "complete"
    assert [r["quantizer"] for r in doc["runs"]] == ["int4", "int2-channel-t2"]
    run = doc["runs"][0]
    for key in (
        "refusal_rate_baseline",
        "conditional_flip_rate",
        "perplexity_ratio",
        "kv_bytes_ratio",
        "quantized_fraction",
        "noise_floor_flip_rate",
        "mcnemar_p",
        "verdict",
        "violations",
    ):
        assert key in run
    assert run["n_harmful"] == 3 and run["n_harmless"] == 3
    assert run["kv_bytes_ratio"] == pytest.approx(0.28125) and run["quantized_fraction"] == 1.0
    assert run["perplexity_ratio"] > 0
    # no completion text in the report unless asked; prompts by id and hash
    assert all("completion_quantized" not in p or p["completion_quantized"] is None for p in run["prompts"])
    assert all(len(p["sha256"]) == 64 for p in run["prompts"])
    report = load_report(report_path)
    assert report.gate.passed == (proc.returncode == EXIT_PASSED)
    assert "| metric | value |" in proc.stdout  # the Markdown summary


@pytest.mark.model
@pytest.mark.slow
def test_the_default_model_audits_end_to_end(tmp_path: Path) -> None:
    """The embedded default (Qwen2.5-Coder-0.5B-Instruct, bf16) through the whole engine, small."""
    load(QWEN, "bfloat16")
    report_path = tmp_path / "report.json"
    proc = run_cli(
        "--quantizer", "int4", "--limit", "2", "--max-new-tokens", "8", "--no-noise-floor",
        "--report", str(report_path), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode in (EXIT_PASSED, EXIT_FAILED), proc.stderr[-2000:]
    doc = json.loads(report_path.read_text())
    assert doc["config"]["models"] == [QWEN] and doc["status"] == "complete"
    run = doc["runs"][0]
    assert run["model_sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert run["noise_floor_flip_rate"] is None  # not measured: said so, never 0
