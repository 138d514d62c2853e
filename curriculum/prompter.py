"""Tasks -> token ids with the student's tokenizer (chat template when it has one)."""

from __future__ import annotations

from curriculum.tasks import Task, render_prompt


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
            raise PromptTooLong(f"{task.problem.origin}: prompt of {len(ids)} tokens exceeds model.max_prompt_tokens={self.max_prompt_tokens}")
        return ids

    def target_ids(self, task: Task) -> list[int]:
        """The SFT target, ending in EOS so that the student learns to stop."""
        return self.tokenizer(task.target, add_special_tokens=False)["input_ids"] + [self.eos_id]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
