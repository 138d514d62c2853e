"""The run folder: resolved config, metrics, checkpoints, and the state needed to resume.

    runs/<name>/
      config.yaml            the resolved config of the run
      metrics.jsonl          one record per step and per evaluation
      tensorboard/           the same metrics as TensorBoard events
      failures.jsonl         persistent failures found before stage 3
      checkpoints/<NNNNNN>-<stage>/   a save_pretrained folder + tokenizer + deepspeed/ + state.json

A checkpoint is written under `<folder>.tmp` and renamed once complete (state.json last), so a
crash mid-save never leaves a folder that looks complete. Only the newest `keep_optimizer`
checkpoints keep deepspeed/ (what a resume needs); the others keep weights and tokenizer.
A run folder on object storage (`curriculum/remote_run.py`) follows the same rules without renames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cluster.model_source import weights_problem
from cluster.typed_config import ConfigError, to_dict


@dataclass
class RunState:
    """Where the run is: the next stage to run and how many of its steps are done."""

    stage: int = 1
    stage_step: int = 0
    global_step: int = 0
    version: int = 0
    failures: list[int] | None = None
    stage_end: bool = False
    saved_at: float = 0.0  # the controller's clock when the checkpoint was committed


# The last line of a run's config.yaml: without it the file was cut short.
CONFIG_END = "# end of config\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: a file is missing or damaged."""


def checkpoint_problem(checkpoint: Path, optimizer: bool = True) -> str | None:
    """What makes a committed checkpoint unusable, naming the file; None when it is whole (without
    `optimizer`, whole as a model: its deepspeed/ may have been dropped). Cheap: JSON files parsed,
    safetensors headers read (they must cover the whole file), no tensor loaded."""
    try:
        RunDir.read_state(checkpoint)
    except FileNotFoundError:
        return "state.json is missing"
    except (ValueError, TypeError):  # not UTF-8, not JSON, or not the fields of a RunState
        return "state.json is not a run state"
    try:
        config = json.loads((checkpoint / "config.json").read_bytes())
    except FileNotFoundError:
        return "config.json is missing"
    except ValueError:
        return "config.json is not valid JSON"
    if not isinstance(config, dict) or "model_type" not in config:
        return "config.json is not a model config (no model_type)"
    problem = weights_problem(checkpoint)
    if problem is not None:
        return problem
    if optimizer and not (checkpoint / "deepspeed").is_dir():
        return "deepspeed/ (the optimizer state) is missing"
    return None


def free_run_name(name: str, taken: set[str]) -> str:
    """`name`, else `name-2`, `name-3`, ...: the first that no earlier run has taken."""
    chosen, suffix = name, 1
    while chosen in taken:
        suffix += 1
        chosen = f"{name}-{suffix}"
    return chosen


def is_run_of(folder: str, name: str) -> bool:
    """Whether the folder name is one `free_run_name` gives for `name`."""
    return folder == name or (folder.startswith(f"{name}-") and folder.removeprefix(f"{name}-").isdigit())


def write_config(folder: Path, cfg) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False) + CONFIG_END)


class RunDir:
    def __init__(self, path: Path):
        self.path = path  # where metrics and reports are written as the run goes
        self.checkpoints = path / "checkpoints"

    @property
    def location(self) -> str:
        """Where the run lives, as --resume takes it."""
        return str(self.path)

    @property
    def name(self) -> str:
        """The run folder's name (`run.name`, or `name-2`, ...); actors are named after it."""
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def publish(self) -> None:
        """Make the files written so far visible where the run lives (here they already are)."""

    @classmethod
    def create(cls, output_dir: str, name: str, cfg) -> RunDir:
        """A fresh run folder; `name`, `name-2`, ... so that no earlier run is overwritten."""
        base = Path(output_dir)
        path = base / free_run_name(name, {p.name for p in base.iterdir()} if base.is_dir() else set())
        path.mkdir(parents=True)
        write_config(path, cfg)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(Path(path))
        if not (run.path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
        return run

    def resolved_config(self) -> Path:
        """The run's config.yaml, refused if it was cut short: YAML cut at a line break still
        parses, and would resume the run with defaults in place of the lost keys."""
        path = self.path / "config.yaml"
        if not path.read_bytes().endswith(CONFIG_END.encode()):
            raise ConfigError(
                f"{path} is cut short (a run's config.yaml ends with the line '{CONFIG_END.strip()}'; "
                "a run folder written before that line existed resumes once it is appended)"
            )
        return path

    @classmethod
    def find_latest(cls, output_dir: str, name: str) -> RunDir:
        """`--resume auto`: of the runs `name`, `name-2`, ... the one with the newest complete checkpoint."""
        base = Path(output_dir)
        runs = [cls(p) for p in base.glob(f"{name}*") if (p / "config.yaml").is_file() and is_run_of(p.name, name)]
        resumable = [(r.latest_checkpoint(), r) for r in runs]
        resumable = [(c, r) for c, r in resumable if c is not None]
        if not resumable:
            raise FileNotFoundError(f"--resume auto: no run named {name!r} with a complete checkpoint under {base}/")
        return max(resumable, key=lambda item: cls.read_state(item[0]).saved_at)[1]

    def committed_checkpoints(self) -> list[Path]:
        """Every checkpoint that was committed (renamed from `.tmp`), oldest first: the folder name
        starts with the zero-padded global step."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            p
            for p in self.checkpoints.iterdir()
            if p.is_dir() and not p.name.endswith(".tmp") and (p / "state.json").exists()
        )

    def problem(self, checkpoint, optimizer: bool = True) -> str | None:
        return checkpoint_problem(checkpoint, optimizer)

    def complete_checkpoints(self, optimizer: bool = True) -> list:
        """The committed checkpoints whose files are whole (see `checkpoint_problem`)."""
        return [p for p in self.committed_checkpoints() if self.problem(p, optimizer) is None]

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def resume_checkpoint(self) -> Path | None:
        """`--resume RUN_DIR`: the newest committed checkpoint, refused with the damaged file and
        the newest complete one named if it has been damaged since (disk full, a copy cut short)."""
        committed = self.committed_checkpoints()
        if not committed:
            return None
        problem = self.problem(committed[-1])
        if problem is None:
            return committed[-1]
        earlier = self.latest_checkpoint()
        instead = (
            f"the newest complete one is {earlier}: move {committed[-1].name} aside to resume from it"
            if earlier
            else "no earlier checkpoint is complete"
        )
        raise CheckpointError(f"checkpoint {committed[-1]} is damaged ({problem}); {instead}")

    @staticmethod
    def read_state(checkpoint: Path) -> RunState:
        state = RunState(**json.loads((checkpoint / "state.json").read_text()))
        return (
            state
            if state.saved_at
            else dataclasses.replace(state, saved_at=(checkpoint / "state.json").stat().st_mtime)
        )

    def discard_uncommitted(self) -> None:
        """Remove what a save cut short left behind (a resumed run never reads it)."""
        for folder in self.checkpoints.glob("*.tmp") if self.checkpoints.is_dir() else []:
            shutil.rmtree(folder)

    def begin_checkpoint(self, state: RunState, label: str) -> Path:
        folder = self.checkpoints / f"{state.global_step:06d}-{label}.tmp"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def commit_checkpoint(
        self, folder: Path, state: RunState, tokenizer, keep_last: int, keep_optimizer: int = 1
    ) -> Path:
        state = dataclasses.replace(state, saved_at=time.time())
        tokenizer.save_pretrained(folder)
        tmp_state = folder / "state.json.tmp"
        tmp_state.write_text(json.dumps(asdict(state), indent=1))
        os.replace(tmp_state, folder / "state.json")
        final = folder.with_name(folder.name[: -len(".tmp")])
        if final.exists():
            shutil.rmtree(final)
        os.replace(folder, final)
        self._prune(keep_last, keep_optimizer)
        return final

    def _prune(self, keep_last: int, keep_optimizer: int) -> None:
        """Keep every stage-end checkpoint and the last `keep_last` periodic ones; of those, only
        the newest `keep_optimizer` (0 = all) keep their optimizer state."""
        periodic = [p for p in self.complete_checkpoints(optimizer=False) if not self.read_state(p).stage_end]
        for old in periodic[: max(0, len(periodic) - keep_last)]:
            self._delete(old)
        resumable = self.complete_checkpoints()
        for old in resumable[: max(0, len(resumable) - keep_optimizer)] if keep_optimizer else []:
            self._delete(old, "deepspeed")

    def _delete(self, checkpoint: Path, part: str = "") -> None:
        shutil.rmtree(checkpoint / part if part else checkpoint)

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        path = self.path / name
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        return path
