"""Config system: defaults -> YAML -> overrides, typed, and loud about mistakes."""
from __future__ import annotations

import pytest

from bench.config import ConfigError, config_hash, parse_override
from bench.configure import load_config


def test_overrides_are_coerced_to_field_types():
    cfg = load_config("configs/smoke.yaml", ["train.epochs=5", "train.lr=1e-3", "train.milestones=[2, 4]",
                                             "data.augment=false", "model.width=0.25"])
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)   # YAML 1.1 reads 1e-3 as a string
    assert cfg.train.milestones == [2, 4]
    assert cfg.data.augment is False
    assert cfg.model.width == 0.25


def test_yaml_values_win_over_defaults_and_overrides_over_yaml():
    cfg = load_config("configs/smoke.yaml")
    assert cfg.model.width == 0.125 and cfg.data.name == "synthetic"
    assert load_config("configs/smoke.yaml", ["model.width=0.5"]).model.width == 0.5


def test_include_is_resolved_relative_to_the_file():
    cfg = load_config("configs/quick-resnet.yaml")
    assert cfg.model.name == "resnet20" and cfg.train.lr == 0.2 and cfg.train.epochs == 8


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    ("trian.epochs=3", "unknown config key 'trian'"),
    ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
    ("train.nesterov=maybe", "train.nesterov: expected true or false"),
    ("train.schedule=cosin", "train.schedule: 'cosin' is not allowed (did you mean 'cosine'?)"),
    ("model.name=vgg17", "unknown model 'vgg17'"),
    ("method.name=pcnn", "unknown method 'pcnn'"),
    ("data.name=cifar-10", "unknown dataset 'cifar-10' (did you mean 'cifar10'?)"),
    ("model.num_classes=-1", "model.num_classes must be >= 0"),
    ("method.no_such_option=1", "unknown config key 'method.no_such_option'"),
    ("train.epochs", "must look like key=value"),
])
def test_bad_input_names_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", [override])
    assert message in str(e.value)


def test_missing_config_file_is_a_config_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_hash_ignores_where_a_run_is_written_but_not_what_it_computes():
    a = load_config("configs/smoke.yaml")
    h = lambda cfg, fp="f" * 16: config_hash(cfg, fp)
    assert h(a) == h(load_config("configs/smoke.yaml", ["output_dir=elsewhere", "wandb.mode=offline",
                                                        "data.root=/somewhere/else"]))
    assert h(a) != h(load_config("configs/smoke.yaml", ["seed=1"]))
    assert h(a) != h(load_config("configs/smoke.yaml", ["train.lr=0.1"]))
    assert h(a) != h(a, "0" * 16)            # other data: another run


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[x, y]") == (["a"], ["x", "y"])


def test_several_config_files_merge_left_to_right_then_overrides():
    cfg = load_config(["configs/smoke.yaml", "configs/methods/pcn-target50.yaml"], ["method.target_params=0.25"])
    assert cfg.data.name == "synthetic"                       # from the recipe
    assert cfg.method.name == "pcn" and cfg.method.layers == "all"   # from the method file
    assert cfg.method.target_params == 0.25                   # the override wins


def test_the_cli_takes_several_config_files(tmp_path):
    from bench.__main__ import main
    rc = main(["run", "configs/smoke.yaml", "configs/methods/pcn-target50.yaml", "method.calibration_images=256",
               "train.epochs=1", "data.synthetic_train_size=256", f"output_dir={tmp_path}", "save_checkpoint=false"])
    assert rc == 0
    (summary,) = tmp_path.glob("*/summary.json")
    assert summary.parent.name.startswith("pcn-vgg11")


def test_a_renamed_option_names_its_new_name():
    with pytest.raises(ConfigError, match="'method.prune_epoch' was renamed to 'method.transform_epoch'"):
        load_config("configs/smoke.yaml", ["method.name=l1_filter", "method.prune_epoch=1"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),
    ("train.momentum=1", "train.momentum must be in [0, 1), got 1"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1, got 0"),
    ("data.synthetic_train_size=0", "data.synthetic_train_size must be >= 1, got 0"),
    ("method.target_params=50%", "expected a fraction such as 0.5, got '50%'"),
])
def test_ranges_and_percentages_are_checked_where_the_value_is_given(override, message):
    extra = ["method.name=pcn"] if override.startswith("method.target") else []
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", extra + [override])
    assert message in str(e.value)


def test_a_range_is_an_interval_and_a_malformed_one_fails_at_declaration():
    from bench.config import check_range, opt, range_rule
    assert range_rule("[1, inf)") == ">= 1" and range_rule("(0, inf)") == "> 0" and range_rule("(0, 1]") == "in (0, 1]"
    check_range(1, "[1, inf)", "k")
    check_range(None, "[1, inf)", "k")                   # an optional left unset
    with pytest.raises(ConfigError, match="k must be in \\(0, 1\\], got 0"):
        check_range(0.0, "(0, 1]", "k")
    with pytest.raises(ValueError, match="write an interval"):
        opt(1, "help", range="1..5")


def test_command_line_words_split_into_files_and_overrides_with_hints():
    from bench.config import split_args
    assert split_args(["configs/smoke.yaml", "train.epochs=2", "seed=1"]) == (["configs/smoke.yaml"],
                                                                              ["train.epochs=2", "seed=1"])
    with pytest.raises(ConfigError, match="did you mean seed=3\\?"):
        split_args(["configs/smoke.yaml", "seed", "3"])
    with pytest.raises(ConfigError, match="did you mean train.epochs=VALUE\\?"):
        split_args(["configs/smoke.yaml", "train.epochs"])
    with pytest.raises(ConfigError, match="overrides take no leading '-'; did you mean model.width=0.5\\?"):
        split_args(["--model.width", "0.5"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        split_args(["configs/smoke.yaml"], files_allowed=False)


def test_an_optional_value_of_the_wrong_type_says_what_was_expected():
    with pytest.raises(ConfigError, match="method.transform_epoch: expected an integer, got 'soon' \\(or null\\)"):
        load_config("configs/smoke.yaml", ["method.name=pcn", "method.transform_epoch=soon"])
