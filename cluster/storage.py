"""Storage every node can reach: a folder on any filesystem pyarrow opens.

A location is a local (or shared) path, or a URI: s3://bucket/prefix, gs://..., hdfs://...,
file:///path. Credentials never appear in a location or in the config: pyarrow reads them from each
node's environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, an instance
role, GOOGLE_APPLICATION_CREDENTIALS, ...).

Object stores have no rename, so whoever writes a set of files that must appear whole writes a
marker last (a checkpoint's state.json); readers trust a folder only once its marker is there.
Each node keeps its own scratch folder: checkpoints are written there and then uploaded, and a
location that must be loaded (a checkpoint to resume or serve) is downloaded there once.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from cluster.typed_config import option

READ_CHUNK = 64 << 20
SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


@dataclass
class StorageConfig:
    endpoint: str = option(
        "",
        "S3-compatible endpoint URL (MinIO, Ceph, R2, ...), e.g. http://10.0.0.5:9000; empty = "
        "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL from the environment, else AWS itself. Credentials are "
        "never set here: they come from each node's environment.",
    )
    region: str = option("", "S3 region; empty = AWS_REGION / AWS_DEFAULT_REGION from the environment, else us-east-1.")
    connect_timeout_s: float = option(
        5.0,
        "Seconds to wait for a connection to the storage endpoint; an unreachable endpoint is refused "
        "before any actor starts.",
    )
    request_timeout_s: float = option(120.0, "Seconds one storage request (a part of an upload or download) may take.")
    scratch_dir: str = option(
        "",
        "Local folder on every node for checkpoints being uploaded and checkpoints downloaded to load; "
        "empty = the system's temp folder. Only used when run.output_dir is a URI.",
    )


class StorageError(ValueError):
    """Storage that cannot be used: unknown scheme, missing bucket, unreachable endpoint, no permission."""


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def scratch_root(cfg: StorageConfig) -> Path:
    return Path(cfg.scratch_dir or tempfile.gettempdir()) / "bridge-distill"


def _reason(err: Exception) -> str:
    """pyarrow's message without its request id, on one line."""
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(err)).replace("\n", " ")
    return text.split("; Details:")[0].strip()


def _filesystem(location: str, cfg: StorageConfig) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(location)
    if parts.username or parts.password:
        # Say where, never what: the secret must not reach a log.
        raise StorageError(
            f"{parts.scheme}://...@{parts.hostname}{parts.path}: a storage location must not carry "
            "credentials; set them in each node's environment (e.g. AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY)"
        )
    if re.search(r"(?i)(secret|key|token|password)", parts.query):
        raise StorageError(
            f"{parts.scheme}://{parts.netloc}{parts.path}: a storage location must not carry credentials "
            "in its query; set them in each node's environment"
        )
    if parts.scheme not in SCHEMES:
        raise StorageError(
            f"{location}: unknown storage scheme '{parts.scheme}' (a local path, or one of "
            f"{', '.join(s + '://' for s in SCHEMES)})"
        )
    if parts.scheme != "s3":
        try:
            return pafs.FileSystem.from_uri(location)
        except (pafs.ArrowInvalid, OSError, ImportError) as err:
            raise StorageError(f"{location}: cannot open this storage: {_reason(err)}") from None
    if not parts.netloc:
        raise StorageError(f"{location}: an s3:// location needs a bucket (s3://bucket/prefix)")
    endpoint = cfg.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    options = {"region": region, "connect_timeout": cfg.connect_timeout_s, "request_timeout": cfg.request_timeout_s}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        options.update(endpoint_override=host or endpoint, scheme=scheme or "https")
    return pafs.S3FileSystem(**options), f"{parts.netloc}{parts.path}".rstrip("/")


class Store:
    """A folder on a pyarrow filesystem; every path given to its methods is relative to it."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str):
        self.fs, self.root, self.uri = fs, root.rstrip("/"), uri.rstrip("/")

    @classmethod
    def open(cls, location: str | Path, cfg: StorageConfig) -> Store:
        location = str(location)
        if not is_uri(location):
            path = str(Path(location).expanduser().resolve())
            return cls(pafs.LocalFileSystem(), path, path)
        fs, root = _filesystem(location, cfg)
        return cls(fs, root, location)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def child(self, rel: str) -> Store:
        return Store(self.fs, self._path(rel), self.uri_of(rel))

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self._path(rel)) as stream:
            return stream.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not isinstance(self.fs, pafs.S3FileSystem):  # object stores have no folders to make
            self.fs.create_dir(self._path(rel).rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(self._path(rel)) as stream:
            stream.write(data)

    def write_whole(self, rel: str, data: bytes) -> None:
        """Write a file that readers see whole or not at all: an object store's PUT already is;
        elsewhere the bytes go to a temporary name first and are renamed into place."""
        if isinstance(self.fs, pafs.S3FileSystem | pafs.GcsFileSystem):
            self.write_bytes(rel, data)
            return
        partial = f"{rel}.partial-{os.getpid()}"
        self.write_bytes(partial, data)
        self.fs.move(self._path(partial), self._path(rel))

    def files(self, rel: str = "") -> dict[str, int]:
        """Every file under `rel` (recursively), as path relative to `rel` -> size in bytes."""
        base = self._path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {info.path[len(base) + 1 :]: info.size for info in infos if info.type == pafs.FileType.File}

    def folders(self, rel: str = "") -> list[str]:
        """Names of the folders directly under `rel`, sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def delete(self, rel: str) -> None:
        """A file or a folder with everything under it; nothing happens if it is not there."""
        path = self._path(rel)
        kind = self.fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(path)

    def upload(self, local: Path, rel: str = "") -> int:
        """Copy the local folder `local` to `rel`; returns the bytes sent."""
        sent = sum(p.stat().st_size for p in Path(local).rglob("*") if p.is_file())
        pafs.copy_files(
            str(local),
            self._path(rel),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
            use_threads=True,
        )
        return sent

    def download(self, local: Path, rel: str = "", wanted: Callable[[str], bool] | None = None) -> int:
        """Copy the files under `rel` that `wanted` accepts into `local`, skipping any already there
        with the same size; each lands under a temporary name first. Returns the bytes fetched."""
        fetched = 0
        for name, size in self.files(rel).items():
            target = Path(local) / name
            if (wanted is not None and not wanted(name)) or (target.is_file() and target.stat().st_size == size):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            # Large ranged reads: each is one request, and some servers pay per request in
            # proportion to the object (moto: 300 MiB in 13 s with 8 MiB reads, 3.5 s with 64 MiB).
            with (
                self.fs.open_input_file(self._path(f"{rel}/{name}" if rel else name)) as source,
                partial.open("wb") as sink,
            ):
                for offset in range(0, size, READ_CHUNK):
                    sink.write(source.read_at(min(READ_CHUNK, size - offset), offset))
            os.replace(partial, target)
            fetched += size
        return fetched

    def check_writable(self, what: str) -> None:
        """Refuse, in one line, storage this job could not write to: a missing bucket, an endpoint
        that does not answer, no permission, a server that alters what it stores. A small probe file
        is written, read back and deleted."""
        probe = f".write-probe-{os.getpid()}"
        try:
            if isinstance(self.fs, pafs.S3FileSystem):  # no folders to create, but the bucket must exist
                bucket = self.root.split("/", 1)[0]
                if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise StorageError(f"{what} {self.uri}: the bucket '{bucket}' does not exist")
            else:
                self.fs.create_dir(self.root, recursive=True)
            self.write_bytes(probe, b"probe")
            stored = self.read_bytes(probe)
            self.delete(probe)
            if stored != b"probe":
                # Seen with anonymous access: the client frames the body (aws-chunked) and a server
                # that does not decode it stores the frame, so every file would come back altered.
                raise StorageError(
                    f"{what} {self.uri}: a 5-byte probe file came back as {len(stored)} different bytes; "
                    "the server does not store uploads as sent (with S3-compatible servers this happens "
                    "without credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )
        except OSError as err:
            reason = _reason(err)
            if "NETWORK_CONNECTION" in reason or "Could not connect" in reason or "curlCode" in reason:
                reason = f"the storage endpoint does not answer ({reason})"
            elif "ACCESS_DENIED" in reason or "Permission denied" in reason:
                reason = f"no permission to write there ({reason})"
            raise StorageError(f"{what} {self.uri}: {reason}") from None


@contextmanager
def storage_errors(what: str):
    """An OSError of the storage (left after pyarrow's own retries) as one StorageError saying what
    was being done, so that the run stops with a readable line and its resume command."""
    try:
        yield
    except OSError as err:
        raise StorageError(f"{what}: {_reason(err)}") from None


def local_copy(location: str, cfg: StorageConfig, wanted: Callable[[str], bool] | None = None) -> str:
    """A local folder holding `location`'s files (those `wanted` accepts): the location itself when
    it is a path; else a download into this node's scratch, shared by the actors of the node (a file
    lock lets one fetch while the others wait, and files already there are not fetched again)."""
    if not is_uri(location):
        return location
    from filelock import FileLock

    digest = hashlib.sha1(location.encode()).hexdigest()[:12]
    target = scratch_root(cfg) / "downloads" / f"{digest}-{location.rstrip('/').rsplit('/', 1)[-1]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        try:
            Store.open(location, cfg).download(target, wanted=wanted)
        except OSError as err:
            raise StorageError(f"cannot download {location}: {_reason(err)}") from None
    return str(target)


def upload_scratch(cfg: StorageConfig, label: str) -> Path:
    """A fresh local folder to write files into before they are uploaded (delete it afterwards)."""
    root = scratch_root(cfg) / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
