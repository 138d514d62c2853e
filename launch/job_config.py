"""The root of the config tree: one section per component, each defined next to its code."""

from __future__ import annotations

from dataclasses import dataclass

from curriculum.data import DataConfig
from curriculum.rewards import RewardConfig
from curriculum.tasks import TaskConfig
from launch.config import option, section
from learner.grpo import GRPOConfig


@dataclass
class RunConfig:
    name: str = option("run", "Run name; the run folder is <output_dir>/<name>.")
    output_dir: str = option("runs", "Folder that holds run folders (config, metrics, checkpoints).")
    seed: int = option(0, "Seed of every random choice: data order, masking, sampling.")


@dataclass
class JobConfig:
    run: RunConfig = section(RunConfig, "Where the run writes and how it is seeded.")
    data: DataConfig = section(DataConfig, "Training and evaluation problems.")
    tasks: TaskConfig = section(TaskConfig, "How the three curriculum stages turn problems into prompts.")
    rewards: RewardConfig = section(RewardConfig, "Which registered reward each GRPO stage uses.")
    grpo: GRPOConfig = section(GRPOConfig, "GRPO advantages and the clipped policy loss.")
