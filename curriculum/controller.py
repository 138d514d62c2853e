"""The controller: advances one run through the three curriculum stages.

  controller ──tasks──▶ rollout workers (vLLM) ──groups──▶ rewards
      ▲                       ▲                              │
      │ stage gates, eval,    │ weight broadcast             ▼ advantages
      │ checkpoints           │                              │
      └──── metrics ◀──── learner group (DeepSpeed ZeRO) ◀───┘

  stage 1  SFT: shuffled, masked teacher steps -> the ordered rationale
  stage 2  GRPO: masked completion, the masked share ramped to 1.0 (question alone)
  mining   k samples per training problem; all k wrong = persistent failure
  stage 3  GRPO: rewrite the teacher solution of each persistent failure, much shorter

Every stage ends with an evaluation slice and a checkpoint; `RunState` in each checkpoint says
where to continue, so `--resume` never repeats a finished stage. Batches and task masks are
derived from (seed, stage, step), so a resumed step draws the batch the interrupted one drew; the
rollout sampling seed is derived the same way.
An update skipped for a non-finite loss or gradient is logged and counted; a run of them stops the run.
With `grpo.overlap_rollout`, a GRPO step starts sampling the next step's groups before its own
update, and waits for them before pushing the new weights (one-step off-policy).
"""

from __future__ import annotations

import dataclasses
import sys
import time

from tqdm import tqdm

from cluster.metrics import MetricsSink
from cluster.model_source import resolve_on_node
from cluster.placement import place
from curriculum import steps
from curriculum.data import Problem
from curriculum.evaluation import evaluate, mine_failures
from curriculum.faults import NonFiniteStreak
from curriculum.prompter import Prompter
from curriculum.remote_run import checkpoint_name
from curriculum.run_dir import RunDir, RunState
from curriculum.stages import (
    STAGE_NAMES,
    batch_indices,
    problem_length,
    sampling_seed,
    sft_tasks,
    stage_end_label,
    step_rng,
)
from curriculum.tasks import build_completion_task, build_rewrite_task, mask_ratio_at
from curriculum.weight_sync import SyncCheckFailed, SyncResult, WeightSync
from learner.group import LearnerGroup
from learner.schedule import sft_learning_rate
from rollout.group import RolloutGroup


def _tokenizer_file(name: str) -> bool:
    """Of a checkpoint on shared storage, what the controller fetches: no weights, no optimizer state."""
    return not name.startswith("deepspeed/") and not name.endswith(".safetensors")


class Controller:
    def __init__(
        self,
        cfg,
        run: RunDir,
        model_path: str,
        train: list[Problem],
        evaluation: list[Problem],
        resume_from: str | None = None,
        stop_after_stage: int = 3,
    ):
        from transformers import AutoTokenizer

        self.cfg, self.run, self.train, self.evaluation = cfg, run, train, evaluation
        self.train_lengths = [problem_length(p) for p in train]
        self.stop_after_stage = stop_after_stage
        self.state = run.read_state(resume_from) if resume_from else RunState()
        start_path = str(resume_from) if resume_from else model_path
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_on_node(start_path, cfg.storage, _tokenizer_file))
        self.prompter = Prompter(self.tokenizer, cfg.model.max_prompt_tokens, cfg.tasks.use_chat_template)
        self.nonfinite = NonFiniteStreak(cfg.learner.max_nonfinite_updates)
        self.metrics = MetricsSink(
            run.path, cfg.run.name, resumed_at=(self.state.saved_at, self.state.global_step) if resume_from else None
        )
        self.placement = place(
            cfg.learner.num_learners, cfg.rollout.num_workers, cfg.cluster, cfg.rollout.tensor_parallel_size
        )
        # While a LoRA adapter trains, the learners (and engines that serve the adapter) start from
        # the base; a checkpoint's save_pretrained folder holds base and adapter merged.
        lora = cfg.learner.lora
        adapter = lora.live_in(self.state.stage)
        serves_adapter = adapter and lora.sync == "adapter"
        self.learners = LearnerGroup(
            self.placement,
            run.name,
            model_path if adapter else start_path,
            cfg.learner,
            cfg.grpo,
            cfg.cluster,
            self.prompter.pad_id,
            cfg.storage,
            adapter=adapter,
            reference_path=self._kl_reference(resume_from, adapter),
        )
        self.rollout = RolloutGroup(
            self.placement,
            run.name,
            model_path if serves_adapter else start_path,
            cfg.rollout,
            cfg.cluster,
            cfg.run.seed,
            cfg.storage,
            max_lora_rank=lora.vllm_max_rank() if serves_adapter else 0,
        )
        self.weight_sync = WeightSync(self.learners, self.rollout)
        # The next GRPO step's groups, when they were generated during this step (`grpo.overlap_rollout`);
        # never saved: a resumed run samples that step again with the weights it resumes from.
        self.prefetched: steps.Rollouts | None = None
        if resume_from:
            self.learners.load(str(resume_from))
            self._log(f"resumed from {resume_from}: stage {self.state.stage}, step {self.state.stage_step}")
            self._sync(bump=False)

    def _kl_reference(self, resume_from: str | None, adapter: bool) -> str | None:
        """Resumed within stage 2 or 3 with KL on: the stage-1 checkpoint, the policy a run that
        goes straight through takes as its reference when stage 1 ends (None: the weights resumed)."""
        if not resume_from or self.state.stage < 2 or self.cfg.grpo.kl_coef == 0 or adapter:
            return None
        stage1 = [c for c in self.run.committed_checkpoints() if checkpoint_name(c).endswith("-" + stage_end_label(1))]
        if not stage1 or self.run.problem(stage1[-1], optimizer=False):
            self._log(
                f"warning: no complete stage-1 checkpoint in {self.run.location}: the KL reference is "
                f"{checkpoint_name(resume_from)}"
            )
            return None
        return str(stage1[-1])

    # ------------------------------------------------------------------------------------------

    def run_all(self) -> None:
        try:
            if self.state == RunState():
                self._evaluate("before")
            if self.state.stage == 1:
                self._run_stage(1, self.cfg.stages.sft_steps, self._sft_step)
            if self.state.stage == 2 and self.stop_after_stage >= 2:
                self._run_stage(2, self.cfg.stages.grpo_steps, self._grpo_step)
            if self.state.stage == 3 and self.stop_after_stage >= 3:
                if self.state.failures is None:
                    self._mine()
                if self.state.failures:
                    self._run_stage(3, self.cfg.stages.rewrite_steps, self._grpo_step)
                else:
                    self._log("stage 3 skipped: no persistent failures")
                    self.state = dataclasses.replace(self.state, stage=4, stage_step=0)
        finally:
            self.close()

    def close(self) -> None:
        self.learners.shutdown()
        self.rollout.shutdown()
        self.placement.remove()
        self.metrics.close()
        self.run.publish()

    # ------------------------------------------------------------------------------------------

    def _run_stage(self, stage: int, budget: int, step_fn) -> None:
        name = STAGE_NAMES[stage]
        self.metrics.begin_stage()
        self._log(f"stage {stage} ({name}): steps {self.state.stage_step + 1}..{budget}")
        # A live bar in a terminal; in logs (no tty) the per-step lines say the same.
        bar = tqdm(
            total=budget,
            initial=self.state.stage_step,
            desc=f"stage {stage} {name}",
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        while self.state.stage_step < budget:
            start = time.perf_counter()
            metrics = step_fn(stage, self.state.stage_step, budget)
            metrics["step_s"] = time.perf_counter() - start
            self.state = dataclasses.replace(
                self.state, stage_step=self.state.stage_step + 1, global_step=self.state.global_step + 1
            )
            self.nonfinite.record(bool(metrics["skipped_update"]))
            metrics["nonfinite_updates"] = self.nonfinite.total
            self.metrics.log(self.state.global_step, name, metrics)
            self._log_step(stage, budget, metrics)
            self.run.publish()
            self.nonfinite.check(f"stage {stage} step {self.state.stage_step}")
            bar.update()
            every = self.cfg.stages.save_every
            if every and self.state.stage_step % every == 0 and self.state.stage_step < budget:
                self._checkpoint(f"{name}-step{self.state.stage_step}", stage_end=False)
        bar.close()
        if stage == 1:
            self.learners.begin_grpo()  # merges a stage-1-only adapter
            self._sync()  # stage 1 trains without rollouts; the workers catch up once here
        self._evaluate(f"after-stage{stage}")
        self.state = dataclasses.replace(self.state, stage=stage + 1, stage_step=0)
        self._checkpoint(stage_end_label(stage), stage_end=True)

    def _problems(self, pool: list[Problem], stage: int, step: int, size: int) -> list[Problem]:
        return [pool[i] for i in batch_indices(len(pool), size, step, self.cfg.run.seed, stage)]

    def _sft_step(self, stage: int, step: int, budget: int) -> dict[str, float]:
        tasks = sft_tasks(self.cfg, self.train, self.train_lengths, step)
        learner = self.cfg.learner
        lr = sft_learning_rate(step, budget, learner.sft_lr, learner.sft_warmup_steps, learner.sft_decay_fraction)
        return steps.sft_step(tasks, self.prompter, self.learners, lr)

    def _grpo_step(self, stage: int, step: int, budget: int) -> dict[str, float]:
        batch, self.prefetched = self.prefetched, None
        if batch is None:
            batch = steps.finish_rollouts(self._start_rollouts(stage, step, budget), self.rollout)
        # One-step off-policy: the next step's groups are generated while this step updates.
        ahead = (
            self._start_rollouts(stage, step + 1, budget)
            if self.cfg.grpo.overlap_rollout and step + 1 < budget
            else None
        )
        metrics, self.prefetched = steps.grpo_update(
            batch,
            self.prompter,
            self.rollout,
            self.learners,
            self.cfg.grpo.group_size,
            self.cfg.rewards.stage2 if stage == 2 else self.cfg.rewards.stage3,
            self.cfg.rewards.step_check_weight,
            self.cfg.grpo.scale_advantages_by_std,
            self._sync,
            self.state.version,
            ahead,
        )
        return {**metrics, "mask_ratio": mask_ratio_at(step, budget, self.cfg.tasks)} if stage == 2 else metrics

    def _start_rollouts(self, stage: int, step: int, budget: int) -> steps.PendingRollouts:
        """Build step `step`'s tasks (from (seed, stage, step) alone) and start sampling them."""
        rng = step_rng(self.cfg.run.seed, stage, step)
        if stage == 2:
            ratio = mask_ratio_at(step, budget, self.cfg.tasks)
            problems = self._problems(self.train, stage, step, self.cfg.stages.prompts_per_step)
            tasks = [build_completion_task(p, rng, ratio, self.cfg.tasks) for p in problems]
        else:
            pool = [self.train[i] for i in self.state.failures]
            tasks = [build_rewrite_task(p) for p in self._problems(pool, stage, step, self.cfg.stages.prompts_per_step)]
        sampling = steps.Sampling(
            self.cfg.grpo.group_size,
            self.cfg.rollout.temperature,
            self.cfg.rollout.top_p,
            self.cfg.rollout.max_new_tokens,
        )
        return steps.start_rollouts(
            tasks,
            self.prompter,
            self.rollout,
            sampling,
            sampling_seed(self.cfg.run.seed, stage, step),
            self.state.version,
        )

    def _sync(self, bump: bool = True) -> SyncResult:
        version = self.state.version + (1 if bump else 0)
        try:
            result = self.weight_sync.sync(version)
        except SyncCheckFailed:
            # The run stops; the record (and its gauge, for the alert rules) says why.
            self.metrics.log(self.state.global_step, STAGE_NAMES[self.state.stage], {"sync_check_failed": 1.0})
            raise
        self.state = dataclasses.replace(self.state, version=version)
        return result

    def _mine(self) -> None:
        count = self.cfg.stages.mining_problems or len(self.train)
        problems = self.train[:count]
        self._log(f"mining persistent failures: {len(problems)} problems x {self.cfg.stages.mining_samples} samples")
        start = time.perf_counter()
        failures = mine_failures(
            self.rollout,
            self.prompter,
            problems,
            self.cfg.stages.mining_samples,
            self.cfg.rollout.temperature,
            self.cfg.rollout.eval_max_new_tokens,
            seed=sampling_seed(self.cfg.run.seed, 3, -1),
        )
        self.run.write_jsonl(
            "failures.jsonl",
            [{"index": i, "origin": problems[i].origin, "question": problems[i].question} for i in failures],
        )
        self.state = dataclasses.replace(self.state, failures=failures)
        self.metrics.log(
            self.state.global_step,
            "mining",
            {
                "mined_problems": len(problems),
                "persistent_failures": len(failures),
                "failure_rate": len(failures) / max(1, len(problems)),
                "mining_s": time.perf_counter() - start,
            },
        )
        self.run.publish()
        self._log(f"persistent failures: {len(failures)} of {len(problems)}")

    def _evaluate(self, label: str) -> None:
        count = self.cfg.stages.eval_problems
        if not count:
            return
        result = evaluate(self.rollout, self.prompter, self.evaluation[:count], self.cfg.rollout.eval_max_new_tokens)
        (self.run.path / "eval").mkdir(exist_ok=True)
        self.run.write_jsonl(f"eval/{label}.jsonl", result.samples)
        self.metrics.log(self.state.global_step, "eval", {"label": label, **result.metrics()})
        self.run.publish()
        self._log(
            f"eval {label}: accuracy {result.accuracy:.3f}, mean tokens {result.mean_tokens:.1f}, format "
            f"{result.format_rate:.2f} (n={result.n})"
        )

    def _checkpoint(self, label: str, stage_end: bool) -> None:
        state = dataclasses.replace(self.state, stage_end=stage_end)
        start = time.perf_counter()
        folder = self.run.begin_checkpoint(state, label)
        sent = self.learners.save(str(folder))
        final = self.run.commit_checkpoint(
            folder, state, self.tokenizer, self.cfg.stages.keep_last, self.cfg.stages.keep_optimizer_state
        )
        uploaded = f", {sent['bytes'] / 2**20:.0f} MiB uploaded in {sent['upload_s']:.1f}s" if sent["bytes"] else ""
        self._log(f"checkpoint {final} ({time.perf_counter() - start:.1f}s{uploaded})")

    # ------------------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout)
        sys.stdout.flush()

    def _log_step(self, stage: int, budget: int, m: dict[str, float]) -> None:
        head = f"stage {stage} step {self.state.stage_step}/{budget}"
        if m["skipped_update"]:
            head += f" SKIPPED (non-finite loss or gradient; {self.nonfinite.in_a_row} in a row)"
        if stage == 1:
            self._log(f"{head} loss {m['loss']:.4f} | learner {m['learner_s']:.1f}s")
        else:
            self._log(
                f"{head} reward {m['reward_mean']:+.3f} acc {m['accuracy']:.2f} tokens {m['completion_tokens']:.0f} "
                f"clip {m['clip_fraction']:.3f} | generate {m['generate_s']:.1f}s (waited "
                f"{m['rollout_wait_s']:.1f}s) reward {m['reward_s']:.2f}s "
                f"learner {m['learner_s']:.1f}s sync {m['sync_s']:.2f}s (v{m['weight_version']})"
            )
