"""Memory of a job spread over several processes (driver, Ray actors, their children), for benchmarks.

Two figures, because they answer different questions:
- `peak_gib`: the highest total proportional set size (PSS) of the processes, sampled while the job
  runs. PSS splits a page shared by n processes (the torch library, the object store) into n
  shares, so the total is the memory the job really holds at that moment.
- `sum_of_peaks_gib`: every process's own peak resident set (VmHWM), added up. It counts shared
  pages once per process and adds peaks that happened at different times, so it overstates a
  multi-process job; it is what `ru_maxrss` gives for a single process.
"""

from __future__ import annotations

import threading
from pathlib import Path


def _read_kib(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass  # the process has exited: it holds nothing now
    return 0


def _peak_rss_kib(pid: int) -> int:
    return _read_kib(Path(f"/proc/{pid}/status"), "VmHWM:")


def peak_rss_gib(pid: int) -> float:
    """One process's own peak resident set (VmHWM)."""
    return _peak_rss_kib(pid) / 2**20


def _with_descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


class MemoryProbe:
    """Samples the total PSS of some processes (and their children) in a background thread."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.pids: list[int] = []
        self.peak_kib = 0
        self._hwm_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-probe", daemon=True)

    def watch(self, *pids: int) -> MemoryProbe:
        self.pids.extend(pids)
        return self

    def sample(self) -> int:
        """Total PSS now, in KiB; also remembers every process's peak resident set."""
        total = 0
        for pid in {p for root in self.pids for p in _with_descendants(root)}:
            total += _read_kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
            # kept with max: an exited process reads 0, but its peak still counts
            self._hwm_kib[pid] = max(self._hwm_kib.get(pid, 0), _peak_rss_kib(pid))
        self.peak_kib = max(self.peak_kib, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemoryProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # once more, after the thread: no two samples at the same time

    @property
    def peak_gib(self) -> float:
        return self.peak_kib / 2**20

    @property
    def sum_of_peaks_gib(self) -> float:
        return sum(self._hwm_kib.values()) / 2**20
