"""Teacher generation on Ray Data's LLM engine (`ray.data.llm`): one row per (problem, sample)
streams through a pool of vLLM engine actors with continuous batching, back-pressure and task
retries; no block waits for another. The prompt is built by the curriculum's prompter in the
preprocessing function and each generation judged in the postprocessing one, both on the
cluster; the driver only groups the judged rows by block and hands each finished block on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial

from cluster.devices import teacher_seed
from curriculum.data import Problem
from curriculum.teacher import Verdict, judge

# Rows sent to an engine per call. Small batches keep every engine fed (the stage overlaps
# several per actor) and lose little to a task retry.
ENGINE_BATCH = 16


@dataclass(frozen=True)
class Generation:
    """What the pre- and postprocessing functions need; sent once to every task that runs them."""

    model_path: str
    max_prompt_tokens: int
    max_new_tokens: int
    temperature: float
    think: str
    check_arithmetic: bool
    seed: int
    request_seeds: bool


@cache
def _prompter(model_path: str, max_prompt_tokens: int):
    """One tokenizer per worker process, however many tasks it runs."""
    from transformers import AutoTokenizer

    from curriculum.prompter import Prompter

    return Prompter(AutoTokenizer.from_pretrained(model_path), max_prompt_tokens)


def build_request(row: dict, gen: Generation) -> dict:
    """Preprocessing: the prompt as token ids and the sampling parameters of one request. A prompt
    that does not fit is replaced by its first token and one new token, which the engine answers
    at once and `judge_row` records as 'prompt_too_long' (a map stage cannot drop a row)."""
    from curriculum.prompter import PromptTooLong
    from curriculum.tasks import build_eval_task

    prompter = _prompter(gen.model_path, gen.max_prompt_tokens)
    problem = Problem(question=row["question"], steps=(), answer=row["answer"], origin=row["origin"])
    params: dict = {"temperature": gen.temperature, "max_tokens": gen.max_new_tokens, "detokenize": False}
    if gen.request_seeds:
        params["seed"] = teacher_seed(gen.seed, row["origin"], row["sample"])
    try:
        prompt, too_long = prompter.prompt_ids(build_eval_task(problem)), False
    except PromptTooLong:
        prompt, too_long = [prompter.tokenizer.bos_token_id or 0], True
        params["max_tokens"] = 1
    return {**row, "tokenized_prompt": prompt, "too_long": too_long, "sampling_params": params}


def judge_row(row: dict, gen: Generation) -> dict:
    """Postprocessing: the verdict on one generation (or its prompt's being too long)."""
    keys = ("block", "index", "sample", "origin")
    if row["too_long"]:
        return {**{k: row[k] for k in keys}, "kept": False, "reason": "prompt_too_long", "steps": []}
    prompter = _prompter(gen.model_path, gen.max_prompt_tokens)
    tokens = list(row["generated_tokens"])
    verdict = judge(
        prompter.decode(tokens),
        finish_reason(tokens, gen.max_new_tokens, prompter.eos_id),
        row["answer"],
        gen.think,
        gen.check_arithmetic,
    )
    return {**{k: row[k] for k in keys}, "kept": verdict.kept, "reason": verdict.reason, "steps": list(verdict.steps)}


def finish_reason(tokens: list[int], max_tokens: int, eos_id: int | None) -> str:
    """vLLM's finish reason, which Ray Data's output leaves out: 'length' when the generation used
    every token it was allowed without ending on the end-of-sequence token."""
    return "length" if len(tokens) >= max_tokens and (not tokens or tokens[-1] != eos_id) else "stop"


def engine_rows(blocks: list[list[Problem]], samples: int) -> list[dict]:
    """One row per (block, problem, sample), in block order."""
    return [
        {"block": b, "index": i, "sample": s, "origin": p.origin, "question": p.question, "answer": p.answer}
        for b, block in enumerate(blocks)
        for i, p in enumerate(block)
        for s in range(samples)
    ]


def finished_blocks(rows: Iterator[dict], blocks: list[list[Problem]], samples: int) -> Iterator[tuple[int, list]]:
    """(block, per problem its samples' verdicts) as soon as every row of a block has come back,
    whatever order the rows come in."""
    pending: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        block = int(row["block"])
        pending[block].append(row)
        if len(pending[block]) == len(blocks[block]) * samples:
            verdicts: list[list[Verdict]] = [[Verdict(False, "")] * samples for _ in blocks[block]]
            for r in pending.pop(block):
                verdicts[int(r["index"])][int(r["sample"])] = Verdict(bool(r["kept"]), r["reason"], tuple(r["steps"]))
            yield block, verdicts


def generate(
    blocks: list[list[Problem]],
    samples: int,
    gen: Generation,
    workers: int,
    tensor_parallel: int,
    engine_options: dict,
    on_block: Callable[[int, list[list[Verdict]]], None],
) -> float:
    """Run every block through the engine pool; `on_block` is called for each as it finishes.
    Returns the seconds from the start of the pipeline to its end."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from cluster.devices import installed_vllm_build, teacher_engine

    engine = teacher_engine(
        ray.cluster_resources().get("GPU", 0),
        tensor_parallel,
        installed_vllm_build(),
        engine_options["kv_cache_gb"],
        engine_options["threads"],
    )
    if not engine.request_seeds:
        gen = Generation(**{**gen.__dict__, "request_seeds": False})
    config = vLLMEngineProcessorConfig(
        model_source=gen.model_path,
        engine_kwargs={
            "max_model_len": gen.max_prompt_tokens + gen.max_new_tokens,
            "dtype": engine_options["dtype"],
            "enforce_eager": engine_options["enforce_eager"],
            "gpu_memory_utilization": engine_options["gpu_memory_utilization"],
            "tensor_parallel_size": tensor_parallel,
            "enable_prefix_caching": True,  # the samples of one problem share its prefill
            "seed": gen.seed,
            **engine.engine_kwargs,
        },
        runtime_env={"env_vars": engine.env} if engine.env else None,
        placement_group_config=engine.placement,
        concurrency=(workers, workers),
        batch_size=ENGINE_BATCH,
        chat_template_stage=False,  # the prompter already wrote the chat template
        tokenize_stage=False,
        detokenize_stage=False,  # the postprocessing decodes with the prompter, as the pool does
        log_engine_metrics=False,
    )
    # The pre- and postprocessing are light: they must not wait for a CPU an engine holds, and a
    # task at a time per 8 engines keeps up (a tokenizer does thousands of rows a second) without
    # a Ray worker per block importing transformers while the engines start.
    light = {"num_cpus": 0, "concurrency": max(1, workers // 8)}
    processor = build_processor(
        config,
        preprocess=partial(build_request, gen=gen),
        postprocess=partial(judge_row, gen=gen),
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    # One Ray Data block per part, so that parts finish one after another, not all at the end.
    dataset = ray.data.from_items(engine_rows(blocks, samples), override_num_blocks=max(1, len(blocks)))
    start = time.perf_counter()
    for block, verdicts in finished_blocks(processor(dataset).iter_rows(), blocks, samples):
        on_block(block, verdicts)
    return time.perf_counter() - start
