import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from cluster.typed_config import ConfigError, describe, load_config, option, parse_override, reference, section, to_dict
from launch.job_config import JobConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_field_has_help():
    text = describe(JobConfig)
    for line in text.splitlines():
        assert "#" in line and line.split("#", 1)[1].strip(), f"no help for: {line}"


def test_yaml_and_overrides_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"grpo": {"group_size": 4}, "run": {"seed": 3}}))
    cfg = load_config(
        JobConfig, path, ["grpo.clip_low=1e-1", "grpo.scale_advantages_by_std=false", "data.train=foo.jsonl"]
    )
    assert cfg.grpo.group_size == 4 and cfg.run.seed == 3
    assert cfg.grpo.clip_low == pytest.approx(0.1)
    assert cfg.grpo.scale_advantages_by_std is False
    assert cfg.data.train == "foo.jsonl"
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(JobConfig, dumped) == cfg


def test_shipped_configs_load():
    for name in ("smollm2-gsm8k", "smollm2-gsm8k-long", "tiny", "qwen2.5-3b-paper"):
        load_config(JobConfig, f"launch/configs/{name}.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.clip_lowww=0.1", "unknown config key 'grpo.clip_lowww'"),
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("grpo.group_size=four", "config key 'grpo.group_size' must be int"),
        ("grpo.group_size=true", "config key 'grpo.group_size' must be int"),
        ("grpo.loss_aggregation=median", "config key 'grpo.loss_aggregation' must be one of"),
        ("grpo=3", "config section 'grpo' must be a mapping"),
        ("rewards.stage2=nope", "stage2 reward 'nope' is not registered"),
        ("learner.pad_to_multiple=0", "config key 'learner.pad_to_multiple' must be at least 1"),
        ("learner.sft_warmup_steps=-2", "config key 'learner.sft_warmup_steps' must be at least 0"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(JobConfig, None, [override])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("grpo.group_size")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(JobConfig, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(JobConfig, bad)


@dataclass
class _Inner:
    mode: Literal["a", "b"] = option("a", "Mode a or b.")
    sizes: list[int] = option([1, 2], "Sizes | pipes are escaped.")


@dataclass
class _Outer:
    name: str = option("x", "Folder <output_dir>/<name>.")
    limit: int | None = option(None, "A limit, or none.")
    inner: _Inner = section(_Inner, "The inner section.")


def test_reference_tables_by_hand():
    assert reference(_Outer) == (
        "| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
        "| `name` | str | `'x'` | Folder \\<output_dir>/\\<name>. |\n"
        "| `limit` | int or None | `None` | A limit, or none. |\n\n"
        "### `inner`\n\nThe inner section.\n\n"
        "| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
        "| `inner.mode` | 'a' or 'b' | `'a'` | Mode a or b. |\n"
        "| `inner.sizes` | list[int] | `[1, 2]` | Sizes \\| pipes are escaped. |"
    )


def test_configuration_reference_is_current():
    from launch.config_reference import PAGE, page

    assert PAGE.read_text() == page(), "docs/configuration.md is stale: run python -m launch.config_reference"


def test_no_package_imports_the_layers_above_it():
    """launch/ (entry points) and benchmarks/ sit on top: no role package may import them."""
    offenders = []
    for package in ("cluster", "curriculum", "learner", "rollout"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [
                    f"{path.relative_to(ROOT)}: {name}"
                    for name in names
                    if name.split(".")[0] in ("launch", "benchmarks")
                ]
    assert not offenders
