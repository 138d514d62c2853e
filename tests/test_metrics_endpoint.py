"""The run's gauges on the Ray node's Prometheus endpoint, read over HTTP as Prometheus reads them."""

import re
import time
import urllib.request

from cluster.metrics import MetricsSink

# Ray's agent drops a gauge 20 s after it arrives (2x the default 10 s report interval), and the
# emitter reports within one interval: by 30 s after its only `set`, a gauge is gone.
RAY_DROPS_AFTER_S = 36


def served(ray) -> dict[tuple[str, str], float]:
    node = ray.nodes()[0]
    text = (
        urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10)
        .read()
        .decode()
    )
    found = {}
    for name, labels, value in re.findall(r"^ray_(bridge_\w+|probe_\w+)\{([^}]*)\} (\S+)$", text, re.M):
        if 'run="endpoint-test"' in labels or name.startswith("probe_"):
            found[(name, re.search(r'stage="([^"]*)"', labels).group(1))] = float(value)
    return found


def test_a_stage_keeps_its_gauges_on_the_endpoint_until_the_next_stage_begins(ray_session, tmp_path):
    """A step can outlast Ray's 20 s: the sink sets the stage's gauges again, so Prometheus never
    sees a gap. A gauge set once (the control) is gone by then; once the next stage begins the
    last stage's series leave too."""
    from ray.util.metrics import Gauge

    sink = MetricsSink(tmp_path, "endpoint-test")
    try:
        sink.begin_stage()
        sink.log(1, "sft", {"loss": 2.5, "step_s": 40.0})
        sink.log(1, "eval", {"label": "after-stage1", "eval_accuracy": 0.25})
        Gauge("probe_set_once", tag_keys=("stage",)).set(1.0, tags={"stage": "sft"})
        time.sleep(RAY_DROPS_AFTER_S)
        now = served(ray_session)
        assert ("probe_set_once", "sft") not in now, "Ray kept a gauge set once: the refresh may be needless"
        assert now[("bridge_loss", "sft")] == 2.5 and now[("bridge_step_s", "sft")] == 40.0
        assert now[("bridge_eval_accuracy", "eval")] == 0.25

        sink.begin_stage()
        sink.log(2, "grpo", {"reward_mean": 0.75})
        time.sleep(RAY_DROPS_AFTER_S)
        now = served(ray_session)
        assert now[("bridge_reward_mean", "grpo")] == 0.75
        assert ("bridge_loss", "sft") not in now and ("bridge_eval_accuracy", "eval") not in now
    finally:
        sink.close()
    assert not sink.refresher.is_alive()
