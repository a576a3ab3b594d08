"""What a judge is: its three labels, the ``Judge`` protocol, the judge names, and the one error.

Every judge module imports this one and nothing of the others', so the judges stay independent and
``load_judge`` (the package's ``__init__``) is the only place that knows them all.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import KvSafetyError
from ..models import PICKLE_SUFFIXES

__all__ = [
    "CASCADE_JUDGE",
    "DEFAULT_JUDGE",
    "EMBEDDING_JUDGE",
    "JUDGE_NAMES",
    "LABELS",
    "PROBE_JUDGE",
    "RULES_JUDGE",
    "RULES_JUDGE_V2",
    "Judge",
    "JudgeError",
    "check_pairs",
    "model_folder",
    "normalise",
    "read_head",
]

LABELS: tuple[str, ...] = ("refused", "complied", "incoherent")
RULES_JUDGE = "rules-v1"  # RuleJudge.name
RULES_JUDGE_V2 = "rules-v2"  # RuleJudgeV2.name
EMBEDDING_JUDGE = "minilm-linear-v1"  # EmbeddingJudge.name
CASCADE_JUDGE = "cascade-v1"  # CascadeJudge.name
PROBE_JUDGE = "qwen-probe-v1"  # ProbeJudge.name
# The default: rules-v2 measures better than rules-v1 on the frozen test split of the labelled set
# v2 (docs/results/judge-accuracy.md) and, unlike cascade-v1, needs no model or extra package.
DEFAULT_JUDGE = RULES_JUDGE_V2
JUDGE_NAMES: tuple[str, ...] = (RULES_JUDGE_V2, RULES_JUDGE, PROBE_JUDGE, CASCADE_JUDGE, EMBEDDING_JUDGE)


class JudgeError(KvSafetyError):
    """A judge name, path, label mapping or labelled file is invalid; one line naming the bad
    value and the valid choices (or the command that fixes it)."""


@runtime_checkable
class Judge(Protocol):
    """Labels one completion; ``label_many`` lets model-based judges batch."""

    name: str

    def label(self, prompt: str, completion: str) -> str:
        """One of ``LABELS``."""
        ...

    def label_many(self, prompts: Sequence[str], completions: Sequence[str]) -> list[str]:
        """``label`` for each pair, in order."""
        ...


def read_head(default_file: str, path: str | Path | None, what: str, train: str) -> dict[str, Any]:
    """A learned head's JSON: ``path``, or ``default_file`` shipped in ``kvsafety_tests.fixtures``;
    a ``JudgeError`` naming ``what`` (e.g. "probe head") and the ``train`` command when it cannot
    be read or its labels are not ours."""
    from importlib import resources

    try:
        if path is None:
            text = resources.files("kvsafety_tests.fixtures").joinpath(default_file).read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
    except OSError as e:
        raise JudgeError(
            f"{what} {str(path or default_file)!r} cannot be read ({e}); train one: {train}"
        ) from None
    head = json.loads(text)
    if tuple(head.get("labels", ())) != LABELS:
        raise JudgeError(f"{what} labels {head.get('labels')!r} differ from {list(LABELS)}")
    return dict(head)


def check_pairs(prompts: Sequence[str], completions: Sequence[str]) -> None:
    """``label_many``'s argument check: one prompt for each completion."""
    if len(prompts) != len(completions):
        raise JudgeError(
            f"label_many: {len(prompts)} prompts for {len(completions)} completions; pass one each"
        )


def model_folder(path: str | Path, what: str, *, allow_pickle: bool = False) -> tuple[Path, dict[str, Any]]:
    """A model judge's local folder and its ``config.json``, checked before anything loads: the
    folder exists, has a config and safetensors weights (pickled weights only with
    ``allow_pickle``: loading them can run code). ``what`` names the judge kind in the errors."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise JudgeError(
            f"judge {str(path)!r} is neither a judge name ({', '.join(JUDGE_NAMES)}) nor a local model folder"
        )
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    if "config.json" not in files:
        raise JudgeError(f"{what} folder {str(path)!r} has no config.json")
    if not any(f.endswith(".safetensors") for f in files):
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if not pickles:
            raise JudgeError(f"{what} folder {str(path)!r} has no weights (*.safetensors)")
        if not allow_pickle:
            raise JudgeError(
                f"{what} folder {str(path)!r} holds only pickled weights ({', '.join(pickles)}), which can "
                "run code when loaded; convert them to safetensors, or pass allow_pickle if you trust the files"
            )
    return folder, json.loads((folder / "config.json").read_text("utf-8"))


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u02bc": "'"})


def normalise(text: str) -> str:
    """The text a judge reads: NFKC, curly quotes made straight, outer whitespace stripped.

    The rule judge matches its phrases on it and the embedding head was trained on it; both label
    a completion that normalises to nothing ``incoherent`` without reading further."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).strip()
