"""Values shared by the processes of one audit: ``SharedStore`` and the workers' ``ProgressFile``.

Under pytest-xdist every worker holds a ``GateSession`` over the same store (a folder the
controller creates): the first process to need a value (a model's fp arm, a quantizer's run)
computes it under a file lock and the others read it, so each is computed once across workers and
every process sees the same numbers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report.atomic import write_atomically

if TYPE_CHECKING:
    from .audit import Log

__all__ = ["ProgressFile", "SharedStore"]


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
