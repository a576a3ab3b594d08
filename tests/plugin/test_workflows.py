"""The GitHub Actions files: the composite action (action.yml) and .github/workflows/*.yml.

No network and no GitHub: every YAML file is parsed with PyYAML and checked by the functions below
(structure, the inputs, steps and matrix values that expressions name, and every local file, tox
env, module and pytest path a step refers to). Each checker is shown to fail on a small broken
file, so a green run means something. The action's shell steps are also run here, with a stub
python standing in for pip and pytest: the fail-closed verdict on good, failing, incomplete,
missing and forged reports, the pytest step's wiring, and the install order.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is not installed (pip install --no-deps -r requirements/offline.txt)"
)

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
BASH = shutil.which("bash")

# --- expressions -----------------------------------------------------------------------------------

_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_NAME = r"([A-Za-z_][A-Za-z0-9_-]*)"


def _strings(node: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    """Every string under ``node`` with the mapping key it sits under."""
    if isinstance(node, str):
        yield key, node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)


def expressions(node: Any) -> list[str]:
    """The bodies of ``${{ ... }}`` under ``node``; an ``if:`` value is an expression as a whole."""
    out: list[str] = []
    for key, text in _strings(node):
        found = _EXPR.findall(text)
        out.extend(found)
        if key == "if" and not found:
            out.append(text)
    return out


def refs(exprs: list[str], context: str) -> set[str]:
    """Names used as ``context.NAME`` in the expressions (``inputs.report`` -> ``report``)."""
    # string literals ('...') are not references
    bodies = [re.sub(r"'[^']*'", "''", e) for e in exprs]
    return {m for e in bodies for m in re.findall(rf"(?<![\w.-]){context}\.{_NAME}", e)}


def step_output_refs(exprs: list[str]) -> set[tuple[str, str]]:
    bodies = [re.sub(r"'[^']*'", "''", e) for e in exprs]
    return {(s, o) for e in bodies for s, o in re.findall(rf"(?<![\w.-])steps\.{_NAME}\.outputs\.{_NAME}", e)}


# --- shell scripts ---------------------------------------------------------------------------------

# Folders a job creates while it runs (virtual environments, reports): not checked as inputs.
_RUNTIME = re.compile(r"(^|/)(\.venv[^/]*|\.tox|\.kvsafety|build|dist)(/|$)")
_PUNCT = {";", "&&", "||", "|", "&", "(", ")", ";;", "!", "{", "}"}
_REDIRECT = {">", ">>", "<", "<<", "<<<", ">&", "<&", "&>", ">|"}
_KEYWORDS = {"if", "then", "elif", "else", "do", "while", "until", "exec", "time", "command", "env", "!"}
# pytest options that take their value as the next argument (the rest are flags)
_PYTEST_VALUE_OPTS = {"-m", "-k", "-n", "-p", "-c", "-o", "-W"}
_PYTEST_FLAGS = {
    "--kvsafety",
    "--kvsafety-store-completions",
    "--kvsafety-pcr",
    "--kvsafety-noise-ratio",
    "--benchmark-only",
    "--strict-markers",
    "--collect-only",
    "--co",
    "--lf",
    "--ff",
    "--exitfirst",
    "--verbose",
    "--quiet",
    "--runxfail",
    "--showlocals",
    "--no-header",
}


def _without_heredocs(script: str) -> str:
    """Drop here-document bodies (embedded Python is not shell) and join continued lines."""
    out: list[str] = []
    end: str | None = None
    for line in script.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        m = re.search(r"(?<!<)<<-?(?!<)\s*(['\"]?)([A-Za-z_]+)\1", line)
        if m:
            end = m.group(2)
        out.append(line)
    return re.sub(r"\\\n", " ", "\n".join(out))


def commands(script: str) -> Iterator[list[str]]:
    """Simple commands of a shell script, each as its words (assignments and redirections dropped)."""
    for line in _without_heredocs(script).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: not something this checker can read
            continue
        words: list[str] = []
        skip_next = False
        for tok in [*tokens, ";"]:
            if skip_next:
                skip_next = False
                continue
            if tok in _REDIRECT:
                skip_next = True
                if words and words[-1].isdigit():
                    words.pop()
                continue
            if tok in _PUNCT or all(c in ";&|()" for c in tok):
                while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in _KEYWORDS):
                    words.pop(0)
                if words:
                    yield words
                words = []
                continue
            words.append(tok)


def _tox_envs(root: Path) -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(root / "tox.ini", encoding="utf-8")
    return {s.split(":", 1)[1] for s in parser.sections() if s.startswith("testenv:")}


def _local_packages(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py")}


def _resolve(path: str, root: Path, workdir: Path | None) -> Path | None:
    """The file a script's path names, or None when it cannot be known before the job runs."""
    for var in ("$GITHUB_ACTION_PATH", "${GITHUB_ACTION_PATH}", "$GITHUB_WORKSPACE", "${GITHUB_WORKSPACE}"):
        if path.startswith(var):
            path = str(root) + path[len(var) :]
    if "$" in path or "{" in path or "://" in path or _RUNTIME.search(path):
        return None
    p = Path(path)
    if p.is_absolute():
        return p if p.is_relative_to(root) else None
    return None if workdir is None else workdir / p


def _exists(path: Path) -> bool:
    if any(c in str(path) for c in "*?["):
        return any(path.parent.glob(path.name))
    return path.exists()


def pytest_paths(args: list[str]) -> list[str]:
    """The positional (path) arguments of a pytest command line."""
    paths: list[str] = []
    value_next = False
    for arg in args:
        if value_next:
            value_next = False
            continue
        if arg.startswith("-"):
            long_without_value = arg.startswith("--") and "=" not in arg and arg not in _PYTEST_FLAGS
            value_next = arg in _PYTEST_VALUE_OPTS or long_without_value
            continue
        if "$" in arg or "{" in arg:
            continue
        paths.append(arg.split("::", 1)[0])
    return paths


def check_script(script: str, where: str, root: Path, workdir: Path | None) -> list[str]:
    """Local things a shell script refers to that do not exist.

    Checked: requirements files (``-r``/``-c``, and any ``requirements/*.txt``), scripts run with
    bash/sh/source or by path, ``tox -e`` envs against tox.ini, ``python -m`` modules of this repo,
    and pytest's path arguments (relative to ``workdir``; None: a working directory known only
    when the job runs, so relative paths are not checked).
    """
    problems: list[str] = []

    def need(path: str, what: str) -> None:
        target = _resolve(path, root, workdir)
        if target is not None and not _exists(target):
            problems.append(f"{where}: {what} {path!r} does not exist ({target})")

    for req in re.findall(r"[\w$./{}-]*requirements/[\w.-]+\.txt", script):
        need(req, "requirements file")
    tox_envs: set[str] | None = None
    for words in commands(script):
        cmd = words[0]
        name = os.path.basename(cmd)
        args = words[1:]
        if "/" in cmd and not any(c in cmd for c in "*?[") and not cmd.startswith(("/usr/", "/bin/")):
            need(cmd, "command")
        if name in ("bash", "sh", "source", ".") and args and not args[0].startswith("-"):
            need(args[0], "script")
        is_pip = name.startswith("pip") or args[:2] == ["-m", "pip"]
        for i, arg in enumerate(args if is_pip else []):
            if arg in ("-r", "--requirement", "-c", "--constraint") and i + 1 < len(args):
                need(args[i + 1], "requirements file")
            elif arg.startswith("--requirement="):
                need(arg.split("=", 1)[1], "requirements file")
        if name == "tox":
            tox_envs = _tox_envs(root) if tox_envs is None else tox_envs
            for i, arg in enumerate(args):
                value = None
                if arg in ("-e", "--env") and i + 1 < len(args):
                    value = args[i + 1]
                elif arg.startswith("-e") and len(arg) > 2:
                    value = arg[2:]
                elif arg.startswith("--env="):
                    value = arg.split("=", 1)[1]
                for env in (value or "").split(","):
                    if env and "$" not in env and env not in tox_envs:
                        problems.append(f"{where}: tox env {env!r} is not in tox.ini")
        pytest_args: list[str] | None = None
        if name in ("pytest", "py.test"):
            pytest_args = args
        elif len(args) >= 2 and args[0] == "-m":
            if args[1] == "pytest":
                pytest_args = args[2:]
            elif args[1].split(".")[0] in _local_packages(root):
                module = root / args[1].replace(".", "/")
                if not (module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()):
                    problems.append(f"{where}: module {args[1]!r} (python -m) does not exist")
        if pytest_args is not None:
            for path in pytest_paths(pytest_args):
                need(path, "pytest path")
    return problems


def check_bash_syntax(script: str, where: str) -> list[str]:
    """``bash -n`` on a run script (expressions replaced by a word)."""
    if BASH is None:
        return []
    text = _EXPR.sub("EXPR", script)
    result = subprocess.run([BASH, "-n"], input=text, capture_output=True, text=True, timeout=30)
    return [] if result.returncode == 0 else [f"{where}: bash -n: {result.stderr.strip()}"]


# --- steps -----------------------------------------------------------------------------------------

_REMOTE_USES = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[\w./-]+$")


def _local_action(uses: str, root: Path) -> Path | None:
    folder = (root / uses).resolve()
    for name in ("action.yml", "action.yaml"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_action(uses: str, root: Path) -> dict[str, Any] | None:
    path = _local_action(uses, root)
    if path is None:
        return None
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else None


def _has_hidden_component(path: str) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in re.split(r"[/\\]", path))


def check_steps(
    steps: Any, where: str, root: Path, *, composite: bool, workdir: str | None = None
) -> list[str]:
    """The shared checks of a job's or a composite action's steps."""
    if not isinstance(steps, list) or not steps:
        return [f"{where}: no steps"]
    problems: list[str] = []
    seen_ids: dict[str, dict[str, Any]] = {}
    for n, step in enumerate(steps, 1):
        label = f"{where} step {n}" + (
            f" ({step.get('name')})" if isinstance(step, dict) and "name" in step else ""
        )
        if not isinstance(step, dict):
            problems.append(f"{label}: not a mapping")
            continue
        exprs = expressions(step)
        for sid in sorted(refs(exprs, "steps")):
            if sid not in seen_ids:
                problems.append(f"{label}: refers to steps.{sid}, which no earlier step has as its id")
        for sid, out in sorted(step_output_refs(exprs)):
            uses = seen_ids.get(sid, {}).get("uses", "")
            action = _load_action(uses, root) if isinstance(uses, str) and uses.startswith("./") else None
            if action is not None and out not in (action.get("outputs") or {}):
                problems.append(f"{label}: steps.{sid}.outputs.{out}: {uses} declares no output {out!r}")
        has_run, has_uses = "run" in step, "uses" in step
        if has_run == has_uses:
            problems.append(f"{label}: needs exactly one of run and uses")
        if has_run:
            run = step["run"]
            if not isinstance(run, str):
                problems.append(f"{label}: run is not a string")
                continue
            if composite and "shell" not in step:
                problems.append(f"{label}: a composite action's run step needs shell")
            for expr in _EXPR.findall(run):
                if re.search(r"\b(inputs\.|github\.event\.|github\.head_ref)", expr):
                    problems.append(
                        f"{label}: ${{{{{expr}}}}} is spliced into the script (pass it through env:)"
                    )
            wd = step.get("working-directory", workdir)
            # a composite action's step runs in the caller's workspace: only $GITHUB_ACTION_PATH is known
            base: Path | None = None if composite else root
            if isinstance(wd, str):
                if "${{" in wd:
                    base = None
                else:
                    base = root / wd
                    if not base.is_dir():
                        problems.append(f"{label}: working-directory {wd!r} does not exist")
            if step.get("shell", "bash").split()[0] in ("bash", "sh"):
                problems.extend(check_bash_syntax(run, label))
            problems.extend(check_script(run, label, root, base))
        if has_uses:
            uses = step["uses"]
            if not isinstance(uses, str):
                problems.append(f"{label}: uses is not a string")
                continue
            if uses.startswith("./"):
                problems.extend(_check_local_uses(step, uses, label, root))
            elif not uses.startswith("docker://") and not _REMOTE_USES.match(uses):
                problems.append(f"{label}: uses {uses!r} is not owner/repo@ref")
            if uses.startswith("actions/upload-artifact@"):
                with_ = step.get("with") or {}
                paths = str(with_.get("path", ""))
                if not paths.strip():
                    problems.append(f"{label}: upload-artifact without a path")
                hidden = any(_has_hidden_component(_EXPR.sub("x", p)) for p in paths.split())
                if hidden and str(with_.get("include-hidden-files", "")).lower() != "true":
                    problems.append(
                        f"{label}: uploads a path under a hidden folder without include-hidden-files: true "
                        "(upload-artifact 4.4 on would skip it)"
                    )
        if "id" in step:
            if step["id"] in seen_ids:
                problems.append(f"{label}: id {step['id']!r} is used twice")
            seen_ids[str(step["id"])] = step
        for key, text in _strings(step.get("with") or {}):
            for pattern in re.findall(r"hashFiles\(([^)]*)\)", text):
                for name in re.findall(r"'([^']+)'", pattern):
                    if not any(root.glob(name)):
                        problems.append(f"{label}: hashFiles({name!r}) matches no file")
            if key == "cache-dependency-path":
                for name in text.split():
                    if "$" not in name and not any(root.glob(name)):
                        problems.append(f"{label}: cache-dependency-path {name!r} matches no file")
    return problems


def _check_local_uses(step: dict[str, Any], uses: str, label: str, root: Path) -> list[str]:
    """``uses: ./X``: X/action.yml exists, every ``with:`` key is an input, required inputs are given;
    for this repo's action, the working directory, requirements and pytest paths it is given exist."""
    if _local_action(uses, root) is None:
        return [f"{label}: uses {uses!r} but {uses}/action.yml does not exist"]
    action = _load_action(uses, root) or {}
    inputs = action.get("inputs") or {}
    with_ = step.get("with") or {}
    problems = [f"{label}: {uses} has no input {k!r}" for k in with_ if k not in inputs]
    for name, spec in inputs.items():
        if isinstance(spec, dict) and spec.get("required") and "default" not in spec and name not in with_:
            problems.append(f"{label}: {uses} requires input {name!r}")
    workdir = root
    wd = with_.get("working-directory")
    if isinstance(wd, str) and "${{" not in wd:
        workdir = root / wd
        if not workdir.is_dir():
            problems.append(f"{label}: working-directory {wd!r} does not exist")
    args = with_.get("pytest-args")
    if isinstance(args, str) and "${{" not in args:
        for path in pytest_paths(shlex.split(args)):
            target = _resolve(path, root, workdir)
            if target is not None and not _exists(target):
                problems.append(f"{label}: pytest path {path!r} does not exist ({target})")
    for key in ("extra-pip", "torch", "plugin"):
        value = with_.get(key)
        if isinstance(value, str) and "${{" not in value:
            problems.extend(check_script(f"pip install {value}", f"{label} {key}", root, workdir))
    return problems


# --- the two kinds of file -------------------------------------------------------------------------


def check_action(doc: Any, where: str, root: Path = ROOT) -> list[str]:
    """A composite action: structure, inputs and outputs, and its steps (check_steps)."""
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    problems = [f"{where}: no {key}" for key in ("name", "description") if not doc.get(key)]
    runs = doc.get("runs")
    if not isinstance(runs, dict):
        return [*problems, f"{where}: no runs"]
    if runs.get("using") != "composite":
        problems.append(f"{where}: runs.using is {runs.get('using')!r}, expected 'composite'")
    inputs = doc.get("inputs") or {}
    outputs = doc.get("outputs") or {}
    for name, spec in inputs.items():
        if not isinstance(spec, dict) or not spec.get("description"):
            problems.append(f"{where}: input {name!r} has no description")
    for name, spec in outputs.items():
        if not isinstance(spec, dict) or "value" not in spec:
            problems.append(f"{where}: output {name!r} has no value (a composite output needs one)")
    steps = runs.get("steps")
    used = refs(expressions(steps) + expressions(outputs), "inputs")
    problems += [
        f"{where}: ${{{{ inputs.{n} }}}} is used but not declared" for n in sorted(used - set(inputs))
    ]
    problems += [f"{where}: input {n!r} is declared but never used" for n in sorted(set(inputs) - used)]
    ids = {str(s["id"]) for s in steps or [] if isinstance(s, dict) and "id" in s}
    for sid in sorted(refs(expressions(outputs), "steps") - ids):
        problems.append(f"{where}: an output refers to steps.{sid}, which no step has as its id")
    problems.extend(check_steps(steps, where, root, composite=True))
    return problems


def check_workflow(doc: Any, where: str, root: Path = ROOT) -> list[str]:
    """A workflow: triggers, jobs with runs-on and steps, matrix references, and the steps."""
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    problems: list[str] = []
    if "on" not in doc and True not in doc:  # YAML 1.1 reads a bare `on:` key as True
        problems.append(f"{where}: no on (triggers)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return [*problems, f"{where}: no jobs"]
    for name, job in jobs.items():
        label = f"{where} job {name}"
        if not isinstance(job, dict):
            problems.append(f"{label}: not a mapping")
            continue
        if "uses" in job:  # a reusable workflow call has neither runs-on nor steps
            continue
        if not job.get("runs-on"):
            problems.append(f"{label}: no runs-on")
        matrix = ((job.get("strategy") or {}).get("matrix")) or {}
        declared = set(matrix) | {k for inc in matrix.get("include") or [] for k in inc}
        for key in sorted(refs(expressions(job), "matrix") - declared):
            problems.append(f"{label}: matrix.{key} is used but the job has no such matrix value")
        needs = job.get("needs") or []
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                problems.append(f"{label}: needs {need!r}, which is not a job")
        workdir = ((job.get("defaults") or {}).get("run") or {}).get("working-directory")
        problems.extend(check_steps(job.get("steps"), label, root, composite=False, workdir=workdir))
    return problems


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- the repository's files ------------------------------------------------------------------------


def test_the_files_exist() -> None:
    assert ACTION.is_file()
    names = {p.name for p in WORKFLOWS}
    assert {"cpu.yml", "gpu.yml"} <= names


@pytest.mark.parametrize("path", [ACTION, *WORKFLOWS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert isinstance(_load(path), dict)


def test_the_action() -> None:
    assert check_action(_load(ACTION), "action.yml") == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflows(path: Path) -> None:
    assert check_workflow(_load(path), str(path.relative_to(ROOT))) == []


def test_the_action_fails_closed_and_always_uploads() -> None:
    doc = _load(ACTION)
    steps = doc["runs"]["steps"]
    by_id = {s["id"]: s for s in steps if "id" in s}
    assert {"report", "passed", "status", "exit-code"} <= set(doc["outputs"])
    upload = by_id["upload"]
    assert upload["uses"].startswith("actions/upload-artifact@")
    assert "always()" in upload["if"]
    paths = upload["with"]["path"]
    for what in ("outputs.report", "outputs.summary", "outputs.junit", "kvsafety-*.png"):
        assert what in paths
    # the upload comes before the verdict, and the last step fails the job unless the gate passed
    order = [s.get("id") for s in steps]
    assert order.index("upload") < order.index("verdict") < len(order) - 1
    last = steps[-1]
    assert "always()" in last["if"] and "steps.verdict.outputs.passed != 'true'" in last["if"]
    assert "exit 1" in last["run"]
    assert "always()" in by_id["verdict"]["if"]
    # the pytest step never fails by itself (its exit code is the verdict's input), so the upload
    # and the verdict run after a failing gate
    assert "exit-code=$code" in by_id["gate"]["run"]
    assert "--kvsafety-report=$KVSAFETY_REPORT_PATH" in by_id["gate"]["run"]
    # the default installs the plugin at the action's own ref, with the hf extra
    assert '"$GITHUB_ACTION_PATH[hf,plots]"' in by_id["install"]["run"]


def test_the_gpu_workflow_gates_through_the_action() -> None:
    doc = _load(ROOT / ".github" / "workflows" / "gpu.yml")
    steps = [s for s in doc["jobs"]["gpu"]["steps"] if s.get("uses") == "./"]
    assert len(steps) == 1
    with_ = steps[0]["with"]
    assert with_["torch-preinstalled"] == "true" and with_["python-version"] == ""
    assert with_["working-directory"] == "examples/model-repo"
    assert "--kvsafety-device=cuda" in with_["pytest-args"]
    assert "--kvsafety-kernels=triton" in with_["pytest-args"]  # the gate runs the real Triton kernels
    # no plain `pytest --kvsafety` left in that job: the action is the gate
    runs = " ".join(s.get("run", "") for s in doc["jobs"]["gpu"]["steps"])
    assert "--kvsafety " not in runs and "--kvsafety\n" not in runs


def test_the_docs_workflow_is_valid() -> None:
    """docs/github-actions.md's copy-paste workflow parses and passes check_workflow (its `uses:`
    is this repo's action by name, so it is checked as owner/repo@ref)."""
    text = (ROOT / "docs" / "github-actions.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    workflows = [yaml.safe_load(b) for b in blocks]
    workflows = [w for w in workflows if isinstance(w, dict) and "jobs" in w]
    assert workflows, "no workflow in docs/github-actions.md"
    inputs = set(_load(ACTION)["inputs"])
    for n, wf in enumerate(workflows, 1):
        assert check_workflow(wf, f"docs workflow {n}") == []
        for job in wf["jobs"].values():
            for step in job.get("steps", []):
                if "pytest-kvsafety" in str(step.get("uses", "")):
                    assert set(step.get("with") or {}) <= inputs


# --- the checkers report broken files --------------------------------------------------------------

_GOOD_ACTION = """
name: a
description: b
inputs:
  args: {description: c, default: ""}
outputs:
  out: {description: d, value: "${{ steps.one.outputs.x }}"}
runs:
  using: composite
  steps:
    - id: one
      shell: bash
      env: {ARGS: "${{ inputs.args }}"}
      run: echo "x=$ARGS" >> "$GITHUB_OUTPUT"
"""

_GOOD_WORKFLOW = """
on: pull_request
jobs:
  t:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pytest tests/plugin/test_workflows.py -q && tox -e lint
"""


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_the_good_examples_pass() -> None:
    assert check_action(yaml.safe_load(_GOOD_ACTION), "a") == []
    assert check_workflow(yaml.safe_load(_GOOD_WORKFLOW), "w") == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("using: composite", "using: node20", "runs.using is 'node20'"),
        ("      shell: bash\n", "", "needs shell"),
        ('"${{ inputs.args }}"', '"${{ inputs.argz }}"', "inputs.argz }} is used but not declared"),
        ('"${{ inputs.args }}"', '"x"', "input 'args' is declared but never used"),
        ("steps.one.outputs.x", "steps.two.outputs.x", "refers to steps.two"),
        ('{description: d, value: "${{ steps.one.outputs.x }}"}', "{description: d}", "has no value"),
        ('{description: c, default: ""}', '{default: ""}', "input 'args' has no description"),
        (
            'run: echo "x=$ARGS"',
            'run: echo "x=${{ inputs.args }}"',
            "is spliced into the script",
        ),
        (
            'run: echo "x=$ARGS" >> "$GITHUB_OUTPUT"',
            'run: pip install -r "$GITHUB_ACTION_PATH/requirements/nope.txt"',
            "requirements/nope.txt",
        ),
        ('run: echo "x=$ARGS" >> "$GITHUB_OUTPUT"', 'run: if then fi "$ARGS"', "bash -n"),
    ],
)
def test_check_action_reports(old: str, new: str, expected: str) -> None:
    problems = check_action(yaml.safe_load(_edit(_GOOD_ACTION, old, new)), "a")
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("on: pull_request\n", "", "no on"),
        ("    runs-on: ubuntu-latest\n", "", "no runs-on"),
        ("    runs-on: ubuntu-latest\n", "    runs-on: ubuntu-latest\n    needs: build\n", "needs 'build'"),
        (
            "    steps:\n      - uses: actions/checkout@v4\n      - run: pytest tests/plugin/test_workflows.py -q && tox -e lint\n",
            "",
            "no steps",
        ),
        ("tests/plugin/test_workflows.py", "tests/test_missing.py", "pytest path 'tests/test_missing.py'"),
        ("tox -e lint", "tox -e lint,nope", "tox env 'nope'"),
        ("tox -e lint", "bash scripts/missing.sh", "script 'scripts/missing.sh'"),
        ("tox -e lint", "pip install --no-deps -r requirements/missing.txt", "requirements/missing.txt"),
        ("tox -e lint", "python -m kvsafety_tests.nope", "module 'kvsafety_tests.nope'"),
        ("uses: actions/checkout@v4", "uses: ./nowhere", "./nowhere/action.yml does not exist"),
        ("uses: actions/checkout@v4", "uses: actions/checkout", "is not owner/repo@ref"),
        ("uses: actions/checkout@v4", "{run: echo, uses: ./}", "exactly one of run and uses"),
        ("-q && tox", '-q --py "${{ matrix.python }}" && tox', "matrix.python is used"),
        ("- run: pytest", "- working-directory: nowhere\n        run: pytest", "working-directory 'nowhere'"),
        (
            "uses: actions/checkout@v4",
            "uses: actions/upload-artifact@v4\n        with: {name: r, path: .kvsafety/}",
            "include-hidden-files",
        ),
        (
            "uses: actions/checkout@v4",
            "uses: actions/cache@v4\n        with: {path: x, key: \"k-${{ hashFiles('nope/*.json') }}\"}",
            "hashFiles('nope/*.json') matches no file",
        ),
        ("uses: actions/checkout@v4", "uses: ./\n        with: {nope: 1}", "./ has no input 'nope'"),
        (
            "uses: actions/checkout@v4",
            "uses: ./\n        with: {working-directory: examples/model-repo, pytest-args: tests/nope.py}",
            "pytest path 'tests/nope.py'",
        ),
        (
            "uses: actions/checkout@v4",
            "uses: ./\n        with: {working-directory: examples/nope}",
            "working-directory 'examples/nope'",
        ),
        (
            "- run: pytest",
            "- run: echo ${{ steps.gate.outcome }}\n      - run: pytest",
            "refers to steps.gate",
        ),
    ],
)
def test_check_workflow_reports(old: str, new: str, expected: str) -> None:
    problems = check_workflow(yaml.safe_load(_edit(_GOOD_WORKFLOW, old, new)), "w")
    assert any(expected in p for p in problems), problems


def test_check_workflow_reads_outputs_of_the_local_action() -> None:
    text = _edit(
        _GOOD_WORKFLOW,
        "- uses: actions/checkout@v4",
        "- {id: gate, uses: ./}\n      - run: echo ${{ steps.gate.outputs.passed }} ${{ steps.gate.outputs.nope }}",
    )
    problems = check_workflow(yaml.safe_load(text), "w")
    assert len(problems) == 1 and "declares no output 'nope'" in problems[0], problems


def test_pytest_paths() -> None:
    args = shlex.split(
        "-m gpu -rs --junitxml=x.xml --kvsafety --kvsafety-quantizer int4 -n 2 tests a.py::t -k 'x y'"
    )
    assert pytest_paths(args) == ["tests", "a.py"]


# --- running the action's shell steps --------------------------------------------------------------

needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")

_STUB = '''#!{python}
"""A stand-in python: logs its arguments, fakes venv, pip and pytest; real python for the rest."""
import json, os, sys

args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps([sys.argv[0], *args]) + "\\n")
if args[:2] == ["-m", "venv"]:
    os.makedirs(os.path.join(args[-1], "bin"), exist_ok=True)
    target = os.path.join(args[-1], "bin", "python")
    with open(__file__, encoding="utf-8") as src, open(target, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    os.chmod(target, 0o755)
elif args[:1] == ["-c"] and "import torch" in args[1]:
    sys.exit(int(os.environ.get("STUB_TORCH_EXIT", "0")))
elif args[:1] == ["-c"]:
    os.execv(sys.executable, [sys.executable, *args])
elif args[:2] == ["-m", "pytest"] and "--kvsafety" in args:
    report = next(a.split("=", 1)[1] for a in args if a.startswith("--kvsafety-report="))
    if os.environ.get("STUB_REPORT"):
        with open(report, "w", encoding="utf-8") as f:
            f.write(os.environ["STUB_REPORT"])
    with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
        f.write("# pytest-kvsafety report (stub)\\n")
    sys.exit(int(os.environ.get("STUB_EXIT", "0")))
'''


def _action_step(step_id: str) -> dict[str, Any]:
    steps = _load(ACTION)["runs"]["steps"]
    return next(s for s in steps if s.get("id") == step_id)


def _context(inputs: Mapping[str, str], **extra: str) -> dict[str, str]:
    defaults = {name: str(spec.get("default", "")) for name, spec in _load(ACTION)["inputs"].items()}
    ctx = {f"inputs.{k}": v for k, v in {**defaults, **inputs}.items()}
    ctx.update(extra)
    return ctx


def _run_step(
    step: dict[str, Any], ctx: Mapping[str, str], tmp: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """Run one composite step's script as the runner would: its env: with the expressions filled in
    from ``ctx``, GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files, bash -e. Returns the process, the
    outputs it set and the step summary it wrote."""

    def fill(value: Any) -> str:
        return _EXPR.sub(lambda m: ctx[m.group(1).strip()], str(value))

    output, summary = tmp / "github_output", tmp / "step_summary"
    output.write_text("")
    summary.write_text("")
    full_env = {
        "PATH": f"{tmp / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp),
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_ACTION_PATH": str(ROOT),
        "RUNNER_TEMP": str(tmp),
        "STUB_LOG": str(tmp / "stub.log"),
        **{k: fill(v) for k, v in (step.get("env") or {}).items()},
        **(env or {}),
    }
    assert step["shell"] == "bash"
    proc = subprocess.run(
        [BASH, "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc, outputs, summary.read_text()


def _stub(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    stub = bindir / "python3"
    stub.write_text(_STUB.replace("{python}", sys.executable))
    stub.chmod(0o755)
    shutil.copy(stub, bindir / "python")
    return stub


def _stub_log(tmp: Path) -> list[list[str]]:
    path = tmp / "stub.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _report(
    status: str = "complete", passed: bool = True, verdicts: tuple[str, ...] = ("pass",), policy: str = "fail"
) -> str:
    return json.dumps(
        {
            "schema": "kvsafety-report/2",
            "status": status,
            "config": {"inconclusive": policy},
            "runs": [{"model": "m", "quantizer": f"q{i}", "verdict": v} for i, v in enumerate(verdicts)],
            "gate": {
                "passed": passed,
                "failed_runs": 0,
                "errors": 0,
                "reasons": [] if passed else ["int4 failed"],
            },
        }
    )


@needs_bash
@pytest.mark.parametrize(
    ("report", "exit_code", "passed", "status", "why"),
    [
        (_report(), "0", "true", "complete", None),
        (_report(), "1", "false", "complete", "pytest --kvsafety exited 1"),
        (_report(), "", "false", "complete", "did not run"),
        (None, "0", "false", "missing", "no report at"),
        ("{not json", "0", "false", "invalid", "unreadable report"),
        ('{"schema": "other/1", "status": "complete"}', "0", "false", "invalid", "is not a kvsafety report"),
        (_report(status="incomplete", passed=False), "1", "false", "incomplete", "not 'complete'"),
        (_report(status="incomplete"), "0", "false", "incomplete", "not 'complete'"),
        (
            _report(passed=False, verdicts=("fail",)),
            "1",
            "false",
            "complete",
            "gate.passed is not true: int4 failed",
        ),
        # a forged gate: passed, but a run failed, or there is no run
        (_report(verdicts=("pass", "fail")), "0", "false", "complete", "1 of 2 runs did not pass"),
        (_report(verdicts=()), "0", "false", "complete", "no runs"),
        (_report(status="partial"), "0", "false", "partial", "not 'complete'"),
        # an inconclusive run passes only under the report's own `inconclusive = "warn"`
        (_report(verdicts=("pass", "inconclusive")), "0", "false", "complete", "1 of 2 runs did not pass"),
        (_report(verdicts=("pass", "inconclusive"), policy="warn"), "0", "true", "complete", None),
    ],
)
def test_the_verdict_fails_closed(
    tmp_path: Path, report: str | None, exit_code: str, passed: str, status: str, why: str | None
) -> None:
    path = tmp_path / "report.json"
    if report is not None:
        path.write_text(report)
    ctx = _context({}, **{"steps.gate.outputs.exit-code": exit_code, "steps.paths.outputs.report": str(path)})
    proc, outputs, summary = _run_step(_action_step("verdict"), ctx, tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert outputs == {"passed": passed, "status": status}
    if why is None:
        assert "gate passed" in proc.stdout and summary == ""
    else:
        assert why in proc.stdout and "::error" in proc.stdout
        assert "FAILED" in summary and why in summary
    # the last step fails the job unless the verdict said passed
    last = _load(ACTION)["runs"]["steps"][-1]
    assert "steps.verdict.outputs.passed != 'true'" in last["if"]
    proc, _, _ = _run_step(last, ctx, tmp_path, tmp_path)
    assert proc.returncode == 1


def _paths(tmp: Path, workdir: Path, report: str = ".kvsafety/report.json") -> dict[str, str]:
    ctx = _context({"working-directory": str(workdir), "report": report})
    proc, outputs, _ = _run_step(_action_step("paths"), ctx, tmp, ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return outputs


@needs_bash
def test_the_paths_step(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    out = _paths(tmp_path, work)
    real = work.resolve()
    assert out["report"] == str(real / ".kvsafety" / "report.json")
    assert out["summary"] == str(real / ".kvsafety" / "summary.md")
    assert out["junit"] == str(real / ".kvsafety" / "junit-kvsafety.xml")
    assert _paths(tmp_path, work, "../out/r.json")["report"] == str(real.parent / "out" / "r.json")
    ctx = _context({"working-directory": str(tmp_path / "nope")})
    proc, outputs, _ = _run_step(_action_step("paths"), ctx, tmp_path, ROOT)
    assert proc.returncode == 1 and "is not a folder" in proc.stdout and outputs == {}


@needs_bash
@pytest.mark.parametrize("exit_code", [0, 1, 4])
def test_the_pytest_step(tmp_path: Path, exit_code: int) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    paths = _paths(tmp_path, work)
    folder = Path(paths["dir"])
    folder.mkdir()
    stale = [folder / n for n in ("report.json", "summary.md", "junit-kvsafety.xml", "kvsafety-old.png")]
    for f in stale:
        f.write_text("from an earlier run")
    (folder / "keep.txt").write_text("not ours")
    stub = _stub(tmp_path)
    ctx = _context(
        {"pytest-args": "--kvsafety-device=cuda -k 'not slow' -n 2"},
        **{f"steps.paths.outputs.{k}": v for k, v in paths.items()},
        **{"steps.install.outputs.python": str(stub)},
    )
    env = {"STUB_EXIT": str(exit_code), "STUB_REPORT": _report() if exit_code != 4 else ""}
    proc, outputs, summary = _run_step(_action_step("gate"), ctx, tmp_path, work, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the verdict step decides
    assert outputs == {"exit-code": str(exit_code)}
    pytest_call = next(c for c in _stub_log(tmp_path) if c[1:3] == ["-m", "pytest"])
    assert pytest_call[3:] == [
        "--kvsafety",
        f"--kvsafety-report={paths['report']}",
        f"--junitxml={paths['junit']}",
        "--kvsafety-device=cuda",
        "-k",
        "not slow",
        "-n",
        "2",
    ]
    # what an earlier run left is gone (a usage error writes no report: none is left to be trusted)
    assert (folder / "report.json").exists() == (exit_code != 4)
    assert not (folder / "kvsafety-old.png").exists() and not (folder / "junit-kvsafety.xml").exists()
    assert (folder / "keep.txt").exists()
    # the plugin's summary went to summary.md (uploaded) and into the step summary
    assert (folder / "summary.md").read_text() == "# pytest-kvsafety report (stub)\n"
    assert summary == "# pytest-kvsafety report (stub)\n"


@needs_bash
def test_the_pytest_step_without_extra_args(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    paths = _paths(tmp_path, work)
    ctx = _context(
        {},
        **{f"steps.paths.outputs.{k}": v for k, v in paths.items()},
        **{"steps.install.outputs.python": str(_stub(tmp_path))},
    )
    proc, outputs, _ = _run_step(_action_step("gate"), ctx, tmp_path, work, {"STUB_REPORT": _report()})
    assert proc.returncode == 0 and outputs == {"exit-code": "0"}, proc.stderr
    call = next(c for c in _stub_log(tmp_path) if c[1:3] == ["-m", "pytest"])
    assert len(call) == 6  # python -m pytest --kvsafety --kvsafety-report=... --junitxml=...


def _install(
    tmp: Path, inputs: Mapping[str, str], env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, str], list[list[str]]]:
    _stub(tmp)
    ctx = _context(inputs, **{"steps.paths.outputs.workdir": str(tmp), "runner.temp": str(tmp)})
    proc, outputs, _ = _run_step(_action_step("install"), ctx, tmp, tmp, env)
    venv_python = str(tmp / "kvsafety-venv" / "bin" / "python")
    calls = [c[1:] for c in _stub_log(tmp) if c[0] == venv_python and c[1] != "-c"]
    return proc, outputs, calls


@needs_bash
def test_the_install_step_installs_torch_first_then_the_plugin_at_the_actions_ref(tmp_path: Path) -> None:
    proc, outputs, calls = _install(tmp_path, {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    venv = _stub_log(tmp_path)[0]
    assert venv[1:] == ["-m", "venv", str(tmp_path / "kvsafety-venv")]  # no system site-packages
    assert calls == [
        ["-m", "pip", "install", "--upgrade", "pip"],
        ["-m", "pip", "install", "torch==2.13.0"],
        ["-m", "pip", "install", f"{ROOT}[hf,plots]"],
        ["-m", "pip", "install", "--no-deps", "-r", f"{ROOT}/requirements/offline.txt"],
        ["-m", "pytest", "--version"],
    ]
    assert outputs == {"python": str(tmp_path / "kvsafety-venv" / "bin" / "python")}


@needs_bash
def test_the_install_step_with_the_runners_torch_and_specs(tmp_path: Path) -> None:
    inputs = {
        "python-version": "",
        "torch-preinstalled": "true",
        "plugin": "'pytest-kvsafety[hf] @ git+https://example.invalid/p@v1'",
        "offline-data": "false",
        "extra-pip": "-e . pytest-xdist",
    }
    proc, _, calls = _install(tmp_path, inputs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = _stub_log(tmp_path)
    assert log[0][0].endswith("/python3")  # the runner's python3, not setup-python's
    assert log[0][1:] == ["-m", "venv", "--system-site-packages", str(tmp_path / "kvsafety-venv")]
    assert any(c[1] == "-c" and "import torch" in c[2] for c in log)
    assert calls == [
        ["-m", "pip", "install", "--upgrade", "pip"],
        ["-m", "pip", "install", "pytest-kvsafety[hf] @ git+https://example.invalid/p@v1"],
        ["-m", "pip", "install", "-e", ".", "pytest-xdist"],
        ["-m", "pytest", "--version"],
    ]


@needs_bash
def test_the_install_step_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    proc, outputs, _ = _install(
        tmp_path, {"python-version": "", "torch-preinstalled": "true"}, {"STUB_TORCH_EXIT": "1"}
    )
    assert proc.returncode == 1 and "cannot import torch" in proc.stdout and outputs == {}
    proc, outputs, _ = _install(tmp_path, {"offline-data": "yes"})
    assert proc.returncode == 1 and "KVSAFETY_OFFLINE_DATA must be true or false" in proc.stdout
    assert outputs == {}


def test_every_action_step_script_is_shown_here() -> None:
    """The steps run above are the action's steps with shell scripts: none is left unexercised."""
    ran = {"paths", "install", "gate", "verdict"}
    scripted = {s.get("id") for s in _load(ACTION)["runs"]["steps"] if "run" in s}
    assert scripted - {None} == ran


def test_docs_mention_every_input() -> None:
    text = (ROOT / "docs" / "github-actions.md").read_text(encoding="utf-8")
    doc = _load(ACTION)
    for name in [*doc["inputs"], *doc["outputs"]]:
        assert f"`{name}`" in text, name
