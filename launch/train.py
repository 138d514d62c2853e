"""Entry point of a training job.

    python -m launch.train --config launch/configs/smollm2-gsm8k.yaml [key=value ...]
    python -m launch.train --resume runs/smollm2-gsm8k        # continue from its last checkpoint (a path or URI)
    python -m launch.train --resume auto [--config ...]       # ... of the newest run of the config's name
    python -m launch.train --plan [--config ...]              # where each actor would run; starts nothing

Everything the job reads is checked first (config keys and types, data, model, resume folder), so
bad input ends with one readable line before any actor starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.connect import ClusterUnreachable, join
from cluster.model_source import ModelError, resolve_model
from cluster.placement import PlacementError, check_layout
from cluster.remote import RemoteCallError
from cluster.storage import StorageError, Store, is_uri
from cluster.typed_config import ConfigError, describe, load_config
from curriculum.data import DataError, load_problems
from curriculum.faults import NumericalFault
from curriculum.prompter import Prompter, PromptTooLong
from curriculum.remote_run import checkpoint_name, create_run, find_latest_run, open_run
from curriculum.report import table, write_report
from curriculum.run_dir import CheckpointError
from launch.job_config import JobConfig
from learner.models import check_frozen_layers, check_lora_targets, model_shape

DEFAULT_CONFIG = "launch/configs/smollm2-gsm8k.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config file (default: %(default)s)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest complete checkpoint; 'auto' = the newest resumable "
        "run of the config's run.name",
    )
    parser.add_argument(
        "--stop-after-stage",
        type=int,
        choices=(1, 2, 3),
        default=3,
        help="end the job after this stage (resume it later with --resume)",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="connect to the cluster, reserve the layout, print each actor's node and a memory estimate, "
        "release it and exit",
    )
    parser.add_argument(
        "--help-config", action="store_true", help="print every config key with its default and help, then exit"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.group_size=4")
    return parser.parse_args(argv)


def init_ray(cfg: JobConfig) -> None:
    """'auto': join the cluster of RAY_ADDRESS or `ray start`, else start one here; 'local': always
    start one here (without the dashboard); anything else is a cluster address. A cluster named
    that does not answer is a ClusterUnreachable naming it (cluster/connect.py)."""
    import ray

    resources = {"num_cpus": cfg.cluster.num_cpus} if cfg.cluster.num_cpus else {}
    if cfg.cluster.address == "local":
        ray.init(address="local", include_dashboard=False, **resources)
    else:
        # A Ray started here keeps its dashboard on loopback; joining a cluster keeps its own settings.
        join(cfg.cluster.address, dashboard_host="127.0.0.1", **resources)


def prepare(args: argparse.Namespace):
    """Validate everything; returns (cfg, run folder or None, checkpoint or None, model, data)."""
    checkpoint, run = None, None
    if args.resume:
        # The storage options (and, for 'auto', the run's name and place) come from the command line.
        named = load_config(JobConfig, args.config if args.resume == "auto" else None, args.overrides)
        try:
            if args.resume == "auto":
                run = find_latest_run(named.run.output_dir, named.run.name, named.storage)
                checkpoint = run.latest_checkpoint()  # damaged checkpoints are passed over
            else:
                run = open_run(args.resume, named.storage)
                checkpoint = run.resume_checkpoint()  # a damaged newest checkpoint is refused
        except (FileNotFoundError, CheckpointError) as err:
            raise ConfigError(str(err)) from None
        except OSError as err:
            raise StorageError(
                f"cannot read the run at {args.resume if args.resume != 'auto' else named.run.output_dir}: {err}"
            ) from None
        cfg = load_config(JobConfig, run.resolved_config(), args.overrides)
    else:
        cfg = load_config(JobConfig, args.config, args.overrides)
    if is_uri(run.location if run else cfg.run.output_dir):
        Store.open(run.location if run else cfg.run.output_dir, cfg.storage).check_writable(
            "run.output_dir" if run is None else "the run folder"
        )
    train = load_problems(cfg.data.train, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_train)
    evaluation = load_problems(cfg.data.eval, cfg.data.format, cfg.data.skip_malformed, cfg.data.limit_eval)
    for name, report in (("train", train), ("eval", evaluation)):
        if report.skipped:
            print(f"data.{name}: skipped {report.skipped} malformed rows, e.g. {report.skipped_examples[0]}")
    model_path = resolve_model(cfg.model.path, storage=cfg.storage)
    check_frozen_layers(model_path, cfg.learner.frozen_layers)
    check_lora_targets(model_path, cfg.learner.lora)
    train_problems, evaluation_problems = fit_prompts(cfg, model_path, train.problems, evaluation.problems)
    # Actors resolve the model on their own nodes (hub name, embedded model, URI); a folder is
    # passed as an absolute path, which must exist on every node (or be shared).
    start = str(Path(model_path).resolve()) if Path(cfg.model.path).expanduser().is_dir() else cfg.model.path
    return cfg, run, checkpoint, start, train_problems, evaluation_problems


def fit_prompts(cfg: JobConfig, model_path: str, train: list, evaluation: list) -> tuple[list, list]:
    """Every prompt the run can build must fit model.max_prompt_tokens (or its problem is dropped)."""
    from transformers import AutoTokenizer

    prompter = Prompter(
        AutoTokenizer.from_pretrained(model_path), cfg.model.max_prompt_tokens, cfg.tasks.use_chat_template
    )
    skip = cfg.model.long_prompts == "skip"
    train, dropped_train = prompter.fitting(train, True, "data.train", skip)
    evaluation, dropped_eval = prompter.fitting(evaluation, False, "data.eval", skip)
    for name, dropped in (("train", dropped_train), ("eval", dropped_eval)):
        if dropped:
            print(
                f"data.{name}: dropped {dropped} problems whose prompts exceed "
                f"model.max_prompt_tokens={cfg.model.max_prompt_tokens}"
            )
    if not train or not evaluation:
        raise DataError(
            "no problem is left once those whose prompts are too long are dropped; raise model.max_prompt_tokens"
        )
    return train, evaluation


def show_plan(args: argparse.Namespace) -> int:
    """`--plan`: the config and the model's shape are read (not its weights, nor the data)."""
    from launch.plan import plan

    try:
        cfg = load_config(JobConfig, args.config, args.overrides)
        shape = model_shape(cfg.model.path, cfg.storage, cfg.learner.lora)
    except (ConfigError, ModelError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        init_ray(cfg)
        text, problem = plan(cfg, shape, cfg.model.path)
    except (PlacementError, ClusterUnreachable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print(describe(JobConfig))
        return 0
    if args.plan:
        return show_plan(args)
    try:
        cfg, run, checkpoint, model_path, train, evaluation = prepare(args)
    except (ConfigError, DataError, ModelError, PromptTooLong, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from curriculum.controller import Controller

    try:
        init_ray(cfg)
        check_layout(cfg.learner.num_learners, cfg.rollout.num_workers, cfg.cluster, cfg.rollout.tensor_parallel_size)
    except (PlacementError, ClusterUnreachable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if run is None:
        run = create_run(cfg.run.output_dir, cfg.run.name, cfg, cfg.storage)
    else:
        run.discard_uncommitted()
    print(f"run folder: {run.location}" + (f" (resuming from {checkpoint_name(checkpoint)})" if checkpoint else ""))
    try:
        Controller(
            cfg, run, model_path, train, evaluation, resume_from=checkpoint, stop_after_stage=args.stop_after_stage
        ).run_all()
    except (RemoteCallError, PlacementError, NumericalFault, FloatingPointError, StorageError) as err:
        try:
            latest = run.latest_checkpoint()
            where = f"its last checkpoint is {checkpoint_name(latest)}" if latest else "it has no checkpoint yet"
        except OSError:  # the storage itself is what failed
            where = "its checkpoints could not be listed"
        print(
            f"error: {err}\nThe run stopped; {where}. Continue it with: python -m launch.train --resume {run.location}",
            file=sys.stderr,
        )
        return 1
    report = write_report(run.path)
    run.publish()
    print(table(report["evaluations"]))
    print(f"report: {run.location}/report.json, {run.location}/report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
