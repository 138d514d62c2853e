"""Monitoring as a user's stack sees it: a real Prometheus (`python -m launch.monitor`) scraping a
Ray cluster through the discovery file Ray writes, during the tiny three-stage job; the gauges,
the Grafana dashboard's expressions and the alert rules checked through Prometheus's HTTP API.

Prometheus is a system package (`apt-get install --no-install-recommends prometheus`; .ci/run
installs it). Without it these tests are skipped, unless BRIDGE_REQUIRE_PROMETHEUS=1 (CI) makes
the absence a failure."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "launch" / "prometheus"

if shutil.which("prometheus") is None or shutil.which("promtool") is None:
    if os.environ.get("BRIDGE_REQUIRE_PROMETHEUS"):
        raise RuntimeError("BRIDGE_REQUIRE_PROMETHEUS is set but prometheus / promtool are not on the PATH")
    pytest.skip(
        "Prometheus is not installed (apt-get install --no-install-recommends prometheus)", allow_module_level=True
    )


def test_rules_are_valid_and_pass_their_unit_tests():
    for command in (["promtool", "check", "rules", "rules.yml"], ["promtool", "test", "rules", "rules_test.yml"]):
        done = subprocess.run(command, cwd=RULES, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_monitor_refuses_in_one_line(tmp_path):
    def monitor(env=None):
        return subprocess.run(
            [sys.executable, "-m", "launch.monitor", "--ray-dir", str(tmp_path), "--data-dir", str(tmp_path / "prom")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
        )

    no_binary = monitor({**os.environ, "PATH": str(Path(sys.executable).parent)})
    assert no_binary.returncode == 2
    assert no_binary.stderr.strip().startswith("error: Prometheus is not installed: `apt-get install")
    no_ray = monitor()
    assert no_ray.returncode == 2 and len(no_ray.stderr.strip().splitlines()) == 1
    assert f"error: no Ray cluster's metrics targets at {tmp_path}/prom_metrics_service_discovery.json" in no_ray.stderr


def query(base: str, path: str, **params) -> list:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    body = json.loads(urllib.request.urlopen(url, timeout=30).read())
    assert body["status"] == "success", body
    return body["data"]["result"] if "result" in body["data"] else body["data"]


@pytest.fixture(scope="module")
def monitored_run(tiny_model_dir, tmp_path_factory):
    """A Ray head with its dashboard, Prometheus started by `launch.monitor` on its discovery file
    (scraped every second), and the tiny job run on that cluster. Yields (Prometheus URL, the
    run's records, the job's start and end)."""
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("monitoring")
    head = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 4,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "object_store_memory": 200 * 2**20,
            "_system_config": {"metrics_report_interval_ms": 1000},
        },
    )
    prometheus = f"127.0.0.1:{free_port()}"
    session = head.head_node.get_session_dir_path()
    monitor = None
    try:
        deadline = time.monotonic() + 60  # the dashboard writes the discovery file once it is up
        while not Path(session, "prom_metrics_service_discovery.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        monitor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.monitor",
                "--ray-dir",
                session,
                "--listen",
                prometheus,
                "--data-dir",
                str(folder / "prometheus"),
                "--scrape-interval",
                "1s",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://{prometheus}"
        for _ in range(60):
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        start = time.time()
        job = subprocess.run(
            [
                sys.executable,
                "-m",
                "launch.train",
                "--config",
                "launch/configs/tiny.yaml",
                f"model.path={tiny_model_dir}",
                f"run.output_dir={folder / 'runs'}",
                f"cluster.address={head.address}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        end = time.time()
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
        time.sleep(5)  # the last values are scraped (each series stays on the endpoint ~20 s more)
        lines = (folder / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
        yield base, [json.loads(line) for line in lines if line.strip()], start, end
    finally:
        if monitor is not None:
            monitor.terminate()
            output = monitor.communicate(timeout=30)[0]
            print(output[-2000:])
        head.shutdown()


def series_values(base: str, expr: str, start: float, end: float) -> list[tuple[dict, list[tuple[float, float]]]]:
    found = query(base, "query_range", query=expr, start=start - 5, end=end + 30, step="1s")
    return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in found]


def test_every_stage_arrives_with_its_labels_and_the_values_of_metrics_jsonl(monitored_run):
    base, records, start, end = monitored_run
    by_stage: dict[tuple[str, str], list[float]] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("time", "step", "stage") and isinstance(value, (int, float)) and math.isfinite(value):
                by_stage.setdefault((key, record["stage"]), []).append(float(value))
    assert {stage for _, stage in by_stage} == {"eval", "sft", "grpo", "mining", "rewrite"}
    missing, wrong = [], []
    for (key, stage), logged in by_stage.items():
        name = "ray_bridge_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
        found = series_values(base, f'{name}{{run="tiny", stage="{stage}"}}', start, end)
        seen = [v for _, values in found for _, v in values]
        if not seen:
            missing.append(f"{name}{{stage={stage}}}")
            continue
        # Every value Prometheus holds is one the run logged, and the stage's last one arrived (a
        # step shorter than the scrape interval may be overwritten before it is scraped).
        if not all(any(math.isclose(v, w, rel_tol=1e-6, abs_tol=1e-12) for w in logged) for v in seen):
            wrong.append(f"{name}{{stage={stage}}}: {sorted(set(seen))[:4]} not among {logged[:4]}")
        if not any(math.isclose(v, logged[-1], rel_tol=1e-6, abs_tol=1e-12) for v in seen):
            wrong.append(f"{name}{{stage={stage}}}: the last value {logged[-1]} never arrived")
    assert not missing, missing
    assert not wrong, wrong

    # Scrape delay: a record's time to its first sample in Prometheus (`logged_at` holds that time).
    delays = []
    for _, values in series_values(base, 'ray_bridge_logged_at{run="tiny"}', start, end):
        first_seen: dict[float, float] = {}
        for at, value in values:
            first_seen.setdefault(value, at)
        delays += [at - value for value, at in first_seen.items()]
    print(f"scrape delay over {len(delays)} records: median {statistics.median(delays):.1f} s, max {max(delays):.1f} s")
    assert max(delays) < 15


def test_every_dashboard_expression_returns_the_run(monitored_run):
    base, _, start, end = monitored_run
    dashboard = json.loads((ROOT / "launch" / "grafana" / "bridge-distill.json").read_text())
    expressions = [t["expr"].replace("$run", "tiny") for panel in dashboard["panels"] for t in panel["targets"]]
    empty = [e for e in expressions if not any(m.get("run") == "tiny" for m, _ in series_values(base, e, start, end))]
    assert not empty, empty
    print(f"{len(expressions)} dashboard expressions, each with a series for the run")


def test_alert_rules_run_on_the_live_run_and_stay_quiet_on_a_healthy_one(monitored_run):
    base, records, _, _ = monitored_run
    groups = query(base, "rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 10 and all(rule["health"] == "ok" for rule in rules), [
        (r["name"], r.get("lastError")) for r in rules
    ]
    # The recording rules have data for the run: the stalled check and the jump check can fire.
    for recorded in ("bridge:step_s:median_2h", "bridge:sampler_kl:median_1h"):
        assert query(base, "query", query=f'last_over_time({recorded}{{run="tiny"}}[1h])'), recorded
    firing = [a for a in query(base, "alerts")["alerts"] if a["labels"].get("run") == "tiny"]
    assert not firing, firing
    # On-policy steps with both sides in fp32: the engine and the learner agree to numerical noise
    # (about 1e-13; an engine sampling from a stale output head gave 1e-4).
    kls = [r["sampler_kl"] for r in records if r["stage"] in ("grpo", "rewrite")]
    print(f"sampler KL of the run's {len(kls)} GRPO steps: max {max(kls):.2e}")
    assert kls and max(kls) < 1e-8
