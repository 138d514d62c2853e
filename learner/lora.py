"""LoRA adapters on the learner (peft), and the plain weights the rest of the system sees.

Rollout workers, checkpoints and the end of an adapter stage all want the plain model's weights,
named as transformers names them: W' = W + (alpha / r) * B @ A for every adapted layer, the base
weight for everything else. W' is computed in fp32 from the untouched base every time and cast once
to the base's dtype. The base is never merged into in place: merging and unmerging in bf16 rounds
W a little differently each time, and after many syncs the base has drifted.

The pure part (names and the merge) needs only torch; `attach` and `adapter_config` need peft.
"""

from __future__ import annotations

import torch

from learner.config import LoraConfig

PREFIX = "base_model.model."  # what peft puts in front of the wrapped model's names
ADAPTER = "default"  # peft's name for the one adapter
ADAPTER_SEED = 0


def merged_weight(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, in fp32, cast once to W's dtype."""
    return (base.float() + scale * (lora_b.float() @ lora_a.float())).to(base.dtype)


def export_plan(names: list[str]) -> dict[str, list[str]]:
    """Plain name -> the names (of the wrapped model) its tensor is computed from: [weight] for a
    tensor kept as it is, [base weight, A, B] for an adapted layer's weight. Adapter tensors are not
    exported by themselves. A model without an adapter maps every name to itself."""
    present = set(names)
    plan: dict[str, list[str]] = {}
    for name in names:
        if ".lora_" in name:
            continue
        plain = name.removeprefix(PREFIX)
        if ".base_layer." in plain:
            layer, _, leaf = name.rpartition(".base_layer.")
            plain = plain.replace(".base_layer.", ".")
            a, b = f"{layer}.lora_A.{ADAPTER}.weight", f"{layer}.lora_B.{ADAPTER}.weight"
            if leaf == "weight" and a in present and b in present:
                plan[plain] = [name, a, b]
                continue
        plan[plain] = [name]
    return plan


def plain_tensor(sources: list[torch.Tensor], scale: float) -> torch.Tensor:
    """The tensor an entry of `export_plan` stands for, from its sources' tensors."""
    if len(sources) == 1:
        return sources[0]
    return merged_weight(*sources, scale)


def plain_state(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The plain model's tensors from the wrapped model's (all present, e.g. gathered)."""
    return {
        plain: plain_tensor([tensors[s] for s in sources], scale)
        for plain, sources in export_plan(list(tensors)).items()
    }


def tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """Every further name of a parameter shared under several names (a tied output head) -> its
    first name (the input embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def sync_plan(module: torch.nn.Module) -> dict[str, list[str]]:
    """What a weight sync sends: `export_plan` of the module's parameters, and a tied output head
    again under its own name. vLLM-CPU repacks the head at start-up, after which it no longer
    follows the embedding: a reload that carries only the embedding leaves the engine sampling
    from the old head (it logs `ParallelLMHead: Failed to load weights`)."""
    plan = export_plan([name for name, _ in module.named_parameters()])
    for alias, name in tied_aliases(module).items():
        plan[alias.removeprefix(PREFIX)] = plan[name.removeprefix(PREFIX)]
    return plan


def sync_state(module: torch.nn.Module, scale: float) -> dict[str, torch.Tensor]:
    """The tensors of `sync_plan` (parameters present in full, e.g. gathered)."""
    params = dict(module.named_parameters())
    return {plain: plain_tensor([params[s] for s in sources], scale) for plain, sources in sync_plan(module).items()}


def adapter_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors named as in peft's saved `adapter_model.safetensors` (and as vLLM reads them)."""
    return {
        name.replace(f".{ADAPTER}.", "."): t for name, t in tensors.items() if ".lora_A." in name or ".lora_B." in name
    }


def scale_of(cfg: LoraConfig) -> float:
    return cfg.alpha / cfg.rank


def linear_layer_names(model: torch.nn.Module) -> set[str]:
    """The last name component of every linear layer: what `target_modules` may name."""
    return {name.rpartition(".")[2] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def unknown_targets(cfg: LoraConfig, model: torch.nn.Module) -> list[str]:
    """Target modules that `model` has no linear layer of (empty: all fine)."""
    if cfg.target_modules == ["all-linear"]:
        return []
    have = linear_layer_names(model)
    return [name for name in cfg.target_modules if name not in have]


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    return PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """`model` wrapped with a fresh adapter (B = 0, so it starts as the base). The adapter takes the
    base's dtype (peft would make it fp32 under a bf16 base; ZeRO wants one dtype, and its
    optimizer keeps fp32 master weights anyway)."""
    from peft import get_peft_model

    # A starts random: draw it from a fixed seed, so that every rank and every run start alike.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ADAPTER_SEED)
        return get_peft_model(model, peft_config(cfg), autocast_adapter_dtype=False)


def adapter_parameters(model: torch.nn.Module, cfg: LoraConfig) -> int:
    """How many parameters `attach` adds to `model`: rank x (in + out) for each adapted linear layer
    (`all-linear`: every one but the output head, as peft chooses). Works on the meta device."""
    head = model.get_output_embeddings()
    every = cfg.target_modules == ["all-linear"]
    return sum(
        cfg.rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and module is not head
        and (every or name.rpartition(".")[2] in cfg.target_modules)
    )


def adapter_config(model) -> dict:
    """The adapter's `adapter_config.json`, as peft writes it."""
    config = model.peft_config[ADAPTER].to_dict()
    return {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
