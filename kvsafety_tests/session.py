"""One ``pytest --kvsafety`` run: computes each (model, quantizer) once and assembles the report.

Under pytest-xdist every worker holds a ``GateSession`` over the same ``SharedStore`` (a folder the
controller creates): the first process to need a value (a model's fp arm, a quantizer's run)
computes it under a file lock and the others read it, so each is computed once across workers and
every process sees the same numbers. Workers send their runs to the controller through
``workeroutput``; the controller writes the one report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .models import log_progress
from .report import (
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
from .report.atomic import write_atomically
from .settings import GateConfig

__all__ = [
    "Combo",
    "GateSession",
    "Log",
    "ProgressFile",
    "SharedStore",
    "pick_device",
    "visible_gpus",
    "worker_gpus",
]

Combo = tuple[str, str]  # (model, quantizer)
_RUN_KIND = "run"
Log = Callable[[str], None]


class SharedStore:
    """JSON values shared by the processes of one pytest run, each computed once under a lock."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        """``<kind>-<digest>.json``, kind being the key up to its first NUL (``run``, ``fp``)."""
        kind = key.split("\0", 1)[0]
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.folder / f"{kind}-{digest}.json"

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def count(self, kind: str) -> int:
        """How many values of this kind any process has stored so far (no file is read)."""
        return sum(1 for _ in self.folder.glob(f"{kind}-*.json"))

    def values(self, kind: str) -> list[Any]:
        """Every stored value of this kind (what any process computed so far)."""
        paths = sorted(self.folder.glob(f"{kind}-*.json"))
        return [json.loads(p.read_text(encoding="utf-8"))["value"] for p in paths]

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        path = self._path(key)
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))["value"]
        with self._locked(path):
            if path.exists():  # computed by another process while this one waited
                return json.loads(path.read_text(encoding="utf-8"))["value"]
            # encoded before any file exists; the computing process returns the decoded value too,
            # so it sees what every other process reads (lists, not tuples; string keys)
            text = json.dumps({"key": key, "value": compute()})
            write_atomically(path, lambda f: f.write(text.encode("utf-8")))
            return json.loads(text)["value"]


class ProgressFile:
    """Progress lines of xdist workers, whose stderr pytest-xdist does not show: each worker appends
    to one file in the store, and the controller's ``tail`` thread prints new lines as they come."""

    def __init__(self, store: SharedStore) -> None:
        self.path = store.folder / "progress.log"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def writer(self, worker: str) -> Log:
        def log(message: str) -> None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"[{worker}] {message}\n")

        return log

    def tail(self, log: Log, *, interval: float = 0.5) -> None:
        def follow() -> None:
            offset = 0
            while True:
                stopping = self._stop.wait(interval)
                if self.path.exists():
                    with open(self.path, encoding="utf-8") as f:
                        f.seek(offset)
                        chunk = f.read()
                    complete = chunk[: chunk.rfind("\n") + 1]
                    offset += len(complete.encode("utf-8"))
                    for line in complete.splitlines():
                        log(line)
                if stopping:
                    return

        self._thread = threading.Thread(target=follow, name="kvsafety-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def pick_device(device: str, *, worker_index: int | None, cuda_count: int) -> str:
    """The device this process audits on: ``auto`` is cuda when there is one; under pytest-xdist with
    several GPUs, worker N takes GPU N mod count (a plain ``cuda`` only; ``cuda:K`` is kept)."""
    if device == "auto":
        device = "cuda" if cuda_count else "cpu"
    if device == "cuda" and worker_index is not None and cuda_count > 1:
        return f"cuda:{worker_index % cuda_count}"
    return device


def visible_gpus(environ: Mapping[str, str], cuda_count: int) -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES's entries where it is set (ids or
    UUIDs, in order; empty means none), else 0..cuda_count-1."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(cuda_count)]
    return [v.strip() for v in value.split(",") if v.strip()]


def worker_gpus(worker_index: int, workers: int, per_worker: int, visible: Sequence[str]) -> list[str]:
    """The GPUs pytest-xdist worker ``worker_index`` (of ``workers``) owns: its own consecutive
    block of ``per_worker`` (vLLM's tensor_parallel_size). vLLM engines claim most of a GPU's
    memory, so two workers never share one: too few GPUs is an error naming the choices."""
    need = workers * per_worker
    listed = ",".join(visible) or "none"
    if per_worker > len(visible):
        raise ValueError(
            f"tensor_parallel_size {per_worker}: each engine needs that many GPUs, "
            f"{len(visible)} visible ({listed})"
        )
    if need > len(visible):
        raise ValueError(
            f"{workers} pytest-xdist workers x tensor_parallel_size {per_worker} need {need} GPUs, "
            f"{len(visible)} visible ({listed}); use -n {len(visible) // per_worker} "
            "or fewer, or a smaller tensor_parallel_size"
        )
    return list(visible[worker_index * per_worker : (worker_index + 1) * per_worker])


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
        from .judge import load_judge
        from .prompts import load_prompts

        self.config = config
        self.store = store
        self.device = device
        self.log = log
        self.worker_index = worker_index
        #: called with each run this process computes, once it is in ``runs`` and the store
        self.on_run = on_run
        self.prompt_set = load_prompts(config.prompts, limit=config.limit)
        self.judge_name = load_judge(config.judge).name
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
        from .audit import AuditSettings, ModelAudit

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
        from .report import detect_environment

        c = self.config
        config = AuditConfig(
            models=c.models,
            quantizers=c.quantizers,
            prompt_sets=(self.prompt_set.name,),
            judge=self.judge_name,
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
