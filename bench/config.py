"""Typed run configuration: dataclass defaults, then YAML, then `dotted.key=value`.

One config system for the whole suite. Every section is a dataclass whose fields
carry a default, help text and (where it matters) the allowed values. A method's
own options are the dataclass `Config` declared in the method's file; the
section `method:` is validated against the class registered under `method.name`,
and `data:` likewise against the dataset registered under `data.name`.

This module is the bottom layer: it imports nothing from bench/ or methods/. The
names of methods, models and datasets are looked up in their registries one layer
up, in bench/configure.py (`build_config`, `load_config`).

Values coming from YAML or the command line are coerced to the field's declared
type; an unknown key, a wrong type, a value outside `choices` or its range, a key
given twice in one mapping, or an `include:` loop raises `ConfigError` with the
key, the allowed values and a "did you mean" suggestion.
Downstream code only ever sees the typed objects.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


def opt(default: Any, help: str, choices: Optional[tuple] = None, range: Optional[str] = None) -> Any:
    """A config field with help text, and optionally its allowed values or its allowed
    range as an interval, e.g. "[1, inf)" or "(0, 1]" (checked when a value is given, so
    that a value out of range fails before any work with one line naming the key)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if range is not None:
        parse_range(range)           # a malformed interval is a programming error: fail at import
        meta["range"] = range
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def parse_range(text: str) -> tuple[bool, float, float, bool]:
    """"[1, inf)" -> (True, 1.0, inf, False): (low closed, low, high, high closed)."""
    m = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", text)
    if not m:
        raise ValueError(f"range {text!r}: write an interval such as '[1, inf)' or '(0, 1]'")
    return m.group(1) == "[", float(m.group(2)), float(m.group(3)), m.group(4) == "]"


def range_rule(text: str) -> str:
    """The interval as words for an error message: '>= 1', '> 0', 'in (0, 1]'."""
    low_closed, low, high, high_closed = parse_range(text)
    if high == math.inf:
        return f"{'>=' if low_closed else '>'} {low:g}"
    if low == -math.inf:
        return f"{'<=' if high_closed else '<'} {high:g}"
    return f"in {text.strip()}"


def check_range(value: Any, text: str, key: str) -> None:
    """ConfigError naming `key` and the allowed range when `value` lies outside `text`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low_closed, low, high, high_closed = parse_range(text)
    inside = (value >= low if low_closed else value > low) and (value <= high if high_closed else value < high)
    if not inside:
        shown = value if isinstance(value, int) else f"{value:g}"     # a huge seed shown whole, not as 1.8e+19
        raise ConfigError(f"{key} must be {range_rule(text)}, got {shown}")


# --------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Options every dataset has. A dataset with options of its own subclasses it
    (its `Config`, like a method's); `data.name` picks the dataset."""
    name: str = opt("cifar10", "registered dataset name; `python -m bench datasets` lists them")
    root: str = opt("", "folder holding the dataset's files, e.g. cifar-10-batches-py/ "
                        "(empty: $BENCH_DATA_ROOT, else ./data)")
    download: bool = opt(False, "download the dataset with torchvision (md5-checked) if the root lacks it")
    train_subset: int = opt(0, "use only the first N training images (0: all)", range="[0, inf)")
    augment: bool = opt(True, "random crop (4-px zero padding) and horizontal flip, on the device")
    # The synthetic dataset's options stay in this shared section, where they have always
    # been, so that the hashes (and run directories) of existing runs stay the same.
    synthetic_train_size: int = opt(2048, "synthetic dataset: number of training images", range="[1, inf)")
    synthetic_test_size: int = opt(512, "synthetic dataset: number of test images", range="[1, inf)")
    image_size: int = opt(32, "synthetic dataset: image side in pixels", range="[1, inf)")


@dataclass
class ModelConfig:
    name: str = opt("vgg11", "model name; `python -m bench models` lists them")
    width: float = opt(1.0, "channel multiplier applied to every layer", range="(0, inf)")
    act: str = opt("relu", "activation", choices=("relu", "leaky_relu"))
    leaky_slope: float = opt(0.01, "negative slope when act=leaky_relu (PyTorch default)", range="[0, inf)")
    num_classes: int = opt(0, "classifier outputs (0: the dataset's class count; another value must match it)",
                           range="[0, inf)")


@dataclass
class TrainConfig:
    epochs: int = opt(8, "total epoch budget, the same for every method", range="[1, inf)")
    batch_size: int = opt(256, "training batch size", range="[1, inf)")
    optimizer: str = opt("sgd", "optimizer", choices=("sgd", "adam"))
    lr: float = opt(0.2, "peak learning rate", range="(0, inf)")
    momentum: float = opt(0.9, "SGD momentum (Adam: beta1)", range="[0, 1)")
    nesterov: bool = opt(True, "Nesterov momentum (SGD only)")
    weight_decay: float = opt(5e-4, "L2 weight decay on every parameter", range="[0, inf)")
    schedule: str = opt("onecycle", "learning-rate schedule", choices=("onecycle", "cosine", "step", "constant"))
    warmup_frac: float = opt(0.25, "onecycle/cosine: fraction of steps spent warming up linearly", range="[0, 1]")
    milestones: list[int] = opt([], "step schedule: epochs at which the LR is multiplied by gamma")
    gamma: float = opt(0.2, "step schedule: LR factor at each milestone", range="(0, inf)")
    label_smoothing: float = opt(0.1, "cross-entropy label smoothing", range="[0, 1)")
    eval_batch_size: int = opt(1000, "evaluation batch size", range="[1, inf)")
    precision: str = opt("auto", "auto: bf16 autocast where the device runs bf16 natively (CUDA with bf16, CPUs "
                         "with AVX512-BF16/AMX), else fp32; bf16 where it is not native is an error",
                         choices=("auto", "bf16", "fp32"))
    memory_format: str = opt("auto", "auto: channels_last on CPUs and CUDA GPUs (measured faster there at fp32 and "
                                     "bf16), contiguous on other devices",
                             choices=("auto", "channels_last", "contiguous"))
    auto_resolves_to: str = opt("", "what precision=auto and memory_format=auto resolve to, as PRECISION/FORMAT "
                                    "(fp32/contiguous, bf16/channels_last, ...); a suite sets it from its finished "
                                    "runs so that runs finished on another machine keep the suite's precision; "
                                    "empty: the device decides")
    compile: bool = opt(False, "torch.compile the model (rebuilt after a method changes it)")
    log_every_steps: int = opt(50, "print a progress line every N steps (0: only per epoch)", range="[0, inf)")
    throughput_steps: int = opt(5, "timings (median and IQR over them) of batch-1 latency, inference and training "
                                   "steps of the final model (0: none; `bench retime` times a suite's rows in one "
                                   "sitting)", range="[0, inf)")


@dataclass
class WandbConfig:
    mode: str = opt("offline", "W&B mode ($WANDB_MODE wins)", choices=("offline", "online", "disabled"))
    project: str = opt("compress-bench", "W&B project")
    entity: str = opt("", "W&B entity (empty: your default)")
    group: str = opt("", "W&B group; suites set it to the suite name")
    job_type: str = opt("train", "W&B job_type")
    tags: list[str] = opt([], "W&B tags")


# Seeds a run takes: torch, numpy and Python all accept them, and so do the seeds derived
# from them (train.py seeds each epoch's data order with seed * 100_003 + epoch, which
# must stay below 2**63).
SEED_RANGE = "[0, 2147483648)"
# What `device` may name (bench.device.resolve_device turns it into a torch device).
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"


def check_device_name(name: Any, key: str = "device") -> str:
    """`name` if it is a device this suite runs on, else a ConfigError saying which are."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise ConfigError(f"{key} '{name}': use auto, cpu, cuda or cuda:N")
    return name


# The control of a run that names none (RunConfig.control, a suite's `control:`).
DEFAULT_CONTROL = "dense"


@dataclass
class RunConfig:
    seed: int = opt(0, "seed for model init, data order, augmentation and the method's randomness",
                    range=SEED_RANGE)
    device: str = opt("auto", "auto (cuda if available), cpu, cuda or cuda:N")
    output_dir: str = opt("results/runs", "where run directories are written")
    label: str = opt("", "name shown in reports and W&B (default: the method name); suites set it")
    control: str = opt("", "label of the run the report compares this one with (default: dense); suites set it")
    comparators: list[str] = opt([], "labels the report also compares this run with at its target (e.g. a small "
                                     "dense model, random pruning); suites set it")
    resume: bool = opt(True, "resume an interrupted run from its last completed epoch")
    save_checkpoint: bool = opt(True, "write the final model to checkpoint.pt")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: Any = field(default=None, metadata={"help": "the method and its options (method.name)"})
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        """A device name torch would reject (or a device this suite does not run on) fails
        here, with the config, rather than as torch's traceback once the run has begun."""
        check_device_name(self.device)


# Keys that change where or how a run is reported, not what it computes: they are
# left out of the run's hash so that the same experiment is found again. The one
# exception, train.auto_resolves_to, pins what `auto` (hashed as "auto") leaves to the machine.
# Where the data lies (data.root, data.download) is left out too: the run's hash holds
# a fingerprint of the data's content instead (see config_hash).
NON_SEMANTIC_KEYS = ("output_dir", "label", "control", "comparators", "resume", "wandb", "train.log_every_steps", "train.throughput_steps",
                     "save_checkpoint", "train.auto_resolves_to", "data.root", "data.download")


# --------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:        # Optional[X]: X's own message, which says what was expected
            raise ConfigError(errors[0] + (" (or null)" if type(None) in args else ""))
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{key}: {value!r} is not a valid {names}" + (" or null" if type(None) in args else ""))
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} (write it as [a, b, ...])")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):      # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
            if value.strip().endswith("%"):
                raise ConfigError(f"{key}: expected a fraction such as 0.5, got {value!r}")
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


# Old option names -> the one vocabulary every method now shares (units in the names).
RENAMED = {"prune_epoch": "transform_epoch", "shrink_epochs": "transform_epochs",
           "calib_images": "calibration_images", "calib_batch": "calibration_batch_size",
           "tolerance": "prune_tol_frac"}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_dataclass(cls: type, raw: dict, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a raw mapping, validating every key and value."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        k = unknown[0]
        if RENAMED.get(k) in fields:
            raise ConfigError(f"config key '{prefix}{k}' was renamed to '{prefix}{RENAMED[k]}'; use that name")
        raise ConfigError(
            f"unknown config key '{prefix}{k}'{_suggest(k, fields)}; "
            f"allowed under '{prefix.rstrip('.') or 'the top level'}': {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        f, key = fields[name], prefix + name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_dataclass(tp, value, key + ".")
            continue
        value = coerce(value, tp, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: '{value}' is not allowed{_suggest(str(value), choices)}; "
                              f"choose one of: {', '.join(map(str, choices))}")
        if "range" in f.metadata:
            check_range(value, f.metadata["range"], key)
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


# --------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=3` -> (['train', 'epochs'], 3). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.epochs=2)")
    key, value = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        parsed = load_yaml_text(value) if value != "" else ""
    except DuplicateKeyError as e:
        raise ConfigError(f"override '{text}': {e}") from None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _is_key(text: str) -> bool:
    """Whether `text` reads as a config key (`train.epochs`, `seed`) rather than a file."""
    head = text.split(".", 1)[0]
    return bool(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text)) and head in {f.name for f in dataclasses.fields(RunConfig)}


def split_args(args: list[str], files_allowed: bool = True) -> tuple[list[str], list[str]]:
    """Command-line words as (config files, key=value overrides), keeping their order.

    A word that names a config key but lacks its `=` (`train.epochs 2`), or carries an
    option's leading dashes (`--train.epochs=2`), is an error that shows the override
    as it should be written, rather than a missing file or an unknown flag."""
    files, overrides = [], []
    for i, arg in enumerate(args):
        bare = arg.lstrip("-")
        if arg.startswith("-") and _is_key(bare.split("=", 1)[0]):
            fixed = bare if "=" in bare else f"{bare}={_value_after(args, i)}"
            raise ConfigError(f"'{arg}': overrides take no leading '-'; did you mean {fixed}?")
        if "=" in arg:
            overrides.append(arg)
        elif _is_key(arg) and not Path(arg).exists():
            raise ConfigError(f"'{arg}' is neither a config file nor a key=value override; "
                              f"did you mean {arg}={_value_after(args, i)}?")
        elif not files_allowed:
            raise ConfigError(f"override '{arg}' must look like key=value (e.g. train.epochs=2)")
        else:
            files.append(arg)
    return files, overrides


def _value_after(args: list[str], i: int) -> str:
    nxt = args[i + 1] if i + 1 < len(args) else ""
    return nxt if nxt and "=" not in nxt and not nxt.startswith("-") and not nxt.endswith((".yaml", ".yml")) else "VALUE"


# --------------------------------------------------------------------------- command-line values
# argparse type functions: a bad value is argparse's one-line error naming the option,
# before anything runs (an int option takes any integer, a lambda is reported as
# "invalid <lambda> value").
def whole_number(low: int) -> Any:
    """An argparse type: an integer >= `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a significance level)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 such as 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def seed_list(text: str) -> list[int]:
    """An argparse type: seeds separated by commas, e.g. `0,1,2`."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds separated by commas, e.g. 0,1,2; got {text!r}") from None
    for seed in seeds:
        try:
            check_range(seed, SEED_RANGE, "a seed")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return seeds


def label_list(text: str) -> list[str]:
    """An argparse type: row labels separated by commas, e.g. `dense,pcn`."""
    labels = text.split(",")
    if not all(label.strip() for label in labels):
        raise argparse.ArgumentTypeError(f"expected row labels separated by commas, e.g. dense,pcn; got {text!r}")
    return [label.strip() for label in labels]


def device_name(text: str) -> str:
    """An argparse type: a device name as `device` takes it (check_device_name)."""
    try:
        return check_device_name(text, "")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).lstrip()) from None


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that holds one key twice (YAML would silently keep the last one)."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"key '{key}' appears twice (lines {first_line} and {second_line}); keep one of them")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader (plain data only: no Python tags), except that a mapping holding
    one key twice is an error: a second `train:` would otherwise silently replace the
    first, and with it every setting the first one held. Keys brought in by a merge key
    (`<<: *anchor`) may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = lines.get(key)
                except TypeError:          # an unhashable key: the safe loader's own error follows
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, first, line)
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """YAML text as plain data (safe loading), refusing duplicate keys (UniqueKeyLoader)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line and column of the file) and what."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(e, "problem", None) or e).split())


def read_yaml(path: str | os.PathLike) -> dict:
    """A config or suite file as a mapping (safe loading; a key given twice is an error)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist; configs live under configs/ "
                          f"(e.g. configs/smoke.yaml)")
    try:
        raw = load_yaml_text(p.read_text()) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"config file '{path}': {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {yaml_problem(e)}; fix it there (a config is "
                          f"plain data: mappings, lists, text and numbers; no !!python tags)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    return raw


def raw_from_sources(paths: list[str], overrides: list[str]) -> dict:
    """Merge YAML files (left to right, each may `include:` others) and overrides."""
    raw: dict = {}
    for path in paths:
        raw = merge(raw, _read_with_includes(path))
    for text in overrides:
        keys, value = parse_override(text)
        d = raw
        for k in keys[:-1]:
            nxt = d.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                d[k] = nxt
            d = nxt
        d[keys[-1]] = value
    return raw


def _read_with_includes(path: str, chain: tuple[tuple[Path, str], ...] = ()) -> dict:
    """`include: other.yaml` (or a list) is read first, relative to this file; this file wins.

    `chain` holds the files that include this one, outermost first: a file met again on
    its own chain would include itself forever, and is an error naming the loop."""
    here = Path(path).resolve()
    seen = [resolved for resolved, _ in chain]
    if here in seen:
        loop = [shown for _, shown in chain[seen.index(here) + 1:]]
        how = f"via {' -> '.join(loop)}; remove one of these includes" if loop else "directly; remove that include"
        raise ConfigError(f"config file '{path}' includes itself {how}")
    raw = read_yaml(path)
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(inc, str) and inc for inc in includes):
        raise ConfigError(f"config file '{path}': include: expected a file name or a list of file names "
                          f"(relative to this file), got {includes!r}")
    base: dict = {}
    for inc in includes:
        target = Path(path).parent / inc
        if not target.is_file():
            raise ConfigError(f"config file '{path}' includes '{inc}', which does not exist at '{target}' "
                              f"(include paths are relative to the including file)")
        base = merge(base, _read_with_includes(str(target), chain + ((here, str(path)),)))
    return merge(base, raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_hash(cfg: RunConfig, data_fingerprint: str) -> str:
    """Hash of what a run computes (not where it is written or logged): the semantic keys
    of its config and the fingerprint of its data's content (not the data's path), so the
    same data at any path is the same run and different data is a different run."""
    flat = flatten(to_dict(cfg))
    kept = {k: v for k, v in flat.items()
            if not any(k == n or k.startswith(n + ".") for n in NON_SEMANTIC_KEYS)}
    kept["data.fingerprint"] = data_fingerprint
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for `python -m bench methods -v` and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        rows.append((prefix + f.name, repr(default), f.metadata.get("help", "")))
    return rows
