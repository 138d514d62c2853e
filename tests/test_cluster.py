"""The cluster path on several Ray nodes of one machine (`ray.cluster_utils.Cluster`): each node has
its own raylet and object store, so placement by labels, weights crossing object stores, node loss
and the per-node metrics endpoint are all real. Health checks are shortened so that a removed node
is noticed in seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from run_checks import engine_matches_checkpoint, records

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["cluster.learner_labels={pool: train}", "cluster.rollout_labels={pool: rollout}"]
NODE = {"object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster(monkeypatch_module):
    from ray.cluster_utils import Cluster

    # Fake GPUs fail to start on a node that sees CUDA_VISIBLE_DEVICES; none is used here.
    monkeypatch_module.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    dashboard = free_port()
    head = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
            **NODE,
            "_system_config": {
                "health_check_period_ms": 1000,
                "health_check_failure_threshold": 3,
                "health_check_timeout_ms": 5000,
                "health_check_initial_delay_ms": 0,
                "metrics_report_interval_ms": 1000,
            },
        },
    )
    head.dashboard_url = f"http://127.0.0.1:{dashboard}"
    yield head
    head.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def train(*args, timeout=900) -> subprocess.CompletedProcess:
    return train_together({"one": list(args)}, timeout)["one"]


def train_together(runs: dict[str, list[str]], timeout=900) -> dict[str, subprocess.CompletedProcess]:
    """Several `launch.train` commands at once (plans refused before they reserve anything)."""
    jobs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "launch.train", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    done = {}
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=timeout)
        done[name] = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    return done


def test_plan_of_the_paper_layout_on_two_fake_gpu_nodes(cluster, tmp_path):
    """8 GPU bundles on 2 nodes x 4 declared GPUs (no CUDA touched): placed and sized, with full
    weights and with an adapter in every stage; on 7 GPUs refused."""
    model = write_qwen25_3b_config(tmp_path)
    nodes = [cluster.add_node(num_cpus=16, num_gpus=4, **NODE) for _ in range(2)]
    try:
        args = [
            "--plan",
            "--config",
            "launch/configs/qwen2.5-3b-paper.yaml",
            f"model.path={model}",
            f"cluster.address={cluster.address}",
        ]
        start = time.perf_counter()
        fits = train(*args)
        print(fits.stdout, f"({time.perf_counter() - start:.1f} s)")
        assert fits.returncode == 0, fits.stderr[-3000:]
        rows = [line for line in fits.stdout.splitlines() if re.match(r"(learner|rollout)-\d ", line)]
        assert (
            len(rows) == 8
            and "3.09 B parameters" in fits.stdout
            and fits.stdout.rstrip().endswith("the reservation is released.")
        )
        learner_nodes = {row.split()[1] for row in rows[:4]}
        assert len(learner_nodes) == 1  # PACK: the 4 learners share one node, the 4 engines the other
        # bf16 ZeRO-2 over 4: weights 2P, gradients 2P/4, optimizer 12P/4 (P = 3.09e9)
        assert "weights 5.7 + gradients 1.4 + optimizer 8.6 = 15.8 GiB of 80.0 GiB" in rows[0]
        assert "weights 5.7 + kv cache 62.3 = 68.0 GiB" in rows[4]
        # An r16 q/k/v/o adapter in every stage: 36 x 16 x (2 x (2048 + 2048) + 2 x (2048 + 256)) = 7.4 M
        # parameters; only they have gradients and Adam state.
        adapted = train(*args, "learner.lora.stages=all")
        assert adapted.returncode == 0 and "a LoRA adapter in every stage (r16, 7.4 M trainable)" in adapted.stdout, (
            adapted.stderr[-3000:]
        )
        assert "weights 5.8 + gradients 0.0 + optimizer 0.0 = 5.8 GiB of 80.0 GiB" in adapted.stdout, adapted.stdout
        assert "weight transport: collective (set by cluster.weight_transport)" in fits.stdout
        # A colocated pair on one GPU (0.5 / 0.5): NCCL refuses two members of one group on one GPU,
        # so auto takes the object store, an explicit collective is refused, and the pair must fit the card.
        pair = ["cluster.colocate=true", "cluster.gpus_per_learner=0.5", "cluster.gpus_per_rollout=0.5"]
        shared = train(*args, *pair, "cluster.weight_transport=auto", "rollout.gpu_memory_utilization=0.4")
        assert shared.returncode == 0, shared.stderr[-3000:]
        assert (
            "weight transport: object_store (auto: fractional GPUs (cluster.gpus_per_learner=0.5, "
            "gpus_per_rollout=0.5) let two members" in shared.stdout
        )
        assert "at worst 1 learner and 1 engine share one GPU: 47.8 GiB of 80.0 GiB together" in shared.stdout
        refused = train_together(
            {
                "collective": [*args, *pair, "rollout.gpu_memory_utilization=0.4"],
                "crowded": [*args, *pair, "cluster.weight_transport=auto"],  # 15.8 GiB + 0.85 x 80 GiB
                "halves": [*args, "cluster.gpus_per_learner=0.5", "cluster.weight_transport=object_store"],
                "too_big": [
                    *args,
                    *("learner.zero_stage=1", "learner.num_learners=1", "rollout.num_workers=7"),
                    "cluster.gpu_memory_gb=24",
                ],
            }
        )
        too_big = refused.pop("too_big")
        errors = {k: [line for line in r.stderr.splitlines() if line.startswith("error:")] for k, r in refused.items()}
        assert all(r.returncode == 2 and len(errors[k]) == 1 for k, r in refused.items()), {
            k: r.stderr[-2000:] for k, r in refused.items()
        }
        assert errors["collective"][0].startswith(
            "error: cluster.weight_transport=collective cannot work: fractional GPUs"
        )
        assert re.match(
            r"error: 1 learner and 1 engine may share one GPU .* would need about 83\.\d GiB of its 80\.0 GiB",
            errors["crowded"][0],
        )
        assert errors["halves"][0].startswith("error: 4 learners at cluster.gpus_per_learner=0.5 may share a GPU")
        assert (
            too_big.returncode == 2
            and "error: learner-0 needs about 46.0 GiB per GPU before activations, but a GPU has 24.0 GiB"
            in too_big.stderr
        )
        cluster.remove_node(nodes.pop())
        nodes.append(cluster.add_node(num_cpus=16, num_gpus=3, **NODE))
        short = train(*args)
        errors = [line for line in short.stderr.splitlines() if line.startswith("error:")]
        assert short.returncode == 2 and errors == [
            "error: the layout needs 8 GPUs but the Ray cluster has 7 (3 node(s)); lower "
            "learner.num_learners / rollout.num_workers or the cluster.*_per_* resources, or add nodes"
        ], short.stderr[-2000:]
        assert "plan for" not in short.stdout
    finally:
        for node in nodes:
            cluster.remove_node(node)


def write_qwen25_3b_config(folder: Path) -> Path:
    """Qwen2.5-3B's config.json (its published shape): --plan reads the config alone."""
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "hidden_size": 2048,
                "intermediate_size": 11008,
                "num_hidden_layers": 36,
                "num_attention_heads": 16,
                "num_key_value_heads": 2,
                "vocab_size": 151936,
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "tie_word_embeddings": True,
                "hidden_act": "silu",
                "torch_dtype": "bfloat16",
            }
        )
    )
    return folder


def scrape(cluster) -> dict[tuple[str, str], float]:
    """Every `bridge_*` gauge of every node's Prometheus endpoint: {(name, stage): value}."""
    found = {}
    for node in cluster.list_all_nodes():
        try:
            text = (
                urllib.request.urlopen(f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics", timeout=5)
                .read()
                .decode()
            )
        except OSError:
            continue
        for name, labels, value in re.findall(r"^(?:ray_)?(bridge_\w+)\{([^}]*)\} (\S+)$", text, re.M):
            stage = re.search(r'stage="([^"]*)"', labels)
            found[(name, stage.group(1) if stage else "")] = float(value)
    return found


class Watcher(threading.Thread):
    """Follows the run's metrics.jsonl while the job runs and acts at set points: a metrics scrape
    every second until stage 2 has logged, the rollout node's removal after stage-2 step 1, the
    learner node's after the stage-2 step-2 checkpoint."""

    def __init__(self, cluster, run, learner_node, rollout_nodes: list):
        super().__init__(daemon=True)
        self.cluster, self.bucket, self.learner_node, self.rollout_nodes = cluster, run, learner_node, rollout_nodes
        self.done, self.events, self.scraped, self.error = threading.Event(), {}, {}, None
        self.last_scrape = 0.0

    def run(self):
        try:
            self._follow()
        except Exception as err:  # reported by the test
            self.error = err

    def _follow(self):
        while not self.done.is_set():
            grpo = [r for r in records(self.bucket) if r["stage"] == "grpo"]
            if "scraped" not in self.events and time.time() - self.last_scrape >= 1.0:
                # From the start: a stage's gauges leave the endpoint once the next stage begins.
                self.scraped.update(scrape(self.cluster))
                self.last_scrape = time.time()
                if {("bridge_loss", "sft"), ("bridge_reward_mean", "grpo")} <= set(self.scraped):
                    self.events["scraped"] = time.time()
            if grpo and "rollout_node_removed" not in self.events:
                current = actor_nodes(self.cluster, "tiny")["rollout-0"][-1]
                self.cluster.remove_node(
                    next(n for n in self.rollout_nodes if n.node_id == current), allow_graceful=False
                )
                self.events["rollout_node_removed"], self.removed_rollout_node = time.time(), current
            if any(r.get("rollout_restarts", 0) >= 1 for r in grpo) and "restarted_step" not in self.events:
                self.events["restarted_step"] = min(r["time"] for r in grpo if r.get("rollout_restarts", 0) >= 1)
            committed = [
                name
                for name in self.bucket.folders("checkpoints")
                if self.bucket.exists(f"checkpoints/{name}/state.json")
            ]
            if "learner_node_removed" not in self.events and any(name.endswith("grpo-step2") for name in committed):
                self.cluster.remove_node(self.learner_node, allow_graceful=False)
                self.events["learner_node_removed"] = time.time()
            time.sleep(0.2)


def actor_nodes(cluster, run: str) -> dict[str, list[str]]:
    """From Ray's state API: actor name -> the node of each actor of that name (dead ones included;
    an actor that Ray restarted is listed once, where it runs now)."""
    from ray.util.state import list_actors

    out: dict[str, list[str]] = {}
    for actor in list_actors(address=cluster.dashboard_url, limit=1000, detail=True, raise_on_missing_output=False):
        if actor.name and actor.name.startswith(f"{run}/"):
            out.setdefault(actor.name.split("/", 1)[1], []).append(actor.node_id)
    return out


def test_three_nodes_labels_node_loss_metrics_and_resume(cluster, tiny_model_dir, tmp_path, s3_endpoint):
    """The tiny run with its learners on a node labelled pool=train and its rollout worker on one
    labelled pool=rollout (a spare one waiting); the run lives in a bucket, written by the learners'
    node (checkpoints) and the head, where the controller runs (metrics). During stage 2 the rollout
    worker's node is removed: the step completes on the spare node. Then the learners' node is
    removed, with the nodes' scratch: the job ends with one error naming the actor and its node,
    and the resume command; `--resume auto` on the repaired cluster finishes every stage from the
    bucket. Gauges are scraped from the nodes' metrics endpoints."""
    from cluster.storage import StorageConfig, Store, local_copy

    learner = cluster.add_node(num_cpus=1, labels={"pool": "train"}, **NODE)
    rollout = [cluster.add_node(num_cpus=1, labels={"pool": "rollout"}, **NODE) for _ in range(2)]
    scratch = tmp_path / "scratch"
    storage = StorageConfig(endpoint=s3_endpoint, scratch_dir=str(scratch))
    args = [
        "--config",
        "launch/configs/tiny.yaml",
        f"model.path={tiny_model_dir}",
        "run.output_dir=s3://bridge/cluster",
        f"storage.endpoint={s3_endpoint}",
        f"storage.scratch_dir={scratch}",
        f"cluster.address={cluster.address}",
        *LABELS,
        "stages.grpo_steps=4",
        "stages.save_every=2",
    ]
    run = Store.open("s3://bridge/cluster/tiny", storage)
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = Watcher(cluster, run, learner, rollout)
    watcher.start()
    try:
        stdout, stderr = job.communicate(timeout=900)
    finally:
        watcher.done.set()
        job.kill()
    assert watcher.error is None, watcher.error
    started = time.time()

    # The learners' node died: one error with the actor, its node and the way back.
    assert job.returncode == 1, stdout[-2000:] + stderr[-3000:]
    assert "error: learner-" in stderr, stderr[-5000:]
    error = stderr[stderr.index("error: learner-") :]
    assert re.search(
        r"learner-\d: the actor died during .*; it ran on node \S+/"
        + learner.node_id[:8]
        + r" \[pool=train\] \(dead\)",
        error,
    ), error
    assert (
        "its last checkpoint is 000004-grpo-step2. Continue it with: python -m launch.train --resume s3://bridge/cluster/tiny"
        in error
    )

    # The rollout worker's node died in stage 2: the step completed on the spare node.
    grpo = [r for r in records(run) if r["stage"] == "grpo"]
    assert [r["rollout_restarts"] for r in grpo[:2]] == [0, 1], grpo
    node_loss_s = watcher.events["restarted_step"] - watcher.events["rollout_node_removed"]
    print(f"rollout node removed -> its stage-2 step logged: {node_loss_s:.1f} s")
    assert "rollout-0 is back, on node" in stderr

    # The metrics endpoint served the stage-1 gauges, equal to metrics.jsonl's last SFT record.
    last_sft = [r for r in records(run) if r["stage"] == "sft"][-1]
    assert watcher.scraped, "no bridge_* gauge on any node's metrics endpoint"
    for key in ("loss", "grad_norm", "learner_s", "step_s"):
        assert watcher.scraped[(f"bridge_{key}", "sft")] == pytest.approx(last_sft[key], rel=1e-6), key

    # Every curve of the shipped Grafana dashboard is a gauge the nodes serve (the mining ones come later).
    dashboard = json.loads((ROOT / "launch" / "grafana" / "bridge-distill.json").read_text())
    curves = {
        re.search(r"ray_(bridge_\w+)", t["expr"]).group(1) for panel in dashboard["panels"] for t in panel["targets"]
    }
    assert curves - {"bridge_persistent_failures", "bridge_failure_rate"} <= {name for name, _ in watcher.scraped}

    # Repaired: a new learner node, and no node keeps anything on disk; --resume auto finishes
    # every stage from what the bucket holds.
    shutil.rmtree(scratch)
    learner_again = cluster.add_node(num_cpus=1, labels={"pool": "train"}, **NODE)
    resumed = train("--resume", "auto", *args)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from 000004-grpo-step2" in resumed.stdout
    print(f"resume: {time.time() - started:.0f} s")
    checkpoints = run.folders("checkpoints")
    assert checkpoints[-1] == "000007-stage3-rewrite", checkpoints

    # Ray's state API: every learner ran on pool=train nodes, the rollout worker on pool=rollout ones.
    labels = {
        n.node_id: lbl for n, lbl in [(learner, "train"), (learner_again, "train"), *((r, "rollout") for r in rollout)]
    }
    placed = actor_nodes(cluster, "tiny")
    assert set(placed) >= {"learner-0", "learner-1", "rollout-0"}, placed
    for name, node_ids in placed.items():
        wanted = "train" if name.startswith("learner") else "rollout"
        assert all(labels[node] == wanted for node in node_ids), (name, node_ids)
    assert watcher.removed_rollout_node not in placed["rollout-0"]  # restarted on the spare node, resumed there

    # The weights crossed object stores (learner node -> rollout node): the engine's greedy
    # evaluation after stage 3 is what transformers decodes from the final checkpoint.
    run.download(tmp_path / "run", wanted=lambda name: not name.startswith("checkpoints/"))
    final = local_copy(
        run.uri_of(f"checkpoints/{checkpoints[-1]}"), storage, lambda name: not name.startswith("deepspeed/")
    )
    assert engine_matches_checkpoint(tmp_path / "run", Path(final), "after-stage3") == 4
