"""Entry point of a training job: `python -m launch.train --config FILE [key=value ...]`.

Everything the job reads is checked here first (config keys and types, data sources), so bad
input ends with one readable line before any actor starts.
"""

from __future__ import annotations

import argparse
import sys

from curriculum.data import DataError, load_problems
from launch.config import ConfigError, describe, load_config
from launch.job_config import JobConfig

DEFAULT_CONFIG = "launch/configs/smollm2-gsm8k.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file (default: %(default)s)")
    parser.add_argument("--help-config", action="store_true", help="print every config key with its default and help, then exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.group_size=4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print(describe(JobConfig))
        return 0
    try:
        cfg = load_config(JobConfig, args.config, args.overrides)
        train = load_problems(cfg.data.train, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_train)
        evaluation = load_problems(cfg.data.eval, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_eval)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"config ok: {len(train.problems)} training problems ({train.skipped} skipped), {len(evaluation.problems)} evaluation problems")
    print("The distributed runtime (rollout workers, learner group, controller) is not yet available.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
