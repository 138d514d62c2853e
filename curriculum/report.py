"""The run report: `report.json`, `report.png` and a short table, from the run's metrics.

Reads only `metrics.jsonl` and the evaluation results, so it can be rebuilt for any run folder:
    python -m curriculum.report runs/smollm2-gsm8k
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _records(run_dir: Path) -> list[dict]:
    """The run's metric records; a line cut short by a kill (or otherwise damaged) is left out."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "stage" in record:
            records.append(record)
    return records


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


# Stage 2 and stage 3 are different tasks (completing masked steps against rewriting a given
# solution), so their rollouts are separate series, never one line across the stage change.
GRPO_STAGES = {"grpo": ("stage 2", "-", "o"), "rewrite": ("stage 3", "--", "s")}


def figure(records: list[dict], evaluations: dict[str, dict], title: str):
    """The report's panels as a matplotlib figure, outside pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 10))
    mosaic = fig.subplot_mosaic([["accuracy", "tokens"], ["training", "rollouts"], ["sampler", "sampler"]])
    axes = [[mosaic["accuracy"], mosaic["tokens"]], [mosaic["training"], mosaic["rollouts"]]]
    labels = list(evaluations)
    for ax, key, scale, colour, heading, unit in (
        (axes[0][0], "eval_accuracy", 100, "tab:green", "eval accuracy, % (greedy)", "{:.1f} %"),
        (axes[0][1], "eval_mean_tokens", 1, "tab:orange", "eval mean generated tokens", "{:.0f}"),
    ):
        values = [scale * evaluations[k][key] for k in labels]
        bars = ax.bar(labels, values, color=colour)
        # Each bar says its value and how many problems it rests on: 64 problems are a progress
        # signal (one answer is 1.6 points), not a measurement.
        ax.bar_label(
            bars,
            labels=[f"{unit.format(v)}\nn={evaluations[k]['eval_n']}" for k, v in zip(labels, values, strict=True)],
            fontsize=8,
        )
        ax.set_title(heading)
        ax.margins(y=0.25)
        ax.set_ylim(bottom=0)
        ax.tick_params(axis="x", labelrotation=20)
    sft = [r for r in records if r["stage"] == "sft"]
    if sft:
        axes[1][0].plot([r["step"] for r in sft], [r["loss"] for r in sft], label="stage-1 SFT loss", color="tab:blue")
    twin = None
    for stage, (name, style, marker) in GRPO_STAGES.items():
        rows = [r for r in records if r["stage"] == stage]
        if not rows:
            continue
        x = [r["step"] for r in rows]
        axes[1][0].plot(
            x, [r["reward_mean"] for r in rows], style, marker=marker, label=f"{name} GRPO reward mean", color="tab:red"
        )
        axes[1][1].plot(
            x,
            [r["completion_tokens"] for r in rows],
            style,
            marker=marker,
            label=f"{name} completion tokens",
            color="tab:orange",
        )
        twin = twin or axes[1][1].twinx()
        twin.plot(
            x, [r["accuracy"] for r in rows], style, marker=marker, label=f"{name} rollout accuracy", color="tab:green"
        )
    if twin is not None:
        # Each axis label takes its line's colour: two quantities on two scales.
        twin.set_ylabel("rollout accuracy", color="tab:green")
        axes[1][1].set_ylabel("completion tokens", color="tab:orange")
        lines = axes[1][1].get_lines() + twin.get_lines()
        axes[1][1].legend(lines, [line.get_label() for line in lines], loc="best", fontsize=7)
    sampler_panel(mosaic["sampler"], records)
    axes[1][0].set_title("training curves")
    axes[1][0].legend(loc="best", fontsize=8)
    axes[1][1].set_title("GRPO rollouts: length and accuracy")
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def sampler_panel(ax, records: list[dict]) -> None:
    """KL(sampler || learner) on the sampled tokens per GRPO step, on a log scale: numerical noise
    when the engines run the learner's weights, orders of magnitude more when they do not."""
    for stage, (name, style, marker) in GRPO_STAGES.items():
        rows = [r for r in records if r["stage"] == stage and "sampler_kl" in r]
        if rows:
            x = [r["step"] for r in rows]
            ax.plot(
                x,
                [max(r["sampler_kl"], 1e-12) for r in rows],
                style,
                marker=marker,
                label=f"{name} KL",
                color="tab:purple",
            )
            ax.plot(
                x,
                [max(r["sampler_mismatch"], 1e-12) for r in rows],
                style,
                marker=marker,
                label=f"{name} mean |diff|",
                color="tab:gray",
            )
    if ax.get_lines():
        ax.set_yscale("log")
        ax.legend(loc="best", fontsize=8)
    ax.set_title("rollout engine vs learner: log-probs of the sampled tokens (stale weights jump)")
    ax.set_xlabel("step")


def write_report(run_dir: Path) -> dict:
    """Write report.json and report.png for a run folder; returns the report."""
    evaluations = evaluations_of(run_dir)
    report = build_report(run_dir, evaluations)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    figure(_records(run_dir), evaluations, run_dir.name).savefig(run_dir / "report.png", dpi=110)
    return report


def evaluations_of(run_dir: Path) -> dict[str, dict]:
    """Evaluation records of a run by label ('before', 'after-stage1', ...), across resumes."""
    return {r["label"]: r for r in _records(run_dir) if r["stage"] == "eval"}


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    print(json.dumps(write_report(folder), indent=1))
    print(table(evaluations_of(folder)))
