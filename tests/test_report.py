import json

from curriculum.report import figure, write_report


def _records():
    evals = [
        {
            "stage": "eval",
            "label": label,
            "step": step,
            "eval_n": 64,
            "eval_accuracy": acc,
            "eval_mean_tokens": tokens,
            "eval_format_rate": 0.9,
            "eval_step_accuracy": 0.5,
        }
        for label, step, acc, tokens in (
            ("before", 0, 0.015625, 228.2),
            ("after-stage1", 75, 0.03125, 90.3),
            ("after-stage3", 80, 0.046875, 84.2),
        )
    ]
    sft = [{"stage": "sft", "step": s, "loss": 1.0 / s} for s in range(1, 4)]
    grpo = [
        {
            "stage": "grpo",
            "step": s,
            "reward_mean": -1.5,
            "completion_tokens": 90.0,
            "accuracy": 0.03,
            "sampler_kl": kl,
            "sampler_mismatch": 10 * kl,
        }
        for s, kl in ((4, 2e-8), (5, 3e-3))
    ]
    rewrite = [{"stage": "rewrite", "step": 6, "reward_mean": 0.2, "completion_tokens": 60.0, "accuracy": 0.69}]
    return evals + sft + grpo + rewrite


def test_bars_say_their_value_and_slice_size():
    records = _records()
    evaluations = {r["label"]: r for r in records if r["stage"] == "eval"}
    accuracy, tokens = figure(records, evaluations, "run").axes[:2]
    assert [t.get_text() for t in accuracy.texts] == ["1.6 %\nn=64", "3.1 %\nn=64", "4.7 %\nn=64"]
    assert [t.get_text() for t in tokens.texts] == ["228\nn=64", "90\nn=64", "84\nn=64"]


def test_stage_2_and_stage_3_rollouts_are_separate_series():
    records = _records()
    fig = figure(records, {r["label"]: r for r in records if r["stage"] == "eval"}, "run")
    curves, lengths, sampler, accuracy = fig.axes[2:6]
    assert [line.get_label() for line in curves.get_lines()] == [
        "stage-1 SFT loss",
        "stage 2 GRPO reward mean",
        "stage 3 GRPO reward mean",
    ]
    by_label = {line.get_label(): list(line.get_xdata()) for line in lengths.get_lines() + accuracy.get_lines()}
    assert by_label == {
        "stage 2 completion tokens": [4, 5],
        "stage 3 completion tokens": [6],
        "stage 2 rollout accuracy": [4, 5],
        "stage 3 rollout accuracy": [6],
    }
    # The sampler's agreement with the learner, on a log scale (stage 3's records here have none).
    assert [line.get_label() for line in sampler.get_lines()] == ["stage 2 KL", "stage 2 mean |diff|"]
    assert sampler.get_yscale() == "log" and list(sampler.get_lines()[0].get_ydata()) == [2e-8, 3e-3]
    assert fig.texts[0].get_text() == "run"


def test_write_report_from_a_run_folder(tmp_path):
    # A line cut short by a kill, and one that is not text, are left out.
    (tmp_path / "metrics.jsonl").write_bytes(
        "".join(json.dumps(r) + "\n" for r in _records()).encode() + b"\xff{}\n" + b'{"time": 1, "st'
    )
    report = write_report(tmp_path)
    assert report["steps"] == 6 and abs(report["token_ratio"] - 84.2 / 228.2) < 1e-9
    assert (tmp_path / "report.png").stat().st_size > 10_000
