"""Metrics sinks: one JSONL line per record, TensorBoard scalars, and Ray dashboard gauges."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path


class MetricsSink:
    def __init__(self, run_dir: Path, run_name: str, use_ray_metrics: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        self.run_name = run_name
        self.use_ray_metrics = use_ray_metrics
        self.gauges = {}

    def log(self, step: int, stage: str, metrics: dict[str, float]) -> None:
        record = {"time": time.time(), "step": step, "stage": stage, **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{stage}/{key}", value, step)
                self._gauge(key, value, stage)
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

    def close(self) -> None:
        self.jsonl.close()
        self.tensorboard.close()
