"""PCR's calibration pool: harmful requests that no evaluation set holds, from which the audit
picks the ones the fp model refuses (engine/calibration.py, ``select_refused``).

A diagnosis of lost refusals needs refusals to lose, so PCR's 20 harmful calibration prompts
are chosen by the fp model's own verdicts, from a pool larger than 20. The pool of a prompt set
is its own harmful calibration prompts, then, when those came from the builtin set (the builtin
set itself, or a benchmark paired with it), the builtin pool (``fixtures/calibration_pool.jsonl``:
this project's own requests, ten per harm category, in round-robin category order). Pool prompts
get the set's long context when the set's calibration prompts have one. No text of the pool is
an evaluation prompt of any named set (tests/unit/test_pcr_calibration.py checks this).
"""

from __future__ import annotations

import functools
import json

from .builtin import _builtin_prompts, _fixture
from .context import LONG_SUFFIX
from .model import Prompt, PromptError, PromptSet

__all__ = ["POOL_FILE", "builtin_calibration_pool", "calibration_pool"]

#: The builtin pool's file in the package data (kvsafety_tests.fixtures).
POOL_FILE = "calibration_pool.jsonl"


@functools.cache
def builtin_calibration_pool() -> tuple[Prompt, ...]:
    """The builtin harmful calibration prompts, then the pool file's requests, in file order."""
    prompts = [p for p in _builtin_prompts() if p.kind == "calibration" and p.label == "harmful"]
    for lineno, line in enumerate(_fixture(POOL_FILE).splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("kind") != "calibration" or row.get("label") != "harmful":
            raise PromptError(f"{POOL_FILE} line {lineno}: kind/label must be calibration/harmful, got {row}")
        prompts.append(Prompt(row["id"], row["text"], "calibration", row["category"], "builtin", "harmful"))
    return tuple(prompts)


def calibration_pool(prompt_set: PromptSet) -> list[Prompt]:
    """The harmful calibration pool of ``prompt_set``, in the order selection tries it.

    The set's own harmful calibration prompts come first; when they include builtin ones, the
    rest of the builtin pool follows, wrapped in the same long context as the set's (a long
    variant's text is the context template around the request, so the wrapper is what surrounds
    a builtin request's text there). Texts already in the pool are not repeated.
    """
    own = [p for p in prompt_set.calibration if p.label == "harmful"]
    builtin = {p.id: p for p in builtin_calibration_pool()}
    pool = list(own)
    seen_ids = {p.id.removesuffix(LONG_SUFFIX) for p in own}
    anchor = next((p for p in own if p.id.removesuffix(LONG_SUFFIX) in builtin), None)
    if anchor is None:
        return pool
    base = builtin[anchor.id.removesuffix(LONG_SUFFIX)].text
    before, found, after = anchor.text.rpartition(base)
    if not found:  # the set changed the builtin text itself: add the pool as it is
        before, after = "", ""
    suffix = LONG_SUFFIX if anchor.id.endswith(LONG_SUFFIX) and found else ""
    texts = {p.text for p in pool}
    for p in builtin_calibration_pool():
        text = before + p.text + after
        if p.id in seen_ids or text in texts:
            continue
        pool.append(Prompt(p.id + suffix, text, "calibration", p.category, p.source, "harmful"))
        texts.add(text)
    return pool
