"""Configuration: defaults, overrides, and refusals that name the key and the allowed values."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO
from training.config import ConfigError, describe_keys, load_config


def test_shipped_detection_config_loads():
    cfg = load_config(REPO / "configs" / "detection.yaml")
    assert cfg.task == "detection"
    assert cfg.access.pattern == "shards"
    assert cfg.model.arch == "fasterrcnn_mobilenet_v3_large_320_fpn"


def test_overrides_are_typed_and_win_over_the_file():
    cfg = load_config(
        REPO / "configs" / "detection.yaml",
        [
            "train.epochs=7",
            "train.lr=5e-4",
            "dataset.limit=20",
            "access.pattern=random",
            "loader.pin_memory=true",
        ],
    )
    assert (cfg.train.epochs, cfg.train.lr, cfg.dataset.limit) == (7, 5e-4, 20)
    assert cfg.access.pattern == "random" and cfg.loader.pin_memory is True


def test_empty_override_means_null_where_allowed():
    assert load_config(None, ["dataset.limit="]).dataset.limit is None


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"^unknown key train\.epoch; allowed keys in train: epochs, lr, "
    ):
        load_config(path)


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"^unknown key trainer; allowed keys: task, storage, "):
        load_config(None, ["trainer.epochs=3"])


def test_invalid_choice_lists_the_allowed_values():
    with pytest.raises(
        ConfigError,
        match=r"^access\.pattern must be one of random, shards, objects; got 'sideways'$",
    ):
        load_config(None, ["access.pattern=sideways"])


def test_wrong_type_and_range_are_refused():
    with pytest.raises(ConfigError, match=r"^train\.epochs must be int, got 'many'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"^loader\.batch_size must be >= 1; got 0$"):
        load_config(None, ["loader.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^train\.epochs must be int, got True"):
        load_config(None, ["train.epochs=true"])


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^config file {path} is not valid YAML"):
        load_config(path)


def test_every_key_has_a_description():
    rows = describe_keys()
    assert len(rows) > 20
    assert all(help_text for _, _, help_text in rows)
    assert ("access.pattern" in [k for k, _, _ in rows]) and (
        "train.epochs" in [k for k, _, _ in rows]
    )


def test_data_paths_with_backslashes_and_both_quotes_survive_the_overrides(tmp_path):
    """``--data`` paths became YAML through ``repr``, which is no YAML for a path holding a
    backslash and both quote kinds."""
    import argparse

    from cli.args import config_from_args

    odd = tmp_path / 'it\'s a "dataset" \\ here'
    second = tmp_path / "plain"
    for data in (str(odd), f"{odd},{second}"):
        args = argparse.Namespace(config=None, set=[], data=data, s3_prefix=None)
        cfg = config_from_args(args)
        roots = [os.path.join(cfg.storage.root, p) for p in cfg.storage.prefixes]
        assert [os.path.normpath(r) for r in roots] == [
            os.path.normpath(p) for p in data.split(",")
        ]
    args = argparse.Namespace(config=None, set=[], s3_prefix='a\\b,"c",it\'s', data=None)
    assert config_from_args(args).storage.prefixes == ["a\\b", '"c"', "it's"]


def test_string_flags_stay_strings_whatever_yaml_would_make_of_them():
    import argparse

    from cli.args import config_from_args

    args = argparse.Namespace(
        config=None, set=[], data=None, s3_prefix=None, out="runs #2", s3_bucket="123",
        s3_endpoint="http://10.0.0.1:9000",
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.output.dir == "runs #2" and cfg.storage.bucket == "123"
    args = argparse.Namespace(config=None, set=[], data="s3://2024-01-01/p", s3_prefix=None)
    assert config_from_args(args).storage.bucket == "2024-01-01"


@pytest.mark.parametrize("where", ["override", "file"])
def test_sequential_is_the_shards_pattern_without_a_notice(where, tmp_path, caplog):
    from bench.loading.config import BenchConfig
    from bench.sweep.config import SweepConfig

    if where == "override":
        overrides = ["access.pattern=sequential", "bench.access=[sequential]"]
        cfg = load_config(None, overrides, BenchConfig)
        assert cfg.bench.access == ["shards"]
    else:
        path = tmp_path / "mine.yaml"
        path.write_text("access:\n  pattern: sequential\nsweep:\n  access: [random, sequential]\n")
        cfg = load_config(path, command=SweepConfig)
        assert cfg.sweep.access == ["random", "shards"]
    assert cfg.access.pattern == "shards"
    assert not caplog.records  # the user's own word: no deprecation, no warning


@pytest.mark.parametrize("old", ["access.mode=random", "access.sequential_source=objects"])
def test_an_access_key_of_an_earlier_version_names_the_key_that_replaced_it(old, tmp_path):
    with pytest.raises(ConfigError, match=r"^access\.\w+ was replaced by access\.pattern: "):
        load_config(None, [old])
    path = tmp_path / "old.yaml"
    path.write_text("access:\n  mode: sequential\n  sequential_source: objects\n")
    with pytest.raises(ConfigError, match="access.mode was replaced by access.pattern"):
        load_config(path)


def test_every_key_is_listed_for_the_user(capsys):
    from scripts.train import main

    with pytest.raises(SystemExit) as done:
        main(["--keys"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "access.pattern = 'shards'" in out and "loader.batch_size = 4" in out
    assert out.count("\n    ") == len(describe_keys())
    assert "bench." not in out and "sweep." not in out and "checkpoint." not in out


#: Each command with a configuration, and a key only its own configuration has (None: the
#: shared sections only).
SCRIPTS_WITH_CONFIG = {
    "bench": "bench.sync = 'step'", "sweep": "sweep.max_accelerators = 'auto'",
    "checkpoint_bench": "checkpoint.size_gb = 1.0", "bench_shards": None, "predict": None,
    "train": None, "write_shards": None,
}  # fmt: skip
SCRIPTS_WITHOUT = ("archive", "bench_memory", "make_crops", "s3_local", "serve", "serve_bench",
                   "synth")  # fmt: skip
OWN_SECTIONS = ("bench.", "sweep.", "checkpoint.")


@pytest.mark.parametrize("name", [*SCRIPTS_WITH_CONFIG, *SCRIPTS_WITHOUT])
def test_every_script_answers_keys(name, capsys):
    import importlib

    main = importlib.import_module(f"scripts.{name}").main
    with pytest.raises(SystemExit) as done:
        main(["--keys"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    if name not in SCRIPTS_WITH_CONFIG:
        assert "reads no configuration file" in out
        return
    assert "access.pattern = 'shards'" in out
    own = SCRIPTS_WITH_CONFIG[name]
    others = [s for s in OWN_SECTIONS if own is None or not own.startswith(s)]
    assert own is None or own in out
    assert not [line for line in out.splitlines() if line.startswith(tuple(others))]


def test_a_file_may_hold_every_commands_sections_and_each_reads_its_own(tmp_path):
    from bench.loading.config import BenchConfig

    path = tmp_path / "all.yaml"
    path.write_text("train:\n  epochs: 2\nbench:\n  repeats: 5\nsweep:\n  steps: 7\n")
    assert load_config(path).train.epochs == 2  # make train leaves bench and sweep out
    assert not hasattr(load_config(path), "bench")
    assert load_config(path, command=BenchConfig).bench.repeats == 5
    with pytest.raises(ConfigError, match=r"^bench\.repeats is read by make bench, not here$"):
        load_config(None, ["bench.repeats=2"])


def test_a_list_key_names_its_wrong_item_and_a_repeated_one():
    from bench.loading.config import BenchConfig

    with pytest.raises(ConfigError, match=r"^bench\.access: 'sideways' is not one of random, "):
        load_config(None, ["bench.access=[random, sideways]"], BenchConfig)
    with pytest.raises(ConfigError, match=r"^bench\.worker_counts: -1 must be >= 0$"):
        load_config(None, ["bench.worker_counts=[2, -1]"], BenchConfig)
    with pytest.raises(ConfigError, match=r"^bench\.ranks lists an item twice: \[1, 1\]$"):
        load_config(None, ["bench.ranks=[1, 1]"], BenchConfig)
    with pytest.raises(ConfigError, match=r"^bench\.ranks must be a list of ints; got 'x'$"):
        load_config(None, ["bench.ranks=x"], BenchConfig)
    with pytest.raises(ConfigError, match=r"^dataset\.classes must be a list of names; got"):
        load_config(None, ["dataset.classes=[a, '']"])
    assert load_config(None, ["dataset.split_ratios=[0.8, 0.1, 0.1]"]).dataset.split_ratios == [
        0.8, 0.1, 0.1]  # fmt: skip


def test_a_value_that_may_be_auto_says_so():
    from bench.sweep.config import SweepConfig

    with pytest.raises(ConfigError, match=r"^sweep\.max_accelerators must be int or auto, got 'x'"):
        load_config(None, ["sweep.max_accelerators=x"], SweepConfig)
    with pytest.raises(ConfigError, match=r"^sweep\.max_accelerators must be >= 1; got 0$"):
        load_config(None, ["sweep.max_accelerators=0"], SweepConfig)
    assert load_config(None, ["sweep.max_accelerators=4"], SweepConfig).sweep.max_accelerators == 4


def test_a_section_must_be_a_mapping_and_a_required_value_set():
    with pytest.raises(ConfigError, match=r"^train must be a mapping, got 3$"):
        load_config(None, ["train=3"])
    with pytest.raises(ConfigError, match=r"^train\.epochs must be set \(training epochs\)$"):
        load_config(None, ["train.epochs="])


def test_the_configuration_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.train.epochs = 3
