"""Prometheus for a running Ray cluster, with the project's recording and alert rules.

    python -m launch.monitor [--ray-dir /tmp/ray] [--listen 127.0.0.1:9090] [--data-dir runs/.prometheus]

Ray starts no Prometheus: its dashboard's Metrics tab and Grafana read one. This writes a
Prometheus config that scrapes every node of the cluster through the service-discovery file Ray's
head keeps up to date (`prom_metrics_service_discovery.json` in its temp or session folder) and
loads `launch/prometheus/rules.yml`, then runs Prometheus in the foreground (Ctrl-C stops it).

For the curves in the Ray dashboard's Metrics tab, the head must be started with
RAY_PROMETHEUS_HOST pointing here (`launch/local.sh` sets it); Grafana, with this Prometheus as its
data source, imports `launch/grafana/bridge-distill.json` (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "launch" / "prometheus" / "rules.yml"
DISCOVERY = "prom_metrics_service_discovery.json"
INSTALL = (
    "Prometheus is not installed: `apt-get install --no-install-recommends prometheus` (Debian, Ubuntu), "
    "or put a release from https://prometheus.io/download/ on the PATH"
)


class MonitorError(RuntimeError):
    """What keeps Prometheus from starting, in one line."""


def discovery_file(ray_dir: str) -> Path:
    """Ray's service-discovery file under `ray_dir` (its temp folder, or one session's folder)."""
    path = Path(ray_dir).expanduser() / DISCOVERY
    if not path.is_file():
        raise MonitorError(
            f"no Ray cluster's metrics targets at {path}: start Ray with its dashboard first "
            "(`ray start --head`, launch/local.sh), or pass --ray-dir (the head's --temp-dir or a session folder)"
        )
    return path.resolve()


def config_text(discovery: Path, rules: Path, scrape_interval: str) -> str:
    """The Prometheus config: every Ray node from the discovery file, the project's rules."""
    return (
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        "rule_files:\n"
        f"  - '{rules}'\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        "    file_sd_configs:\n"
        f"      - files: ['{discovery}']\n"
    )


def prometheus_command(args: argparse.Namespace) -> list[str]:
    """Write the config under `--data-dir` and return the Prometheus command line."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise MonitorError(INSTALL)
    data = Path(args.data_dir).expanduser().resolve()
    data.mkdir(parents=True, exist_ok=True)
    config = data / "prometheus.yml"
    config.write_text(config_text(discovery_file(args.ray_dir), RULES, args.scrape_interval))
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address={args.listen}",
        "--log.level=warn",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ray-dir", default="/tmp/ray", help="Ray's temp folder, or a session folder (default: %(default)s)"
    )
    parser.add_argument("--listen", default="127.0.0.1:9090", help="address Prometheus serves on (default: loopback)")
    parser.add_argument("--data-dir", default="runs/.prometheus", help="its config and time-series database")
    parser.add_argument(
        "--scrape-interval", default="5s", help="how often every node is scraped and the rules evaluated"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        command = prometheus_command(args)
    except MonitorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = f"http://{args.listen}"
    print(
        f"Prometheus on {url}, scraping the Ray cluster of {args.ray_dir} with the rules of {RULES.relative_to(ROOT)}"
    )
    print(f"Ray dashboard's Metrics tab: start the head with RAY_PROMETHEUS_HOST={url} (launch/local.sh does)")
    sys.stdout.flush()
    os.execv(command[0], command)  # Prometheus in this process: Ctrl-C and signals reach it


if __name__ == "__main__":
    sys.exit(main())
