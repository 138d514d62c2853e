"""Serve a student with Ray Serve behind an OpenAI-compatible API (streaming too).

    python -m launch.serve --model runs/smollm2-gsm8k/checkpoints/000041-stage3-rewrite [key=value ...]
    python -m launch.serve --model embedded:smollm2-135m-instruct port=8001 replicas=2

Listens on 127.0.0.1:8000 unless `host=` / `port=` say otherwise; joins the Ray cluster of
RAY_ADDRESS / `ray start` if there is one, else starts one here. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from cluster.connect import ClusterUnreachable, join
from cluster.model_source import ModelError, resolve_model
from cluster.storage import is_uri
from cluster.typed_config import ConfigError, describe, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        help="checkpoint folder or URI (s3://..., credentials from the environment), hub name, or "
        "embedded:smollm2-135m-instruct",
    )
    parser.add_argument("--config", help="YAML file of serve settings (see --help-config)")
    parser.add_argument(
        "--help-config", action="store_true", help="print every serve setting with its default and help, then exit"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. replicas=2 engine.max_model_len=2048")
    return parser.parse_args(argv)


def start(model_path: str, cfg) -> str:
    """Start the application on the connected Ray; returns its base URL."""
    from ray import serve

    from rollout.serve_app import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(model_path, cfg), name="student", route_prefix="/")
    return f"http://{cfg.host}:{cfg.port}/v1"


def main(argv: list[str] | None = None) -> int:
    from rollout.serve_app import ServeConfig

    args = parse_args(argv)
    if args.help_config:
        print(describe(ServeConfig))
        return 0
    try:
        if not args.model:
            raise ConfigError("--model is required")
        cfg = load_config(ServeConfig, args.config, args.overrides)
        model_path = resolve_model(args.model)
    except (ConfigError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    try:
        join(None, dashboard_host="127.0.0.1")
    except ClusterUnreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url = start(args.model if is_uri(args.model) else model_path, cfg)
    print(f"serving {args.model} as '{cfg.name}' at {url} (Ctrl-C stops)")
    print(
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{cfg.name}", "messages": [{{"role": "user", "content": "What is 12 * 7?"}}]}}\''
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
