"""Metrics sinks: one JSONL line per record, TensorBoard scalars, and Ray dashboard gauges.

Ray serves a gauge on its node's Prometheus endpoint for about 20 s after the last `set` (its
metrics agent drops a series once the emitter stops reporting it). A step can take longer than
that, so the sink sets the current stage's gauges again every second: each series stays on the
endpoint, with its last value, until the next training stage begins.

Besides each record's own values, the gauges carry what alert rules need and PromQL cannot derive
(launch/prometheus/rules.yml): `logged_at`, the time of the stage's last record (a trainer that
stops logging has stalled), and `<key>_stage_start` for reward and accuracy, their mean over the
stage's first few steps (a collapse is measured against it).

On resume, what the interrupted run logged after its last checkpoint describes work that is done
again: those JSONL records move to `metrics.interrupted.jsonl` and TensorBoard purges their steps,
so that the curves follow the run that continues.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from pathlib import Path

# Ray's agent keeps a gauge for 2x its report interval (at least 1 s) after it arrives: a value set
# again every second is never dropped.
GAUGE_REFRESH_S = 1.0
# A stage's starting level of these is their mean over its first steps (`<key>_stage_start`).
STAGE_START_KEYS, STAGE_START_STEPS = ("reward_mean", "accuracy"), 5


def set_aside_after(run_dir: Path, since: float) -> int:
    """Move the records logged after time `since` to metrics.interrupted.jsonl; returns how many."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    keep, late = [], []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True):
        if line.strip():
            # A line that does not parse was cut short by the kill: it goes aside with the rest.
            (late if _time_of(line) > since else keep).append(line if line.endswith("\n") else line + "\n")
    if late:
        with (run_dir / "metrics.interrupted.jsonl").open("a", encoding="utf-8") as handle:
            handle.writelines(late)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)
    return len(late)


def _time_of(line: str) -> float:
    try:
        return float(json.loads(line)["time"])
    except (ValueError, TypeError, KeyError):
        return math.inf


class MetricsSink:
    def __init__(
        self, run_dir: Path, run_name: str, use_ray_metrics: bool = True, resumed_at: tuple[float, int] | None = None
    ):
        """`resumed_at`: (when the checkpoint resumed from was saved, its global step)."""
        from torch.utils.tensorboard import SummaryWriter

        purge_step = None
        if resumed_at is not None:
            saved_at, global_step = resumed_at
            set_aside_after(run_dir, saved_at)
            purge_step = global_step + 1
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        self.run_name = run_name
        self.use_ray_metrics = use_ray_metrics
        self.gauges = {}
        self.live: dict[tuple[str, str], float] = {}  # (gauge, stage) -> the value kept on the endpoint
        self.stage_start: dict[tuple[str, str], list[float]] = {}  # (stage, key) -> its first values
        self.live_lock, self.closing = threading.Lock(), threading.Event()
        self.refresher = threading.Thread(target=self._refresh, name="gauge-refresh", daemon=True)

    def begin_stage(self) -> None:
        """A training stage begins: the series logged so far (the last stage's, its evaluation) are no
        longer set again, so Ray drops them from the endpoint."""
        with self.live_lock:
            self.live.clear()

    def log(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        record = {"time": time.time(), "step": step, "stage": stage, **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{stage}/{key}", value, step)
                self._gauge(key, value, stage)
        self._gauge("logged_at", record["time"], stage)
        for key in STAGE_START_KEYS:
            first = self.stage_start.setdefault((stage, key), [])
            if key in metrics and len(first) < STAGE_START_STEPS:
                first.append(float(metrics[key]))
                if len(first) == STAGE_START_STEPS:
                    self._gauge(f"{key}_stage_start", sum(first) / len(first), stage)
        self.tensorboard.flush()

    def _gauge(self, key: str, value: float, stage: str) -> None:
        """Custom metrics in the Ray dashboard (Metrics tab / Prometheus): bridge_<key>{run, stage}."""
        if not self.use_ray_metrics:
            return
        from ray.util.metrics import Gauge

        name = "bridge_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        if name not in self.gauges:
            self.gauges[name] = Gauge(name, description=f"{key} of the current step", tag_keys=("run", "stage"))
        self.gauges[name].set(float(value), tags={"run": self.run_name, "stage": stage})
        with self.live_lock:
            self.live[(name, stage)] = float(value)
        if self.refresher.ident is None:
            self.refresher.start()

    def _refresh(self) -> None:
        while not self.closing.wait(GAUGE_REFRESH_S):
            with self.live_lock:
                live = list(self.live.items())
            for (name, stage), value in live:
                self.gauges[name].set(value, tags={"run": self.run_name, "stage": stage})

    def close(self) -> None:
        self.closing.set()
        if self.refresher.is_alive():
            self.refresher.join()
        self.jsonl.close()
        self.tensorboard.close()
