"""Faults injected into the real distributed pieces: a killed rollout worker, a dead learner,
a weight sync whose peer never answers, a rank that never joins, a non-finite update."""

import dataclasses
import os
import signal
import threading
import time

import pytest
import ray
import torch

from cluster.config import ClusterConfig
from cluster.packed_weights import unpack
from cluster.placement import place
from cluster.remote import RemoteCallError
from curriculum.weight_sync import SyncCheckFailed, WeightSync
from learner.batching import Sequence
from learner.config import LearnerConfig
from learner.group import LearnerGroup
from learner.grpo import GRPOConfig
from learner.worker import LearnerWorker
from rollout.config import RolloutConfig
from rollout.group import RolloutGroup

CLUSTER = ClusterConfig(cpus_per_learner=1, cpus_per_rollout=1)
ROLLOUT = RolloutConfig(dtype="float32", max_model_len=1024)


def _greedy(rollout, prompt):
    groups, versions, _ = rollout.generate([prompt], 1, 0.0, 16, logprobs=False)
    return list(groups[0][0].token_ids), versions


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_learner_rank_that_never_joins_times_out(ray_session, tiny_model_dir):
    actor = (
        ray.remote(LearnerWorker)
        .options(num_cpus=0.5)
        .remote(0, 2, tiny_model_dir, LearnerConfig(init_timeout_s=3), GRPOConfig())
    )
    host, port = ray.get(actor.address.remote())
    try:
        start = time.monotonic()
        with pytest.raises(ray.exceptions.RayTaskError, match="(?i)timeout|timed out"):
            ray.get(actor.setup.remote(host, port, 0), timeout=120)
        assert time.monotonic() - start < 60
    finally:
        ray.kill(actor)


def test_dead_learner_is_named(ray_session, tiny_model_dir):
    placement = place(2, 0, CLUSTER)
    group = LearnerGroup(
        placement,
        "deadlearner",
        tiny_model_dir,
        LearnerConfig(num_learners=2, precision="fp32"),
        GRPOConfig(),
        CLUSTER,
        pad_id=0,
    )
    try:
        ray.kill(group.actors[1], no_restart=True)
        with pytest.raises(RemoteCallError, match="learner-1: the actor died during sft_step"):
            group.sft_step([Sequence([1, 2, 3], [4, 5, 6])] * 2)
    finally:
        group.shutdown()
        placement.remove()


def test_a_call_that_raised_for_another_actors_death_does_not_name_its_own(ray_session):
    """A rollout worker whose weights' owner (a learner) died raises ActorDiedError inside its call:
    the worker is alive, so the failure is a RemoteCallError, not ActorDied (which would send the
    caller waiting for a restart that never comes, and blame the worker for the learner's loss)."""
    from cluster.remote import ActorDied, wait_all

    @ray.remote(num_cpus=0)
    class Peer:
        def ping(self):
            return "pong"

    @ray.remote(num_cpus=0)
    class Caller:
        def call(self, peer):
            return ray.get(peer.ping.remote())

    peer, caller = Peer.remote(), Caller.remote()
    ray.kill(peer, no_restart=True)
    with pytest.raises(RemoteCallError, match="worker-0: ping failed: .*ActorDiedError") as raised:
        wait_all([caller.call.remote(peer)], 60, "ping", ["worker-0"])
    assert not isinstance(raised.value, ActorDied)
    ray.kill(caller)


def test_non_finite_update_is_skipped_on_every_rank(ray_session, tiny_model_dir, tmp_path):
    placement = place(2, 0, CLUSTER)
    cfg = LearnerConfig(num_learners=2, zero_stage=2, precision="bf16", grpo_lr=1e-3)
    group = LearnerGroup(placement, "nan", tiny_model_dir, cfg, GRPOConfig(), CLUSTER, pad_id=0)
    good = [Sequence([1, 2, 3], [7, 8, 9, 10], 0.5 * (-1) ** i) for i in range(4)]
    poisoned = good[:3] + [Sequence([1, 2, 3], [7, 8, 9, 10], float("nan"))]  # only rank 1's share
    try:
        before = dict(unpack(ray.get(group.export_weights()[0])))
        stats = group.grpo_step(poisoned)
        assert stats["skipped"] == 1.0
        unchanged = dict(unpack(ray.get(group.export_weights()[0])))
        assert all(torch.equal(before[k], unchanged[k]) for k in before)
        group.save(str(tmp_path / "ckpt"))  # still finite: it may be saved
        assert group.grpo_step(good)["skipped"] == 0.0
        after = dict(unpack(ray.get(group.export_weights()[0])))
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        group.shutdown()
        placement.remove()


# The tests below share one learner + rollout pair, set up after the tests above have released their CPUs.


@pytest.fixture(scope="module")
def trained_pair(ray_session, tiny_model_dir):
    """One learner moved away from the starting weights, one rollout worker synced to version 1."""
    prompt = [504, 2116, 28, 216, 34, 1232, 216, 35, 1232, 47]
    placement = place(1, 1, CLUSTER)
    learners = LearnerGroup(
        placement,
        "faults",
        tiny_model_dir,
        LearnerConfig(precision="fp32", sft_lr=1e-2),
        GRPOConfig(),
        CLUSTER,
        pad_id=0,
    )
    rollout = RolloutGroup(placement, "faults", tiny_model_dir, ROLLOUT, CLUSTER, seed=0)
    try:
        initial, _ = _greedy(rollout, prompt)
        for _ in range(3):
            learners.sft_step([Sequence(prompt, [1000 + i for i in range(12)])] * 4)
        sync = WeightSync(learners, rollout)
        sync.sync(version=1)
        synced, _ = _greedy(rollout, prompt)
        assert synced != initial
        yield learners, rollout, prompt, synced
    finally:
        learners.shutdown()
        rollout.shutdown()
        placement.remove()


def test_killed_rollout_worker_is_restarted_with_current_weights(trained_pair):
    learners, rollout, prompt, synced = trained_pair
    pid = _pid(rollout.workers[0])
    prompts = [prompt[: 4 + i] for i in range(8)]
    out = {}
    call = threading.Thread(target=lambda: out.update(result=rollout.generate(prompts, 4, 1.0, 256, seed=7)))
    call.start()
    time.sleep(1.0)  # generation of 8 x 4 x 256 tokens is under way
    os.kill(pid, signal.SIGKILL)
    call.join(timeout=300)
    groups, versions, _ = out["result"]
    assert [len(g) for g in groups] == [4] * 8
    assert versions == {1}  # the restarted worker was given version 1 before the batch was retried
    assert rollout.restarts == 1 and _pid(rollout.workers[0]) != pid
    assert _greedy(rollout, prompt) == (synced, {1})


def test_seeded_sampling_repeats(trained_pair):
    _, rollout, prompt, _ = trained_pair
    first = rollout.generate([prompt], 4, 1.0, 24, seed=11)[0]
    again = rollout.generate([prompt], 4, 1.0, 24, seed=11)[0]
    other = rollout.generate([prompt], 4, 1.0, 24, seed=12)[0]
    assert first == again and first != other


def test_a_worker_that_loads_other_weights_is_named(trained_pair):
    """The object store's receiving side hands its engine a zeroed tensor: the checked sync names
    the worker and the tensor, and a later checked sync puts the right weights back."""
    learners, rollout, prompt, synced = trained_pair

    def zero_third_tensor(worker):
        import rollout.engine as engine

        engine.intact_unpack = engine.unpack
        engine.unpack = lambda packed: [
            (n, torch.zeros_like(t) if i == 2 else t) for i, (n, t) in enumerate(engine.intact_unpack(packed))
        ]

    def mend(worker):
        import rollout.engine as engine

        engine.unpack = engine.intact_unpack

    ray.get(rollout.workers[0].__ray_call__.remote(zero_third_tensor))
    try:
        with pytest.raises(
            SyncCheckFailed,
            match=r"weight version 2 did not reach rollout-0 intact: \S+ differs from what learner-0 sent \(digest",
        ):
            WeightSync(learners, rollout).sync(version=2)
    finally:
        ray.get(rollout.workers[0].__ray_call__.remote(mend))
    assert WeightSync(learners, rollout).sync(version=1).verified
    assert _greedy(rollout, prompt) == (synced, {1})


def test_weight_sync_whose_peer_never_answers_times_out(trained_pair):
    learners, rollout, prompt, _ = trained_pair
    busy = rollout.workers[0].generate.remote([prompt] * 8, 4, 1.0, 1.0, 256, True, 3)  # holds the worker
    impatient = dataclasses.replace(rollout.cluster, sync_timeout_s=1.0)
    rollout.cluster = impatient
    try:
        start = time.monotonic()
        with pytest.raises(
            RemoteCallError,
            match=r"timed out after 1 s waiting for rollout workers to load weight version 2 \(still waiting on "
            r"rollout-0\)",
        ):
            WeightSync(learners, rollout).sync(version=2)
        assert time.monotonic() - start < 30
    finally:
        rollout.cluster = CLUSTER
        ray.get(busy)


def test_a_skipped_sync_shows_in_the_sampler_mismatch(trained_pair):
    """The engine's log-probs of its own samples against the learner's: numerical noise while the
    engine runs the learner's weights, orders of magnitude more once an update was not synced (the
    sync skipped on purpose: the learner trains and nothing is pushed). Runs last: it moves the
    learner away from the weights the other tests expect."""
    learners, rollout, prompt, _ = trained_pair

    def grpo_on_fresh_samples():
        groups, _, _ = rollout.generate([prompt, prompt[:6]], 4, 1.0, 24, seed=5)
        sequences = [
            Sequence(p, list(c.token_ids), (-1.0) ** i, c.logprobs)
            for p, group in ((prompt, groups[0]), (prompt[:6], groups[1]))
            for i, c in enumerate(group)
            if c.token_ids
        ]
        return learners.grpo_step(sequences)

    synced = grpo_on_fresh_samples()
    learners.sft_step([Sequence(prompt, [1000 + i for i in range(12)])] * 4)  # an update the workers never get
    stale = grpo_on_fresh_samples()
    print(
        f"sampler KL: synced {synced['sampler_kl']:.2e} (mean |diff| {synced['sampler_mismatch']:.2e}); "
        f"one unsynced update {stale['sampler_kl']:.2e} (mean |diff| {stale['sampler_mismatch']:.2e})"
    )
    assert synced["sampler_kl"] < 1e-6  # fp32 on both sides
    assert stale["sampler_kl"] > 1000 * max(synced["sampler_kl"], 1e-9)
