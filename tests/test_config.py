"""The config loader: YAML + --set overrides; errors name the key, the origin and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairuni.config import (
    ConfigError,
    PairUniConfig,
    load_config,
    parse_override,
    render_config_docs,
)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_papers() -> None:
    cfg = load_config()
    assert isinstance(cfg, PairUniConfig)
    assert cfg.algo.beta == 0.0
    assert cfg.algo.pair_weighting == "sqrt"
    assert (cfg.algo.und_loss_weight, cfg.algo.gen_loss_weight) == (1.0, 1.0)


def test_file_then_overrides_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 3\nalgo:\n  num_generations_und: 4\n  beta: 0.1\n")
    cfg = load_config(path, ["algo.beta=0.02", "algo.beta=0.04", "algo.dual_clip=3"])
    assert cfg.seed == 3
    assert cfg.algo.num_generations_und == 4
    assert cfg.algo.beta == pytest.approx(0.04)
    assert cfg.algo.dual_clip == 3.0


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("algo.beta=0.5", ("algo.beta", 0.5)),
        ("seed=7", ("seed", 7)),
        ("algo.dual_clip=null", ("algo.dual_clip", None)),
        ("a.b=[1, 2]", ("a.b", [1, 2])),
        ("a.b=hello world", ("a.b", "hello world")),
        ("a.b=", ("a.b", "")),
    ],
)
def test_parse_override_reads_yaml_values(item: str, expected: tuple) -> None:
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["algo.beta", "=3", "algo..beta=1"])
def test_malformed_override_says_how(item: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(item)


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "algo:\n  num_generatons_und: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "algo.num_generatons_und" in message
    assert "did you mean 'num_generations_und'" in message


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alg: unknown key; did you mean 'algo'"):
        load_config(write(tmp_path, "alg: {}\n"))


def test_wrong_type_from_set_names_set_and_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path, "algo:\n  beta: 0.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["algo.num_generations_und=eight"])
    message = str(info.value)
    assert "--set: algo.num_generations_und" in message
    assert "'eight'" in message
    assert "Expected int" in message
    assert str(path) not in message.splitlines()[1]


def test_out_of_range_and_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algo.num_generations_gen=1", "algo.pair_weighting=cube"])
    message = str(info.value)
    assert "2 problems" in message
    assert "greater than or equal to 2" in message
    assert "`none` | `linear` | `sqrt`" in message


def test_impossible_combination_names_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["algo.und_loss_weight=0", "algo.gen_loss_weight=0"])
    assert "with --set: algo: und_loss_weight and gen_loss_weight are both 0" in str(info.value)
    assert "set at least one of them above 0" in str(info.value)


def test_override_through_a_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        load_config(write(tmp_path, "seed: 3\n"), ["seed.x=1"])
    with pytest.raises(ConfigError, match="with --set: seed: Input should be a valid integer"):
        load_config(None, ["seed.x=1"])


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(write(tmp_path, "algo:\n  beta: [1, 2\n"))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/file.yaml")


def test_every_field_is_documented() -> None:
    """A field without a docstring would render as an empty line in docs/config.md."""

    def walk(model: type, prefix: str) -> list[str]:
        missing = []
        for name, info in model.model_fields.items():
            if not (info.description or "").strip():
                missing.append(prefix + name)
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation, f"{prefix}{name}.")
        return missing

    assert walk(PairUniConfig, "") == []


def test_docs_config_md_is_in_sync() -> None:
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render_config_docs(), (
        "docs/config.md is out of date: run `pairuni config docs --out docs/config.md`"
    )


def test_shipped_configs_load() -> None:
    configs = sorted((REPO / "configs").glob("*.yaml"))
    for path in configs:
        load_config(path)


def test_error_inside_a_list_of_records_names_index_and_origin() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rewards.understanding=[{nme: mc_accuracy}]"])
    message = str(info.value)
    assert "--set: rewards.understanding.0.nme: unknown key; did you mean 'name'?" in message
    assert "--set: rewards.understanding.0.name: Field required" in message


def test_docs_document_the_keys_of_list_items() -> None:
    assert "`rewards.understanding[].weight`" in render_config_docs()
