"""Reading the files runs and suites leave behind (summary.json, env.json, history.csv,
suite.json, retime.json) as data that has been checked, never trusted.

A results folder may come from someone else, or be damaged (a disk filled mid-copy, a
hand edit). Every reader of these files goes through here, so that a file which is not
what the harness writes gives one error line, naming the file, what is wrong with it and
what to do, and never a traceback or a silently wrong table (a NaN accuracy dropped
from a mean, a string where a number goes). A file is refused before it is read when it
is not a regular file (a device such as /dev/zero, a fifo, a folder, a link to a file
outside its own folder) or is larger than its cap; it must be UTF-8 text; JSON must hold
a mapping whose keys have the types the readers rely on. Nothing in these files is ever
executed: JSON and CSV are parsed as data.

The error is a RecordError, a ConfigError: the command line prints it as one line
(`error: ...`) and exits non-zero.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.config import SEED_RANGE, ConfigError, load_yaml_text, parse_range, range_rule, yaml_problem

# Caps on what is read. The largest files the harness writes are far below them (a summary
# is tens of KiB, retime.json of a 132-run suite a few hundred KiB, a history one row per
# epoch); a cap only keeps a crafted or runaway file from being read into memory whole.
JSON_CAP = 16 * 2**20
HISTORY_CAP = 64 * 2**20       # history.csv: one row per epoch, maybe hundreds of columns

FIX_RUN = ("move the run folder aside (its suite then runs it again), or retrain it in place with "
           "`python -m bench run ... --rerun`")
FIX_SUITE = "re-create it by running the suite again (`python -m bench suite <suite file>`)"
FIX_LINK = "put the run folder itself there (a results folder holds its own runs), or remove the link"
STATUSES = ("finished", "diverged")


class RecordError(ConfigError):
    """A results file that cannot be used as it is: the message names the file, the problem
    and the fix, on one line."""


# --------------------------------------------------------------------------- what a value may be
@dataclass(frozen=True)
class Number:
    """An int or a float (not a bool); finite unless `finite` is False."""
    finite: bool = True


NUMBER, ANY_NUMBER = Number(), Number(finite=False)


@dataclass(frozen=True)
class ListOf:
    """A list whose every item fits `item`."""
    item: Any


@dataclass(frozen=True)
class MapOf:
    """A mapping whose every value fits `value` (its keys are text, as in any JSON object)."""
    value: Any


@dataclass(frozen=True)
class Record:
    """A mapping: `required` keys must be there, `optional` ones may be; each fits its spec.
    Other keys are not checked (the readers do not use them)."""
    required: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Within:
    """A value that fits `spec` and lies in the interval `range`, written as a config
    option's range is ("[0, 1]", "(0, 1]", "[1, inf)"; bench.config.parse_range): a value
    of the right type can still be one no run writes (an accuracy of -3, a seed of -1)."""
    spec: Any
    range: str

    def __post_init__(self) -> None:
        parse_range(self.range)      # a malformed interval is a programming error: fail at import

    def holds(self, value: Any) -> bool:
        low_closed, low, high, high_closed = parse_range(self.range)
        return ((value >= low if low_closed else value > low)          # an int of any size compares exactly
                and (value <= high if high_closed else value < high))


# A spec is a type (str, int, bool, dict, list), None (null), Number, ListOf, MapOf, Record,
# Within, or a tuple of specs (any one of them).


def _name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_name(s) for s in spec)
    if isinstance(spec, Within):
        return _name(spec.spec)
    if spec is None:
        return "null"
    if isinstance(spec, Number):
        return "a finite number" if spec.finite else "a number"
    if isinstance(spec, ListOf) or spec is list:
        return "a list"
    if isinstance(spec, (Record, MapOf)) or spec is dict:
        return "a mapping"
    return {str: "text", int: "an integer", bool: "true or false"}.get(spec, getattr(spec, "__name__", str(spec)))


def show(value: Any) -> str:
    """A value as an error message shows it: short, on one line."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(value: int | float) -> bool:
    """math.isfinite, where an int too large for a float (JSON allows 400 digits) is not finite."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _fits(value: Any, spec: Any) -> bool:
    """Whether `value` is of the kind `spec` names (its items and range are checked by `problem`)."""
    if isinstance(spec, tuple):
        return any(_fits(value, s) for s in spec)
    if isinstance(spec, Within):
        return _fits(value, spec.spec)
    if spec is None:
        return value is None
    if isinstance(spec, Number):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (not spec.finite or _finite(value)))
    if isinstance(spec, ListOf):
        return isinstance(value, list)
    if isinstance(spec, (Record, MapOf)):
        return isinstance(value, dict)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec)


def problem(value: Any, spec: Any, where: str = "") -> Optional[str]:
    """Why `value` does not fit `spec` (None when it does); `where` is its key path."""
    if not _fits(value, spec):
        what = f"{where} is {show(value)}" if where else f"it holds {show(value)}"
        return f"{what}, not {_name(spec)}"
    alternatives = spec if isinstance(spec, tuple) else (spec,)
    spec = next(s for s in alternatives if _fits(value, s))
    if isinstance(spec, Within):
        if not spec.holds(value):
            return f"{where or 'it'} is {show(value)}, not {range_rule(spec.range)}"
        spec = spec.spec
    if isinstance(spec, ListOf):
        for i, item in enumerate(value):
            if (p := problem(item, spec.item, f"{where}[{i}]")) is not None:
                return p
    elif isinstance(spec, MapOf):
        for key, item in value.items():
            if (p := problem(item, spec.value, f"{where}.{key}" if where else key)) is not None:
                return p
    elif isinstance(spec, Record):
        for key, sub in (*spec.required.items(), *spec.optional.items()):
            at = f"{where}.{key}" if where else key
            if key not in value:
                if key in spec.required:
                    return f"no {at}"
            elif (p := problem(value[key], sub, at)) is not None:
                return p
    return None


# --------------------------------------------------------------------------- reading
_CONTROL = ({c: f"\\x{c:02x}" for c in (*range(32), 0x7f, 0x85)} | {c: f"\\u{c:04x}" for c in (0x2028, 0x2029)}
            | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def refuse(path: str | os.PathLike, what: str, why: str, fix: str) -> RecordError:
    """The error for a file `path` holding a `what` that cannot be used: one line, whatever
    the file's name or keys hold (control characters are escaped)."""
    return RecordError(f"{path}: unreadable {what} ({why}); {fix}".translate(_CONTROL))


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a fifo" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")


def read_text(path: str | os.PathLike, what: str, fix: str, cap: int = JSON_CAP) -> str:
    """The UTF-8 text of the regular file `path`, at most `cap` bytes. Refused without
    reading: a device, fifo, socket or folder; a link whose target is outside the link's
    own folder (a run's files are its own); a file over the cap."""
    p = Path(path)
    try:
        if p.is_symlink():
            target, home = p.resolve(strict=True), p.parent.resolve()
            if home not in target.parents:
                raise refuse(p, what, f"a link to {target}, outside its folder", fix)
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(p, what, f"{_kind(st.st_mode)}, not a regular file", fix)
        if st.st_size > cap:
            raise refuse(p, what, f"{st.st_size:,} bytes, over the {cap:,}-byte cap", fix)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))   # a fifo swapped in since: no wait
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise refuse(p, what, "not a regular file", fix)
            data = f.read(cap + 1)
    except FileNotFoundError:
        raise refuse(p, what, "missing, or a link to a missing file", fix) from None
    except (OSError, RuntimeError) as e:            # RuntimeError: a loop of links (Python < 3.13)
        raise refuse(p, what, f"cannot be read: {getattr(e, 'strerror', None) or e}", fix) from None
    if len(data) > cap:
        raise refuse(p, what, f"over the {cap:,}-byte cap", fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise refuse(p, what, f"not UTF-8 text: byte {e.start}", fix) from None


def check(obj: Any, spec: Any, path: str | os.PathLike, what: str, fix: str) -> Any:
    """`obj` (read from `path`) when it fits `spec`, else the one-line RecordError."""
    if (p := problem(obj, spec)) is not None:
        raise refuse(path, what, p, fix)
    return obj


def read_json_record(path: str | os.PathLike, what: str, fix: str, spec: Any = None,
                     cap: int = JSON_CAP) -> dict:
    """The JSON mapping in `path` (read by read_text), checked against `spec` (a Record;
    None: any mapping). `what` names the file's role in the error ("summary", "suite
    record"), `fix` says what to do about it."""
    text = read_text(path, what, fix, cap)
    if not text.strip():
        raise refuse(path, what, "empty", fix)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise refuse(path, what, f"not JSON: {' '.join(str(e).split())[:120] or type(e).__name__}", fix) from None
    if not isinstance(obj, dict):
        raise refuse(path, what, f"not a JSON object: {show(obj)}", fix)
    return check(obj, spec if spec is not None else Record(), path, what, fix)


def read_yaml_record(path: str | os.PathLike, what: str, fix: str) -> dict:
    """The YAML mapping in `path` (read by read_text; bench.config.load_yaml_text builds
    plain data only and refuses a key given twice)."""
    import yaml
    try:
        obj = load_yaml_text(read_text(path, what, fix))
    except yaml.YAMLError as e:
        raise refuse(path, what, f"not YAML ({yaml_problem(e)})", fix) from None
    if not isinstance(obj, dict):
        raise refuse(path, what, f"not a mapping: {show(obj)}", fix)
    return obj


# --------------------------------------------------------------------------- the harness's files
_TEXT = (str, None)
# The ranges of what a run records: an accuracy is a fraction, a target a kept fraction of the
# dense model (null: a run without one), a seed one the config accepts, a budget at least one
# epoch. A value outside them is no run's: it would otherwise become a row at -47% or "150% of
# the parameters", or a "0 ep" cell.
ACCURACY = Within(NUMBER, "[0, 1]")
TARGET = (Within(NUMBER, "(0, 1]"), None)
SEED = Within(int, SEED_RANGE)
EPOCHS = Within(int, "[1, inf)")
ENV = Record(optional={k: _TEXT for k in ("data_fingerprint", "device", "cpu", "cpu_capability", "gpu",
                                         "platform", "git_commit")})
RUN_CONFIG = Record(optional={"control": _TEXT, "comparators": (ListOf(str), None), "label": _TEXT, "seed": SEED,
                           "wandb": dict, "train": Record(optional={"epochs": EPOCHS}), "data": dict, "method": dict,
                           "model": Record(optional={"name": str, "width": NUMBER})})
_SUMMARY_KEYS = {"status": str, "test_acc": (ACCURACY, None), "best_test_acc": (ACCURACY, None), "model": str,
                 "method": _TEXT, "label": _TEXT, "dataset": _TEXT, "seed": SEED, "target": TARGET,
                 "epochs": EPOCHS, "precision": _TEXT, "memory_format": _TEXT, "diverged_epoch": int,
                 "diverged_step": int, "message": str, "config": RUN_CONFIG, "env": ENV}
# What makes a run a row of a table (bench.report, bench.compare): its model, its seed, and its
# label or method (the label defaults to the method's name). Without them the run cannot be
# placed: it would fall out of its row's statistics, or be a row of no model.
IDENTITY = Record(required={"model": str, "seed": SEED})


@functools.cache
def summary_spec() -> Record:
    """What a summary.json must hold: a run id, and where present the identity keys and
    every declared final metric (bench.metrics) of the right type and range."""
    from bench.metrics import FINAL, declared        # the declared metrics: on first use
    metrics = {m.name: (ANY_NUMBER, None) for m in declared(FINAL)}
    return Record(required={"run_id": str}, optional={**metrics, **_SUMMARY_KEYS})


def read_summary(path: str | os.PathLike, identity: bool = False) -> dict:
    """A run's summary.json, checked: a mapping with a `run_id`, its keys of the types and
    ranges the harness writes, a status of finished (the default) or diverged, and a
    finished run's `test_acc` a finite number: a NaN or missing accuracy would otherwise
    drop out of the means while the run is still counted (a diverged run records no
    accuracy at all). With `identity` (a reader that makes the run a row of a table), the
    run must also name its model, seed, and label or method (IDENTITY)."""
    s = read_json_record(path, "summary", FIX_RUN, summary_spec())
    status = s.get("status", "finished")
    if status not in STATUSES:
        raise refuse(path, "summary", f"status {show(status)}, not finished or diverged", FIX_RUN)
    if status == "finished" and s.get("test_acc") is None:        # its type is checked above
        raise refuse(path, "summary", "a finished run with no test_acc", FIX_RUN)
    if identity:
        check(s, IDENTITY, path, "summary", FIX_RUN)
        if not (s.get("label") or s.get("method")):
            raise refuse(path, "summary", "no label and no method: the run belongs to no row", FIX_RUN)
    return s


def run_folder(path: str | os.PathLike, *homes: str | os.PathLike) -> Path:
    """`path`, a run folder found under a results folder, unless it is a link to a folder
    outside all of `homes` (the results folder, and its runs/ folder where that is a link
    itself): a results folder's runs are its own, as a run's files are (read_text)."""
    p = Path(path)
    if p.is_symlink():
        try:
            target = p.resolve()
        except (OSError, RuntimeError) as e:                    # RuntimeError: a loop of links (Python < 3.13)
            raise refuse(p, "run folder", f"a link that cannot be followed: {getattr(e, 'strerror', None) or e}",
                         FIX_LINK) from None
        inside = [Path(h).resolve() for h in homes]
        if not any(h == target or h in target.parents for h in inside):
            raise refuse(p, "run folder", f"a link to {target}, outside {Path(homes[0])}", FIX_LINK)
    return p


def read_env(path: str | os.PathLike) -> dict:
    """A run's env.json, checked (its data fingerprint and machine are text)."""
    return read_json_record(path, "run environment", FIX_RUN, ENV)


def read_run_config(path: str | os.PathLike) -> dict:
    """A run's config.yaml, checked as far as its readers go (control, comparators, label,
    seed, the model's name and width; train, data, method and wandb are mappings)."""
    return check(read_yaml_record(path, "run config", FIX_RUN), RUN_CONFIG, path, "run config", FIX_RUN)


SUITE = Record(optional={"suite": str, "file": str, "command": str, "machine": str, "executor": str,
                         "started": str, "cells": int, "overrides": ListOf(str),
                         "controls": MapOf(str), "comparators": ListOf(str)})


# A suite's name is a folder name (results/<name>/, configs/suites/<name>.yaml) and a W&B
# group: no separators, no `..`, nothing hidden.
SUITE_NAME_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
# What the report reads from a suite file (the suite's plan where suite.json predates it).
SUITE_FILE = Record(optional={"comparators": (ListOf(str), None)})
FIX_SUITE_FILE = "write `comparators:` in it as a list of labels, e.g. [dense_small, random_filter]"


def read_suite(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """A suite's suite.json, checked: where present, its name a suite name (SUITE_NAME_PATTERN:
    it names folders and files), its file and command text, `cells` an integer, `controls`
    a mapping of labels to labels, `comparators` a list of labels; the keys in `required`
    must be there."""
    spec = Record(required={k: SUITE.optional[k] for k in required}, optional=SUITE.optional)
    meta = read_json_record(path, "suite record", FIX_SUITE, spec)
    if "suite" in meta and not re.fullmatch(SUITE_NAME_PATTERN, meta["suite"]):
        raise refuse(path, "suite record", f"suite {show(meta['suite'])} is not a suite name (letters, digits, "
                                           f"'.', '_', '-', not starting with '.')", FIX_SUITE)
    return meta


def read_suite_file(path: str | os.PathLike) -> dict:
    """A suite file as the report reads it (its `comparators`, a list of labels or null):
    read by read_yaml_record, so a link out, a fifo or an oversized file is refused too."""
    return check(read_yaml_record(path, "suite file", FIX_SUITE_FILE), SUITE_FILE, path, "suite file", FIX_SUITE_FILE)


# The history columns the report reads: each must be there and numeric, `epoch` never empty.
HISTORY_COLUMNS = ("epoch", "test_acc", "train_wall_s_cum")
HISTORY_OPTIONAL = ("acc_after_transform",)
HISTORY_ACCURACY = ("test_acc", "acc_after_transform")      # fractions, as in the summary (ACCURACY)


def read_history(path: str | os.PathLike):
    """A run's history.csv as a DataFrame (parsed from the checked text exactly as
    pandas.read_csv parses the file), with the columns the report reads numeric and its
    accuracies (where not empty) fractions."""
    import pandas as pd
    text = read_text(path, "history", FIX_RUN, HISTORY_CAP)
    try:
        h = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as e:     # EmptyDataError is a ValueError
        raise refuse(path, "history", f"not CSV: {' '.join(str(e).split())[:120]}", FIX_RUN) from None
    for col in HISTORY_COLUMNS + HISTORY_OPTIONAL:
        if col not in h:
            if col in HISTORY_COLUMNS:
                raise refuse(path, "history", f"no {col} column", FIX_RUN)
            continue
        if len(h) and (not pd.api.types.is_numeric_dtype(h[col]) or pd.api.types.is_bool_dtype(h[col])):
            bad = next((v for v in h[col] if not isinstance(v, (int, float)) or isinstance(v, bool)), h[col].iloc[0])
            raise refuse(path, "history", f"column {col} holds {show(bad)}, not numbers", FIX_RUN)
    if len(h) and not h["epoch"].map(math.isfinite).all():
        raise refuse(path, "history", "an epoch that is empty or not finite", FIX_RUN)
    for col in HISTORY_ACCURACY:
        if col in h and len(bad := h[col][(h[col] < 0) | (h[col] > 1)]):
            raise refuse(path, "history", f"column {col} holds {show(bad.iloc[0])}, not {range_rule(ACCURACY.range)}",
                         FIX_RUN)
    return h
