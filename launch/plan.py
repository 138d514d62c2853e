"""`python -m launch.train --plan`: where every actor would run and what it would hold, with
nothing started.

It reserves the job's placement group on the connected cluster (so the node of every bundle is
Ray's own answer, not a guess), prints one row per actor with its node, CPUs, GPUs and a memory
estimate per device, refuses a layout that cannot fit with one line saying what is short, and
releases the reservation.
"""

from __future__ import annotations

from collections import defaultdict

from cluster.memory_estimate import GIB, ModelShape, engine_bytes, gib, kv_tokens, learner_bytes, worst_gpu_share
from cluster.placement import Placement, PlacementError, describe_node, live_nodes, place


def _sum(parts: dict[str, float]) -> str:
    return (
        " + ".join(f"{k.replace('_', ' ')} {v / GIB:.1f}" for k, v in parts.items()) + f" = {gib(sum(parts.values()))}"
    )


def _adapter(cfg, shape: ModelShape) -> str:
    lora = cfg.learner.lora
    return (
        f", a LoRA adapter in every stage (r{lora.rank}, {shape.adapter_parameters / 1e6:.1f} M trainable)"
        if shape.adapter_parameters
        else ""
    )


def estimates(cfg, shape: ModelShape) -> tuple[dict[str, float], dict[str, float], float | None]:
    """Per learner and per engine device: the parts in bytes, and the GPU budget (None on CPU)."""
    # With an adapter in every stage the KL reference is the base with the adapter off: no copy.
    adapter = shape.adapter_parameters
    learner = learner_bytes(
        shape.parameters,
        cfg.learner.precision,
        cfg.learner.zero_stage,
        cfg.learner.num_learners,
        cfg.grpo.kl_coef > 0 and not adapter,
        adapter,
    )
    rollout, tp = cfg.rollout, cfg.rollout.tensor_parallel_size
    on_gpu = cfg.cluster.gpus_per_rollout > 0
    gpu = cfg.cluster.gpu_memory_gb * GIB
    if on_gpu:
        engine = engine_bytes(shape, rollout.dtype, tp, rollout.gpu_memory_utilization * gpu)
    else:
        weights = engine_bytes(shape, rollout.dtype, tp, 0.0)["weights"]
        engine = engine_bytes(shape, rollout.dtype, tp, weights + rollout.kv_cache_gb * GIB)
    return learner, engine, (gpu if on_gpu or cfg.cluster.gpus_per_learner > 0 else None)


def gpu_share(cfg, learner: dict[str, float], engine: dict[str, float]) -> tuple[int, int, float]:
    """The learners and engines that may share one GPU at worst, and what they hold together."""
    cluster = cfg.cluster
    return worst_gpu_share(
        (cluster.gpus_per_learner, cfg.learner.num_learners, sum(learner.values())),
        (cluster.gpus_per_rollout, cfg.rollout.num_workers, sum(engine.values())),
        cluster.colocate,
    )


def _sharers(learners: int, engines: int) -> str:
    return " and ".join(
        f"{n} {role}{'s' if n > 1 else ''}" for n, role in ((learners, "learner"), (engines, "engine")) if n
    )


def check_fit(
    cfg,
    learner: dict[str, float],
    engine: dict[str, float],
    gpu: float | None,
    nodes_of: dict[str, str],
    memory_of: dict[str, float],
) -> None:
    """Refuse, naming the first actor or node that is short: on GPUs per device, on CPUs per node."""
    if engine["kv_cache"] <= 0:
        where = (
            f"rollout.gpu_memory_utilization x {cfg.cluster.gpu_memory_gb:g} GiB"
            if cfg.cluster.gpus_per_rollout
            else "its reservation"
        )
        raise PlacementError(
            f"rollout-0: the weights alone ({gib(engine['weights'])} per device) leave no KV cache in {where}"
        )
    if gpu is not None:
        cluster = cfg.cluster
        learners, engines, shared = gpu_share(cfg, learner, engine)
        if learners + engines > 1 and shared > gpu:
            raise PlacementError(
                f"{_sharers(learners, engines)} may share one GPU "
                f"(cluster.gpus_per_learner={cluster.gpus_per_learner:g}, "
                f"gpus_per_rollout={cluster.gpus_per_rollout:g}) "
                f"and would need about {gib(shared)} of its {gib(gpu)} (each engine takes "
                f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization:g} "
                "of the card, and vLLM checks at start that this much is free); lower "
                "rollout.gpu_memory_utilization or shrink the learners"
            )
        if cluster.gpus_per_learner > 0 and sum(learner.values()) > gpu:
            remedies = [
                r
                for r, useful in (("learner.zero_stage", cfg.learner.zero_stage < 3), ("learner.num_learners", True))
                if useful
            ]
            raise PlacementError(
                f"learner-0 needs about {gib(sum(learner.values()))} per GPU before activations, but a GPU "
                f"has {gib(gpu)}; "
                f"raise {' or '.join(remedies)}"
                + (", or set learner.precision=bf16" if cfg.learner.precision == "fp32" else "")
            )
    if gpu is None:
        needed: dict[str, float] = defaultdict(float)
        for name, node in nodes_of.items():
            needed[node] += sum((learner if name.startswith("learner") else engine).values())
        for node, total in needed.items():
            if total > memory_of[node]:
                raise PlacementError(
                    f"node {describe_node(node)} would hold about {gib(total)} but Ray gives its tasks "
                    f"{gib(memory_of[node])} of memory"
                )


def plan(cfg, shape: ModelShape, model: str) -> tuple[str, str | None]:
    """The plan as text, and what is short when the layout cannot fit (None when it fits). A layout
    that cannot even be placed raises PlacementError."""
    nodes = live_nodes()
    cluster = cfg.cluster
    totals = {k: sum(n.resources.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    learner, engine, gpu = estimates(cfg, shape)
    placement: Placement = place(
        cfg.learner.num_learners, cfg.rollout.num_workers, cluster, cfg.rollout.tensor_parallel_size
    )
    try:
        actors = [("learner", i) for i in range(cfg.learner.num_learners)] + [
            ("rollout", i) for i in range(cfg.rollout.num_workers)
        ]
        nodes_of = {f"{role}-{i}": placement.node_id(role, i) for role, i in actors}
    finally:
        placement.remove()
    memory_of = {n.node_id: n.resources.get("memory", 0.0) for n in nodes}
    lines = [
        f"plan for '{cfg.run.name}' on a Ray cluster of {len(nodes)} node(s) with {totals['CPU']:g} CPUs "
        f"and {totals['GPU']:g} GPUs",
        f"model {model}: {shape.parameters / 1e9:.2f} B parameters; learners {cfg.learner.precision} "
        f"ZeRO-{cfg.learner.zero_stage} x {cfg.learner.num_learners} "
        f"with AdamW{_adapter(cfg, shape)}; vLLM {cfg.rollout.dtype}, tensor parallel "
        f"{cfg.rollout.tensor_parallel_size}",
        "weight transport: {0.name} ({0.reason})".format(cluster.transport_choice()),
        "memory per device in GiB (an estimate: activations, communication buffers and the CUDA context come on top)",
        f"{'actor':<11} {'node':<40} {'CPU':>4} {'GPU':>4}  memory",
    ]
    tokens = kv_tokens(shape, cfg.rollout.dtype, cfg.rollout.tensor_parallel_size, max(0.0, engine["kv_cache"]))
    for role, i in actors:
        name = f"{role}-{i}"
        cpus, gpus = (
            (cluster.cpus_per_learner, cluster.gpus_per_learner)
            if role == "learner"
            else (cluster.cpus_per_rollout, cluster.gpus_per_rollout)
        )
        if role == "learner":
            memory = _sum(learner) + (f" of {gib(gpu)}" if gpu and gpus else "")
        else:
            memory = _sum(engine) + f" ({tokens / 1e6:.2f} M tokens of KV cache)"
        lines.append(f"{name:<11} {describe_node(nodes_of[name]):<40} {cpus:>4g} {gpus:>4g}  {memory}")
    learners, engines, shared = gpu_share(cfg, learner, engine)
    if gpu and learners + engines > 1:
        lines.append(f"at worst {_sharers(learners, engines)} share one GPU: {gib(shared)} of {gib(gpu)} together")
    try:
        check_fit(cfg, learner, engine, gpu, nodes_of, memory_of)
    except PlacementError as err:
        return "\n".join(lines), str(err)
    lines.append("fits. Nothing was started; the reservation is released.")
    return "\n".join(lines), None
