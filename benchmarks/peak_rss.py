"""Peak resident memory of a command and every process it starts (Linux, reads /proc).

    python benchmarks/peak_rss.py -- tox -e vllm
    python benchmarks/peak_rss.py --interval 0.25 --json peak.json -- pytest tests/e2e/test_vllm_backend.py

Every ``--interval`` seconds (0.5 by default) it sums VmRSS over the command's process and all its
descendants (tox, the pytest it starts, pytest-xdist workers, an engine process) and keeps the
largest sum; at the end it prints that peak in GiB (and the largest single process, and the peak of
the summed PSS, which counts pages shared between processes once). Memory that lives shorter than
one interval can be missed by those sums; the largest VmHWM (the kernel's own peak RSS of each
process seen) cannot: it is the exact peak of the largest single process. The command's exit status
is this script's exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 1024**3


def _children() -> dict[int, list[int]]:
    """ppid -> child pids, for every process now in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces or parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(root: int) -> list[int]:
    tree, todo, seen = _children(), [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += tree.get(pid, [])
    return seen


def _kib(path: str, field: str) -> int:
    """A ``field: N kB`` line of a /proc status-like file, in KiB (0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Sampler(threading.Thread):
    def __init__(self, root: int, interval: float, pss: bool) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.pss = root, interval, pss
        self.peak_rss = self.peak_pss = self.peak_one = self.peak_hwm = 0  # bytes
        self.peak_procs = 0
        self.samples = 0
        self.done = threading.Event()

    def sample(self) -> None:
        pids = _tree(self.root)
        rss = [_kib(f"/proc/{p}/status", "VmRSS:") * 1024 for p in pids]
        total = sum(rss)
        if total > self.peak_rss:
            self.peak_rss, self.peak_procs = total, sum(r > 0 for r in rss)
        self.peak_one = max(self.peak_one, *rss)
        self.peak_hwm = max(self.peak_hwm, *(_kib(f"/proc/{p}/status", "VmHWM:") * 1024 for p in pids))
        if self.pss:
            self.peak_pss = max(
                self.peak_pss, sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") * 1024 for p in pids)
            )
        self.samples += 1

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (0.5)")
    parser.add_argument("--no-pss", action="store_true", help="skip the PSS sum (reads smaps_rollup)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: python benchmarks/peak_rss.py -- CMD [ARGS...]")

    start = time.monotonic()
    proc = subprocess.Popen(command)
    sampler = Sampler(proc.pid, args.interval, pss=not args.no_pss)
    sampler.start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait()
    sampler.done.set()
    sampler.join()
    wall = time.monotonic() - start
    result = {
        "command": command,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "samples": sampler.samples,
        "interval_s": args.interval,
        "peak_rss_gib": round(sampler.peak_rss / GIB, 3),
        "processes_at_peak": sampler.peak_procs,
        "largest_process_rss_gib": round(sampler.peak_one / GIB, 3),
        "largest_process_hwm_gib": round(sampler.peak_hwm / GIB, 3),
        "peak_pss_gib": None if args.no_pss else round(sampler.peak_pss / GIB, 3),
    }
    pss = "" if args.no_pss else f", peak PSS {result['peak_pss_gib']:.2f} GiB"
    print(
        f"peak_rss.py: peak RSS {result['peak_rss_gib']:.2f} GiB over the process tree "
        f"({sampler.peak_procs} processes at the peak; largest single process "
        f"{result['largest_process_rss_gib']:.2f} GiB; largest VmHWM {result['largest_process_hwm_gib']:.2f} GiB"
        f"{pss}); exit {rc}, {wall:.0f} s, "
        f"{sampler.samples} samples every {args.interval} s",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
