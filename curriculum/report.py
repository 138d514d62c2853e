"""The run report: `report.json`, `report.png` and a short table, from the run's metrics.

Reads only `metrics.jsonl` and the evaluation results, so it can be rebuilt for any run folder:
    python -m curriculum.report runs/smollm2-gsm8k
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def build_report(run_dir: Path, evaluations: dict[str, dict]) -> dict:
    records = _records(run_dir)
    steps = [r for r in records if r["stage"] in ("sft", "grpo", "rewrite")]
    base = evaluations.get("before", {})
    report = {"evaluations": evaluations, "steps": len(steps)}
    if base:
        last = list(evaluations.values())[-1]
        report["accuracy_gain"] = last["eval_accuracy"] - base["eval_accuracy"]
        report["token_ratio"] = last["eval_mean_tokens"] / max(1e-9, base["eval_mean_tokens"])
    mining = [r for r in records if r["stage"] == "mining"]
    if mining:
        report["persistent_failures"] = mining[-1]["persistent_failures"]
    return report


def table(evaluations: dict[str, dict]) -> str:
    lines = [f"{'evaluation':<16}{'step':>6}{'n':>6}{'accuracy':>10}{'tokens':>9}{'format':>8}{'steps ok':>10}"]
    for label, e in evaluations.items():
        lines.append(
            f"{label:<16}{e['step']:>6}{e['eval_n']:>6}{e['eval_accuracy']:>10.3f}{e['eval_mean_tokens']:>9.1f}"
            f"{e['eval_format_rate']:>8.2f}{e['eval_step_accuracy']:>10.2f}"
        )
    return "\n".join(lines)


def plot(run_dir: Path, evaluations: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(run_dir)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    labels = list(evaluations)
    axes[0, 0].bar(labels, [evaluations[k]["eval_accuracy"] for k in labels], color="tab:green")
    axes[0, 0].set_title("eval accuracy (greedy)")
    axes[0, 1].bar(labels, [evaluations[k]["eval_mean_tokens"] for k in labels], color="tab:orange")
    axes[0, 1].set_title("eval mean generated tokens")
    for ax in axes[0]:
        ax.tick_params(axis="x", labelrotation=20)
    grpo = [r for r in records if r["stage"] in ("grpo", "rewrite")]
    sft = [r for r in records if r["stage"] == "sft"]
    if sft:
        axes[1, 0].plot([r["step"] for r in sft], [r["loss"] for r in sft], label="stage-1 SFT loss", color="tab:blue")
    if grpo:
        axes[1, 0].plot([r["step"] for r in grpo], [r["reward_mean"] for r in grpo], label="GRPO reward mean", color="tab:red")
        axes[1, 1].plot([r["step"] for r in grpo], [r["completion_tokens"] for r in grpo], label="completion tokens", color="tab:orange")
        twin = axes[1, 1].twinx()
        twin.plot([r["step"] for r in grpo], [r["accuracy"] for r in grpo], label="rollout accuracy", color="tab:green")
        # Each axis label takes its line's colour: two lines on two scales, and no legend to cover them.
        twin.set_ylabel("rollout accuracy", color="tab:green")
        axes[1, 1].set_ylabel("completion tokens", color="tab:orange")
    axes[1, 0].set_title("training curves")
    axes[1, 0].legend(loc="best", fontsize=8)
    axes[1, 1].set_title("GRPO: length and accuracy of rollouts")
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path) -> dict:
    """Write report.json and report.png for a run folder; returns the report."""
    evaluations = evaluations_of(run_dir)
    report = build_report(run_dir, evaluations)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    plot(run_dir, evaluations, run_dir / "report.png")
    return report


def evaluations_of(run_dir: Path) -> dict[str, dict]:
    """Evaluation records of a run by label ('before', 'after-stage1', ...), across resumes."""
    return {r["label"]: r for r in _records(run_dir) if r["stage"] == "eval"}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    print(json.dumps(write_report(folder), indent=1))
    print(table(evaluations_of(folder)))
