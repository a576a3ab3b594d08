"""Prompt sets: the harmful and harmless requests an audit sends, and the 20 PCR calibration prompts.

Pure Python (no torch import): the plugin resolves a prompt-set name given on the command line
before any model loads, so a typo fails in milliseconds.

Where prompts come from:

- ``builtin``: written by this project (``fixtures/prompts_builtin.jsonl``): harmful requests
  across ten harm categories, harmless requests on the same topics (many of them
  sensitive-but-fine, which a well-aligned model must still answer), and 20 calibration prompts
  (10 harmful, 10 harmless) that PCR uses and the evaluation never sees.
- standard benchmarks, read from the data files that pinned PyPI packages already ship
  (never copied into this repository): ``advbench``, ``harmbench``, ``harmbench-text``,
  ``harmbench-text-val``, ``strongreject``, ``strongreject-small``, ``donotanswer``.
- a file the user names: ``file:PATH`` (CSV, TSV, JSONL, JSON or TXT), or with the column
  defaults of a benchmark that no package ships: ``xstest:PATH``, ``jbb:PATH``,
  ``sorry-bench:PATH``.

Any named set with ``-long`` appended (``builtin-long``, ``advbench-long``, ...) puts each request
after about ``DEFAULT_CONTEXT_WORDS`` words of a benign document: schemes that keep the R most
recent tokens in full precision (KIVI, R up to 128) leave a short prompt entirely unquantized,
and the audit would then measure nothing.

Pairing: benchmarks that hold only harmful prompts get the builtin harmless prompts (for the
over-refusal flip rate) and the builtin calibration prompts (for PCR), so every set can feed the
whole audit. The set's ``notes`` say so; pass ``pair_builtin=False`` to keep a set as it is.

The parts, each imported here so ``from kvsafety_tests.prompts import X`` finds every public name:

- ``model``: ``Prompt``, ``PromptSet``, ``PromptError``, the kinds and labels.
- ``files``: ``FileFormat``, the presets in ``FILE_FORMATS`` and ``read_prompt_file``.
- ``benchmarks``: the loaders of the packaged benchmarks (``BENCHMARKS``).
- ``builtin``: the builtin set, read from the package data (``kvsafety_tests.fixtures``).
- ``context``: ``long_context``, ``long_context_variant``, ``with_long_context``.
- ``subset``: ``stratified_subset``, the deterministic ``limit``; ``stratified_order``, the order of
  a sequential audit's rounds (every prefix proportional by source, then category).
- ``load``: ``load_prompts`` (one set or the union of several) and ``SET_NAMES``.
- ``calibration``: ``calibration_pool``, the harmful calibration pool PCR picks its refused
  prompts from (the set's own, then ``builtin_calibration_pool``).
"""

from .benchmarks import BENCHMARKS
from .calibration import builtin_calibration_pool, calibration_pool
from .context import (
    DEFAULT_CONTEXT_WORDS,
    LONG_CONTEXT_TEMPLATE,
    LONG_SUFFIX,
    long_context,
    long_context_variant,
    with_long_context,
)
from .files import FILE_FORMATS, FileFormat, read_prompt_file
from .load import SET_NAMES, load_prompts
from .model import KINDS, UNCATEGORIZED, Prompt, PromptError, PromptSet
from .subset import stratified_order, stratified_subset

__all__ = [
    "BENCHMARKS",
    "DEFAULT_CONTEXT_WORDS",
    "FILE_FORMATS",
    "KINDS",
    "LONG_CONTEXT_TEMPLATE",
    "LONG_SUFFIX",
    "SET_NAMES",
    "UNCATEGORIZED",
    "FileFormat",
    "Prompt",
    "PromptError",
    "PromptSet",
    "builtin_calibration_pool",
    "calibration_pool",
    "load_prompts",
    "long_context",
    "long_context_variant",
    "read_prompt_file",
    "stratified_order",
    "stratified_subset",
    "with_long_context",
]
