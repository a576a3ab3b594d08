"""``GateSession``: one audit's runs, each (model, quantizer) computed once, and the report.

The pytest plugin holds one per process (controller, sole process, or xdist worker) and the CLI
one per audit. A run is computed by ``ModelAudit`` (``engine.audit``) and kept in the
``SharedStore`` (``engine.store``), so every process reads the same numbers. Workers send their
runs to the controller through ``workeroutput``; the controller writes the one report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..models import log_progress
from ..report import (
    AuditConfig,
    Report,
    RunEntry,
    error_run,
    finish_report,
    new_report,
    run_from_dict,
    run_to_dict,
    utc_now,
)
from ..settings import GateConfig
from .audit import AuditSettings, Log, ModelAudit
from .store import SharedStore

__all__ = ["Combo", "GateSession"]

Combo = tuple[str, str]  # (model, quantizer)
_RUN_KIND = "run"


class GateSession:
    """The plugin's state for one pytest process (controller, sole process, or xdist worker)."""

    def __init__(
        self,
        config: GateConfig,
        store: SharedStore,
        *,
        device: str,
        log: Log = log_progress,
        worker_index: int | None = None,
        on_run: Callable[[RunEntry], None] | None = None,
    ) -> None:
        from ..prompts import load_prompts
        from .run import judge_config

        self.config = config
        self.store = store
        self.device = device
        self.log = log
        self.worker_index = worker_index
        #: called with each run this process computes, once it is in ``runs`` and the store
        self.on_run = on_run
        self.prompt_set = load_prompts(config.prompts, limit=config.limit, seed=config.prompt_seed)
        #: the report's judge fields: name, version, measured accuracy (or unmeasured)
        self.judge_fields = judge_config(config.judge, require_measured=config.require_measured_judge)
        self.judge_name: str = self.judge_fields["judge"]
        self.started = utc_now()
        self.runs: dict[Combo, RunEntry] = {}
        self.expected: set[Combo] = set()
        self._engines: dict[str, Any] = {}
        self._engine_errors: dict[str, str] = {}
        self._stored_seen = 0

    # -- computing ---------------------------------------------------------------------------------
    def run(self, model: str, quantizer: str) -> RunEntry:
        """The audited run of (model, quantizer): computed once across processes, then cached."""
        combo = (model, quantizer)
        if combo not in self.runs:
            computed: list[bool] = []  # empty when another process computed it (read from the store)

            def compute() -> dict[str, Any]:
                computed.append(True)
                return run_to_dict(self._compute(model, quantizer))

            data = self.store.get_or_compute(f"{_RUN_KIND}\0{model}\0{quantizer}", compute)
            self.runs[combo] = run_from_dict(data, source=f"{model} / {quantizer}")
            if computed and self.on_run is not None:
                self.on_run(self.runs[combo])
        return self.runs[combo]

    def _compute(self, model: str, quantizer: str) -> RunEntry:
        engine = self._engine(model)
        if engine is None:
            return error_run(
                model=model,
                quantizer=quantizer,
                prompt_set=self.prompt_set.name,
                error=self._engine_errors[model],
                backend=self.config.backend,
            )
        run: RunEntry = engine.audit(quantizer)
        return run

    def _engine(self, model: str) -> Any:
        if model in self._engines or model in self._engine_errors:
            return self._engines.get(model)
        c = self.config
        shared = {**c.shared(), "device": self.device, "thresholds": c.thresholds_for(model)}
        settings = AuditSettings(**shared, model=model)

        def memo(key: str, compute: Callable[[], Any]) -> Any:
            return self.store.get_or_compute(f"fp\0{model}\0{key}", compute)

        try:
            settings.validate()
            self._engines[model] = ModelAudit(
                settings,
                self.prompt_set,
                log=self.log,
                memo=memo,
                rerun_first=(self.worker_index or 0) % 2 == 1,
            )
        except Exception as e:  # the model cannot be audited: every run of it is an error, never a pass
            self._engine_errors[model] = f"{type(e).__name__}: {e}"
            self.log(f"{model}: cannot audit: {type(e).__name__}: {e}")
            return None
        return self._engines[model]

    # -- assembling --------------------------------------------------------------------------------
    def merge(
        self, runs: Iterable[Mapping[str, Any]], expected: Iterable[Iterable[str]], source: str
    ) -> None:
        """Add runs and expected combos sent by a worker (``workeroutput``)."""
        for data in runs:
            run = run_from_dict(data, source=source)
            self.runs.setdefault((run.model, run.quantizer), run)
        for combo in expected:
            model, quantizer = combo
            self.expected.add((model, quantizer))

    def collect_stored_runs(self) -> int:
        """Add every run any process has finished (read from the store, only when there are new
        ones); returns how many runs are known."""
        stored = self.store.count(_RUN_KIND)
        if stored != self._stored_seen:
            for data in self.store.values(_RUN_KIND):
                run = run_from_dict(data, source="store")
                self.runs.setdefault((run.model, run.quantizer), run)
            self._stored_seen = stored
        return len(self.runs)

    def worker_output(self) -> dict[str, Any]:
        return {
            "runs": [run_to_dict(r) for r in self.runs.values()],
            "expected": [list(c) for c in sorted(self.expected)],
        }

    def report(self, *, problems: Iterable[str] = (), in_progress: bool = False) -> Report:
        """The final report: complete only when every expected run is here and nothing went wrong.
        ``in_progress``: the runs so far, status incomplete (what a killed run leaves on disk)."""
        from ..report import detect_environment

        c = self.config
        config = AuditConfig(
            models=c.models,
            quantizers=c.quantizers,
            prompt_sets=(self.prompt_set.name,),
            **self.judge_fields,
            max_new_tokens=c.max_new_tokens,
            thresholds=c.thresholds.as_dict(),
            confidence=c.confidence,
            inconclusive=c.inconclusive,
            batch_size=c.batch_size,
            extra={
                "per_model_thresholds": {m: t.as_dict() for m, t in c.per_model.items()},
                "limit": c.limit,
                "backend": c.backend,
                "kernels": c.kernels,
                "round_size": c.round_size,
                "time_budget": c.time_budget,
                "config_source": c.source,
            },
        )
        report = new_report(detect_environment(self.device), config, started=self.started)
        order = {combo: i for i, combo in enumerate(c.combos())}
        runs = sorted(self.runs.values(), key=lambda r: order.get((r.model, r.quantizer), len(order)))
        report = dataclasses.replace(report, runs=tuple(runs))
        reasons = list(problems)
        if in_progress:
            reasons.append(
                f"in progress: {len(runs)} run(s) finished so far (a report left like this was killed)"
            )
        missing = sorted(self.expected - set(self.runs))
        if missing:
            names = ", ".join(f"{m} / {q}" for m, q in missing)
            reasons.append(f"{len(missing)} selected run(s) never finished: {names}")
        if not self.expected and not self.runs:
            reasons.append("no kvsafety test was selected: nothing was measured")
        if reasons:
            return finish_report(report, status="incomplete", reason="; ".join(reasons))
        configured = c.combos()
        uncovered = [combo for combo in configured if combo not in self.runs]
        if uncovered:  # gate items deselected (-k / -m): the report cannot vouch for the rest
            names = ", ".join(f"{m} / {q}" for m, q in uncovered)
            return finish_report(
                report,
                status="partial",
                reason=f"{len(configured) - len(uncovered)} of {len(configured)} configured "
                f"run(s) audited; not audited (deselected): {names}",
            )
        return finish_report(report)
