"""What the learner knows of a model before it trains it: its shape for `--plan` (read from its
config alone), which decoder layers to freeze, and whether a LoRA adapter's target layers exist."""

from __future__ import annotations

from pathlib import Path

from cluster.memory_estimate import ModelShape
from cluster.model_source import EMBEDDED, ModelError, locate
from cluster.storage import StorageConfig, StorageError, is_uri, local_copy


def freeze_bottom_layers(model, count: int) -> None:
    """Leave the input embedding and the bottom `count` decoder layers out of training.

    The embedding's output is detached, so backward ends at layer `count` instead of running down
    through every frozen layer to reach it; an output head tied to the embedding still trains,
    through the output side only.
    """
    if count <= 0:
        return
    layers = model.get_decoder().layers
    if count >= len(layers):
        raise ValueError(
            f"learner.frozen_layers={count} leaves nothing to train: the model has {len(layers)} decoder layers"
        )
    for layer in layers[:count]:
        layer.requires_grad_(False)
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is None or embedding.weight is not head.weight:
        embedding.requires_grad_(False)
    embedding.register_forward_hook(lambda _module, _inputs, output: output.detach())


def check_frozen_layers(folder: str, count: int) -> None:
    """Refuse, before any actor starts, to freeze as many layers as the model has or more."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(folder).num_hidden_layers
    if count < 0 or count >= layers:
        raise ModelError(
            f"learner.frozen_layers={count} must be between 0 and {layers - 1}: the model at {folder} has "
            f"{layers} decoder layers"
        )


def check_lora_targets(folder: str, lora) -> None:
    """Refuse, before any actor starts, an adapter on layers the model does not have."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from learner.lora import linear_layer_names, unknown_targets

    if lora.stages == "none":
        return
    with torch.device("meta"):  # names only: nothing is allocated
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    bad = unknown_targets(lora, model)
    if bad:
        raise ModelError(
            f"learner.lora.target_modules: the model at {folder} has no linear layer named "
            f"{', '.join(bad)} (it has {', '.join(sorted(linear_layer_names(model)))})"
        )


def model_shape(spec: str, storage: StorageConfig | None = None, lora=None) -> ModelShape:
    """Parameter count and KV-cache shape from the model's config alone (no weights are read or
    fetched: a hub model or a checkpoint URI needs only its config.json), for `launch.train --plan`;
    with `lora` (learner.lora) training an adapter in every stage, that adapter's parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        source = locate(spec, True, storage or StorageConfig())
    elif is_uri(spec):
        try:
            source = local_copy(spec, storage or StorageConfig(), lambda name: name == "config.json")
        except StorageError as err:
            raise ModelError(f"model {spec}: {err}") from None
        if not (Path(source) / "config.json").is_file():
            raise ModelError(
                f"model not found: {spec} has no config.json (expected a checkpoint or save_pretrained folder)"
            )
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {spec} has no config.json (expected a save_pretrained folder)")
        source = str(path)
    else:
        try:
            from huggingface_hub import hf_hub_download

            source = str(Path(hf_hub_download(spec, "config.json")).parent)
        except Exception as err:  # offline, unknown repo, gated
            raise ModelError(f"cannot fetch the config of model '{spec}' from the hub: {err}") from err
    from learner.lora import adapter_parameters

    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    heads = text.num_attention_heads
    return ModelShape(
        parameters=sum(p.numel() for p in model.parameters()),
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        adapter_parameters=adapter_parameters(model, lora) if lora is not None and lora.stages == "all" else 0,
    )
