"""Layout checks and memory estimates: pure functions, hand-computed cases."""

import pytest

from cluster.config import ClusterConfig
from cluster.layout import Demand, LayoutError, Node, assign
from cluster.memory_estimate import GIB, ModelShape, engine_bytes, kv_tokens, learner_bytes
from cluster.placement import PlacementError, demands_for


def nodes(*specs):
    return [
        Node(f"{i:08x}" + "0" * 48, f"10.0.0.{i}", {"CPU": c, "GPU": g}, labels)
        for i, (c, g, labels) in enumerate(specs, 1)
    ]


def test_demands_of_separate_and_colocated_layouts():
    cfg = ClusterConfig(cpus_per_learner=1, cpus_per_rollout=2, learner_labels={"pool": "train"})
    demands, learners, rollouts = demands_for(2, 1, cfg)
    assert (
        [d.name for d in demands] == ["learner-0", "learner-1", "rollout-0"] and learners == [0, 1] and rollouts == [2]
    )
    assert demands[0].resources == {"CPU": 1} and demands[0].labels == {"pool": "train"} and demands[2].labels == {}
    shared = ClusterConfig(gpus_per_learner=0.5, gpus_per_rollout=0.5, colocate=True)
    demands, learners, rollouts = demands_for(2, 3, shared)
    assert (
        [d.resources for d in demands] == [{"CPU": 2.0, "GPU": 1.0}] * 3
        and learners == [0, 1]
        and rollouts == [0, 1, 2]
    )
    assert [d.name for d in demands] == ["learner-0 + rollout-0", "learner-1 + rollout-1", "rollout-2"]
    with pytest.raises(PlacementError, match=r"differ on \['pool'\]"):
        demands_for(1, 1, ClusterConfig(colocate=True, learner_labels={"pool": "a"}, rollout_labels={"pool": "b"}))


def test_totals_and_labels_are_refused_with_the_shortfall():
    demands = [Demand(f"learner-{i}", {"CPU": 1, "GPU": 1}) for i in range(8)]
    with pytest.raises(LayoutError, match="needs 8 GPUs but the Ray cluster has 7 .2 node"):
        assign(demands, nodes((16, 4, {}), (16, 3, {})), "PACK")
    with pytest.raises(
        LayoutError, match="no Ray node carries the labels pool=train .the nodes' labels: .none.; pool=rollout"
    ):
        assign(
            [Demand("learner-0", {"CPU": 1}, {"pool": "train"})], nodes((4, 0, {}), (4, 0, {"pool": "rollout"})), "PACK"
        )


def test_labels_steer_and_per_node_room_counts():
    cluster = nodes((2, 0, {"pool": "train"}), (2, 0, {"pool": "rollout"}), (2, 0, {"pool": "rollout"}))
    demands = [
        Demand("learner-0", {"CPU": 1}, {"pool": "train"}),
        Demand("learner-1", {"CPU": 1}, {"pool": "train"}),
        Demand("rollout-0", {"CPU": 2}, {"pool": "rollout"}),
        Demand("rollout-1", {"CPU": 2}, {"pool": "rollout"}),
    ]
    placed = [n.address for n in assign(demands, cluster, "PACK")]
    assert placed == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    # 6 CPUs in all, but the learners may only use the one 2-CPU node labelled train
    demands.append(Demand("learner-2", {"CPU": 1}, {"pool": "train"}))
    cluster.append(nodes((4, 0, {}))[0])
    with pytest.raises(
        LayoutError,
        match=r"learner-2 needs CPU 1 on a node labelled pool=train, and no node has that left once .* \(free: "
        r"10.0.0.1/00000001 \[pool=train\]: CPU 0\)",
    ):
        assign(demands, cluster, "PACK")
    # a bundle larger than any single node, though the total is there
    with pytest.raises(LayoutError, match="rollout-0 needs CPU 4, GPU 2 on one node"):
        assign([Demand("rollout-0", {"CPU": 4, "GPU": 2})], nodes((8, 1, {}), (8, 1, {})), "PACK")


def test_strategies():
    cluster = nodes((4, 0, {}), (4, 0, {}), (4, 0, {}))
    two = [Demand("a", {"CPU": 1}), Demand("b", {"CPU": 1})]
    assert [n.address for n in assign(two, cluster, "PACK")] == ["10.0.0.1", "10.0.0.1"]
    assert [n.address for n in assign(two, cluster, "SPREAD")] == ["10.0.0.1", "10.0.0.2"]
    assert len({n.address for n in assign(two, cluster, "STRICT_SPREAD")}) == 2
    with pytest.raises(LayoutError, match="no node has that left"):
        assign([Demand(str(i), {"CPU": 1}) for i in range(4)], cluster, "STRICT_SPREAD")
    with pytest.raises(LayoutError, match="STRICT_PACK needs one node with CPU 6"):
        assign([Demand(str(i), {"CPU": 2}) for i in range(3)], cluster, "STRICT_PACK")


def test_learner_memory_by_zero_stage_and_precision():
    p = 1_000_000
    # bf16: 2-byte weights and gradients, 12 bytes of fp32 master + Adam moments, sharded per stage
    assert learner_bytes(p, "bf16", 1, 4, False) == {"weights": 2e6, "gradients": 2e6, "optimizer": 3e6}
    assert learner_bytes(p, "bf16", 2, 4, False) == {"weights": 2e6, "gradients": 0.5e6, "optimizer": 3e6}
    assert learner_bytes(p, "bf16", 3, 4, True) == {
        "weights": 0.5e6,
        "gradients": 0.5e6,
        "optimizer": 3e6,
        "reference": 2e6,
    }
    # fp32: no master copy, 8 bytes of moments
    assert learner_bytes(p, "fp32", 2, 2, False) == {"weights": 4e6, "gradients": 2e6, "optimizer": 4e6}
    # a LoRA adapter of 10k parameters: the base and the adapter held, gradients and Adam for the adapter alone
    assert learner_bytes(p, "bf16", 2, 4, False, adapter=10_000) == {
        "weights": 2.02e6,
        "gradients": 5e3,
        "optimizer": 3e4,
    }
    assert learner_bytes(p, "bf16", 3, 4, False, adapter=10_000) == {
        "weights": 0.505e6,
        "gradients": 5e3,
        "optimizer": 3e4,
    }


def test_engine_memory_and_kv_tokens():
    shape = ModelShape(parameters=3_000_000_000, layers=36, kv_heads=2, head_dim=128)
    out = engine_bytes(shape, "bfloat16", 1, 0.85 * 80 * GIB)
    assert out["weights"] == 6e9 and out["kv_cache"] == pytest.approx(0.85 * 80 * GIB - 6e9)
    # 2 (K and V) x 36 layers x 2 heads x 128 x 2 bytes = 36,864 bytes a token
    assert kv_tokens(shape, "bfloat16", 1, 36_864 * 1000) == 1000
    # tensor parallel 2: half the weights per GPU; one KV head per rank
    assert engine_bytes(shape, "bfloat16", 2, 10e9)["weights"] == 3e9
    assert kv_tokens(shape, "bfloat16", 2, 18_432 * 10) == 10
