"""Tasks -> token ids with the student's tokenizer (chat template when it has one)."""

from __future__ import annotations

import random

from curriculum.data import Problem
from curriculum.tasks import (
    Task,
    TaskConfig,
    build_eval_task,
    build_reconstruction_task,
    build_rewrite_task,
    render_prompt,
)


class PromptTooLong(ValueError):
    """A prompt longer than `model.max_prompt_tokens`."""


class Prompter:
    def __init__(self, tokenizer, max_prompt_tokens: int, use_chat_template: bool = True):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.use_chat_template = use_chat_template
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prompt_ids(self, task: Task) -> list[int]:
        text = render_prompt(self.tokenizer, task.messages, self.use_chat_template)
        # The chat template already wrote the special tokens it wants.
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(
                f"{task.problem.origin}: prompt of {len(ids)} tokens exceeds "
                f"model.max_prompt_tokens={self.max_prompt_tokens}"
            )
        return ids

    def target_ids(self, task: Task) -> list[int]:
        """The SFT target, ending in EOS so that the student learns to stop."""
        return self.tokenizer(task.target, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def longest_prompts(self, problems: list[Problem], training: bool) -> list[int]:
        """Token length of the longest prompt each problem can produce: for training, stage 1 with
        every step shown or stage 3's full solution (stage 2 shows less); for evaluation, the question."""
        if training:
            show_all = TaskConfig(stage1_mask_policy="none")
            builders = [lambda p: build_reconstruction_task(p, random.Random(0), show_all), build_rewrite_task]
        else:
            builders = [build_eval_task]
        texts = [
            render_prompt(self.tokenizer, build(p).messages, self.use_chat_template)
            for p in problems
            for build in builders
        ]
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        return [max(lengths[i : i + len(builders)]) for i in range(0, len(lengths), len(builders))]

    def fitting(self, problems: list[Problem], training: bool, what: str, skip: bool) -> tuple[list[Problem], int]:
        """The problems whose prompts fit `max_prompt_tokens` and how many did not; with `skip`
        False, any that does not fit raises `PromptTooLong` naming it."""
        lengths = self.longest_prompts(problems, training)
        kept = [p for p, n in zip(problems, lengths, strict=True) if n <= self.max_prompt_tokens]
        too_long = [p for p, n in zip(problems, lengths, strict=True) if n > self.max_prompt_tokens]
        if too_long and not skip:
            raise PromptTooLong(
                f"{what}: {len(too_long)} problem(s) make prompts longer than "
                f"model.max_prompt_tokens={self.max_prompt_tokens} "
                f"(longest {max(lengths)} tokens; first at {too_long[0].origin}); raise "
                "model.max_prompt_tokens or set model.long_prompts=skip"
            )
        return kept, len(too_long)
