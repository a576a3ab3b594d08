"""The builtin prompt set: this project's own prompts, read from the package data
(``kvsafety_tests.fixtures``, the repository's ``fixtures/``) with ``importlib.resources``.

``fixtures/prompts_builtin.jsonl`` holds harmful requests across ten harm categories, harmless
requests on the same topics, and the 20 calibration prompts PCR uses. ``_fixture`` also serves the
long-context document (``context``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from .model import Prompt, PromptError

# Package-internal: load_prompts names the set "builtin"; ``_builtin_prompts`` pairs other sets.
__all__: list[str] = []


def _fixture(name: str) -> str:
    return resources.files("kvsafety_tests.fixtures").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _builtin_prompts() -> tuple[Prompt, ...]:
    prompts = []
    for lineno, line in enumerate(_fixture("prompts_builtin.jsonl").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "kind", "category", "text"} - row.keys()
        if missing:
            raise PromptError(f"prompts_builtin.jsonl line {lineno} lacks {', '.join(sorted(missing))}")
        prompts.append(
            Prompt(row["id"], row["text"], row["kind"], row["category"], "builtin", row.get("label"))
        )
    return tuple(prompts)
