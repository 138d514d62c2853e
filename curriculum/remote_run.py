"""A run folder on storage every node can reach (s3://, gs://, hdfs://, file://).

The layout is a local run folder's. The controller keeps a working copy of the small files
(config, metrics, TensorBoard, evaluations, failures, report) in its node's scratch and publishes
the ones that changed. Checkpoints never pass through the controller: every learner rank saves to
its own node's scratch and uploads its part (`learner/worker.py`); the controller then adds the
tokenizer, a manifest of every file with its size, and state.json last. Object stores have no
rename, so state.json is the commit: a checkpoint whose upload was cut off has none, and one whose
files went missing since disagrees with its manifest; neither is ever resumed from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import asdict

from cluster.storage import StorageConfig, Store, is_uri, scratch_root, storage_errors, upload_scratch
from curriculum.run_dir import RunDir, RunState, free_run_name, is_run_of, write_config

MANIFEST = "manifest.json"


class RemoteRunDir(RunDir):
    def __init__(self, store: Store, storage: StorageConfig):
        digest = hashlib.sha1(store.uri.encode()).hexdigest()[:12]
        # The working copy keeps the run's own folder name (reports are titled with it).
        super().__init__(scratch_root(storage) / "runs" / digest / store.uri.rsplit("/", 1)[-1])
        self.store, self.storage = store, storage
        self.published: dict[str, tuple[int, int]] = {}  # file -> (size, mtime_ns) last uploaded

    @property
    def location(self) -> str:
        return self.store.uri

    @classmethod
    def create(cls, output_dir: str, name: str, cfg, storage: StorageConfig) -> RemoteRunDir:
        base = Store.open(output_dir, storage)
        run = cls(base.child(free_run_name(name, set(base.folders()))), storage)
        shutil.rmtree(run.path, ignore_errors=True)
        run.path.mkdir(parents=True)
        write_config(run.path, cfg)
        run.publish()
        return run

    @classmethod
    def open(cls, location: str, storage: StorageConfig) -> RemoteRunDir:
        """The run at `location`, its small files fetched into a fresh working copy."""
        run = cls(Store.open(location, storage), storage)
        if not run.store.exists("config.yaml"):
            raise FileNotFoundError(f"{location} is not a run folder (no config.yaml)")
        shutil.rmtree(run.path, ignore_errors=True)
        run.store.download(run.path, wanted=lambda name: not name.startswith("checkpoints/"))
        run.published = run._local_files()
        return run

    @classmethod
    def find_latest(cls, output_dir: str, name: str, storage: StorageConfig) -> RemoteRunDir:
        base = Store.open(output_dir, storage)
        candidates = [f for f in base.folders() if is_run_of(f, name)]
        found = []
        for folder in candidates:
            run = cls(base.child(folder), storage)
            latest = run.latest_checkpoint() if run.store.exists("config.yaml") else None
            if latest is not None:
                found.append((run.read_state(latest).saved_at, folder))
        if not found:
            raise FileNotFoundError(
                f"--resume auto: no run named {name!r} with a complete checkpoint under {base.uri}/"
            )
        return cls.open(base.uri_of(max(found)[1]), storage)

    # ---- the small files ------------------------------------------------------------------

    def _local_files(self) -> dict[str, tuple[int, int]]:
        stats = {p.relative_to(self.path).as_posix(): p.stat() for p in self.path.rglob("*") if p.is_file()}
        return {name: (s.st_size, s.st_mtime_ns) for name, s in stats.items()}

    def publish(self) -> None:
        """Upload the files of the working copy that changed since they were last uploaded."""
        with storage_errors(f"cannot upload the run's files to {self.store.uri}"):
            for name, stamp in self._local_files().items():
                if self.published.get(name) != stamp:
                    self.store.write_bytes(name, (self.path / name).read_bytes())
                    self.published[name] = stamp

    # ---- checkpoints ----------------------------------------------------------------------

    def committed_checkpoints(self) -> list[str]:
        names = [n for n in self.store.folders("checkpoints") if self.store.exists(f"checkpoints/{n}/state.json")]
        return [self.store.uri_of(f"checkpoints/{n}") for n in names]

    def _rel(self, checkpoint: str) -> str:
        return checkpoint[len(self.store.uri) + 1 :]

    def problem(self, checkpoint: str, optimizer: bool = True) -> str | None:
        """Checked against its manifest: every file there, at its size (nothing is downloaded)."""
        rel = self._rel(checkpoint)
        try:
            self.read_state(checkpoint)
        except (ValueError, TypeError):
            return "state.json is not a run state"
        try:
            manifest = json.loads(self.store.read_bytes(f"{rel}/{MANIFEST}"))
        except (OSError, ValueError):
            return f"{MANIFEST} is missing or damaged"
        present = self.store.files(rel)
        for name, size in manifest.items():
            if name.startswith("deepspeed/") and not optimizer:
                continue
            if name not in present:
                return (
                    "deepspeed/ (the optimizer state) is missing"
                    if name.startswith("deepspeed/")
                    else f"{name} is missing"
                )
            if present[name] != size:
                return f"{name} has {present[name]} bytes, not the {size} it was saved with"
        if "config.json" not in manifest or not any(n.endswith(".safetensors") for n in manifest):
            return "the manifest lists no model config or weights"
        if optimizer and not any(n.startswith("deepspeed/") for n in manifest):
            return "deepspeed/ (the optimizer state) is missing"
        return None

    def read_state(self, checkpoint: str) -> RunState:
        return RunState(**json.loads(self.store.read_bytes(f"{self._rel(checkpoint)}/state.json")))

    def discard_uncommitted(self) -> None:
        for name in self.store.folders("checkpoints"):
            if not self.store.exists(f"checkpoints/{name}/state.json"):
                self.store.delete(f"checkpoints/{name}")

    def begin_checkpoint(self, state: RunState, label: str) -> str:
        """The checkpoint's URI, emptied of anything an earlier attempt left; state.json goes first,
        so that the folder stops counting as a checkpoint before any of its files change."""
        rel = f"checkpoints/{state.global_step:06d}-{label}"
        with storage_errors(f"cannot prepare the checkpoint {self.store.uri_of(rel)}"):
            self.store.delete(f"{rel}/state.json")
            self.store.delete(rel)
        return self.store.uri_of(rel)

    def commit_checkpoint(
        self, folder: str, state: RunState, tokenizer, keep_last: int, keep_optimizer: int = 1
    ) -> str:
        rel = self._rel(folder)
        state = dataclasses.replace(state, saved_at=time.time())
        local = upload_scratch(self.storage, "tokenizer")
        try:
            with storage_errors(f"cannot commit the checkpoint {folder}"):
                tokenizer.save_pretrained(local)
                self.store.upload(local, rel)
                self.store.write_bytes(f"{rel}/{MANIFEST}", json.dumps(self.store.files(rel), indent=1).encode())
                self.store.write_bytes(f"{rel}/state.json", json.dumps(asdict(state), indent=1).encode())
                self._prune(keep_last, keep_optimizer)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return folder

    def _delete(self, checkpoint: str, part: str = "") -> None:
        rel = self._rel(checkpoint)
        if not part:
            self.store.delete(f"{rel}/state.json")  # uncommitted first, then the files
        self.store.delete(f"{rel}/{part}" if part else rel)


def create_run(output_dir: str, name: str, cfg, storage: StorageConfig) -> RunDir:
    return (
        RemoteRunDir.create(output_dir, name, cfg, storage)
        if is_uri(output_dir)
        else RunDir.create(output_dir, name, cfg)
    )


def open_run(location: str, storage: StorageConfig) -> RunDir:
    return RemoteRunDir.open(location, storage) if is_uri(location) else RunDir.open(location)


def find_latest_run(output_dir: str, name: str, storage: StorageConfig) -> RunDir:
    return (
        RemoteRunDir.find_latest(output_dir, name, storage)
        if is_uri(output_dir)
        else RunDir.find_latest(output_dir, name)
    )


def checkpoint_name(checkpoint) -> str:
    return str(checkpoint).rstrip("/").rsplit("/", 1)[-1]
