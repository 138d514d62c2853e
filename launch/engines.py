"""What the one-off commands (evaluation, teacher generation) share: their inputs, read and checked
up front, and their engine: one vLLM engine in this process, or N rollout workers on the Ray
cluster, behind the same `generate` call."""

from __future__ import annotations

import time

from rollout.config import RolloutConfig


def read_inputs(data: str, limit: int, model: str, max_prompt_tokens: int):
    """(problems, model folder, prompter); a DataError or ModelError on bad input, before any engine starts."""
    from transformers import AutoTokenizer

    from cluster.model_source import resolve_model
    from curriculum.prompter import Prompter

    problems = load_problems_anywhere(data, limit)
    model_path = resolve_model(model)
    return problems, model_path, Prompter(AutoTokenizer.from_pretrained(model_path), max_prompt_tokens)


def load_problems_anywhere(data: str, limit: int) -> list:
    """`load_problems`, with a data file on any storage the storage layer opens (s3://, gs://...):
    fetched once into the scratch folder, its rows named by the URI, so that the names (which
    the teacher job resumes by) do not depend on where the copy lies."""
    import dataclasses
    import hashlib

    from cluster.storage import StorageConfig, StorageError, Store, is_uri, scratch_root, storage_errors
    from curriculum.data import load_problems

    if not is_uri(data):
        return load_problems(data, limit=limit).problems
    folder, _, name = data.rpartition("/")
    local = scratch_root(StorageConfig()) / "data" / hashlib.sha256(data.encode()).hexdigest()[:16] / name
    with storage_errors(f"--data {data}"):
        store = Store.open(folder, StorageConfig())
        if not store.exists(name):
            raise StorageError(f"--data {data}: no such file")
        local.parent.mkdir(parents=True, exist_ok=True)
        store.download(local.parent, wanted=lambda file: file == name)
    problems = load_problems(str(local), limit=limit).problems
    return [dataclasses.replace(p, origin=data + p.origin.removeprefix(str(local))) for p in problems]


class InProcessRollout:
    """One vLLM engine in this process, behind the rollout group's `generate` signature."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0):
        from rollout.engine import RolloutEngine

        self.engine = RolloutEngine(model_path, cfg, seed)

    def generate(self, prompts, n, temperature, max_tokens, top_p=1.0, logprobs=True, seed=None):
        start = time.perf_counter()
        out = self.engine.generate(prompts, n, temperature, top_p, max_tokens, logprobs, seed)
        return out, {self.engine.version}, time.perf_counter() - start


def open_rollout(model_path: str, cfg: RolloutConfig, workers: int, name: str, seed: int = 0):
    """`workers` = 0: in-process; else that many rollout workers on the Ray cluster (joined, or
    started here), each with `cfg.tensor_parallel_size` GPUs when the cluster has GPUs."""
    if not workers:
        return InProcessRollout(model_path, cfg, seed)
    import ray

    from cluster.config import ClusterConfig
    from cluster.connect import join
    from cluster.placement import place
    from rollout.group import RolloutGroup

    join(None, dashboard_host="127.0.0.1")
    gpus = cfg.tensor_parallel_size if ray.cluster_resources().get("GPU", 0) else 0
    cluster = ClusterConfig(gpus_per_rollout=gpus)
    placement = place(0, workers, cluster, cfg.tensor_parallel_size)
    return RolloutGroup(placement, name, model_path, cfg, cluster, seed=seed)
