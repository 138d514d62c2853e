"""Greedy evaluation of the student and the mining of persistent failures (stage 3's input)."""

from __future__ import annotations

from dataclasses import dataclass, field

from curriculum.answers import count_words, extract_answer, has_valid_format, is_correct
from curriculum.data import Problem
from curriculum.prompter import Prompter
from curriculum.step_check import check_chain
from curriculum.tasks import build_eval_task


@dataclass
class EvalResult:
    n: int
    accuracy: float
    mean_tokens: float
    mean_words: float
    format_rate: float
    step_accuracy: float
    samples: list[dict] = field(default_factory=list, repr=False)

    def metrics(self) -> dict[str, float]:
        return {
            "eval_n": self.n,
            "eval_accuracy": self.accuracy,
            "eval_mean_tokens": self.mean_tokens,
            "eval_mean_words": self.mean_words,
            "eval_format_rate": self.format_rate,
            "eval_step_accuracy": self.step_accuracy,
        }


def evaluate(rollout, prompter: Prompter, problems: list[Problem], max_tokens: int) -> EvalResult:
    """Greedy, one sample per problem, the question alone in the prompt (paper's protocol)."""
    prompts = [prompter.prompt_ids(build_eval_task(p)) for p in problems]
    completions, _, _ = rollout.generate(prompts, 1, 0.0, max_tokens, logprobs=False)
    samples = []
    for problem, group in zip(problems, completions, strict=True):
        completion = group[0]
        text = prompter.decode(completion.token_ids)
        chain = check_chain(text)
        samples.append(
            {
                "origin": problem.origin,
                "question": problem.question,
                "gold": problem.answer,
                "predicted": extract_answer(text),
                "correct": is_correct(text, problem.answer),
                "format_ok": has_valid_format(text),
                "tokens": len(completion.token_ids),
                "words": count_words(text),
                "checked_steps": chain.checked_steps,
                "correct_steps": chain.correct_steps,
                "completion": text,
            }
        )
    n = max(1, len(samples))
    checked = sum(s["checked_steps"] for s in samples)
    return EvalResult(
        n=len(samples),
        accuracy=sum(s["correct"] for s in samples) / n,
        mean_tokens=sum(s["tokens"] for s in samples) / n,
        mean_words=sum(s["words"] for s in samples) / n,
        format_rate=sum(s["format_ok"] for s in samples) / n,
        step_accuracy=sum(s["correct_steps"] for s in samples) / checked if checked else 0.0,
        samples=samples,
    )


def mine_failures(
    rollout,
    prompter: Prompter,
    problems: list[Problem],
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
) -> list[int]:
    """Indices of the problems whose k sampled answers (question alone) are all wrong."""
    prompts = [prompter.prompt_ids(build_eval_task(p)) for p in problems]
    completions, _, _ = rollout.generate(prompts, k, temperature, max_tokens, logprobs=False, seed=seed)
    return [
        index
        for index, (problem, group) in enumerate(zip(problems, completions, strict=True))
        if not any(is_correct(prompter.decode(c.token_ids), problem.answer) for c in group)
    ]
