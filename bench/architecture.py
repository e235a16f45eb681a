"""A model's architecture as plain data, and the model rebuilt from it without its weights.

Methods change the model they train: pruning narrows layers (torch-pruning slices them
in place), PCN swaps a layer for a projection and a smaller layer, PCNS puts a mix in
front of a pool, DSR registers masks as buffers, decorrelated BP swaps in layers with a
decorrelation buffer. A checkpoint that pickles the model whole carries that architecture
but also runs code when it is loaded; a run's summary that lacks it cannot be timed again.
So a run records its architecture as plain data (`record`) and rebuilds it from that
(`rebuild`): the model as the configuration builds it, then every module whose record
differs replaced by one built from the record. Loading the state dict then gives back the
trained model, and timing the rebuilt model times the deployed architecture.

The record (JSON-serialisable; `FORMAT` versions it):

    {"format": 1, "model": {name, width, act, leaky_slope, num_classes}, "family": "vgg",
     "modules": {path: {"class": ..., "args": {...}, "children": [...], "params": {name: shape},
                        "buffers": {name: [shape, dtype]}, "frozen": [param names],
                        "same_as": path}}}

`modules` holds every module but the root, by its path. `class` is a name from
`CONSTRUCTIBLE` (torch.nn layers and this project's own layer classes, with the
constructor arguments in `args`) or, for anything else (timm's VGG, ResNet blocks, heads),
the class's qualified name: such a module is never built from the record, it must be the
same class at the same path in the freshly built model. `params` and `buffers` list the
module's own tensors (not its children's), so extra buffers (DSR's masks, decorrelated
BP's R) are registered again and every parameter's shape is checked. `frozen` names the
parameters that do not train (PCN's projections): the optimizer must see the same ones.
A module reachable under two paths (a projection shared by two layers) is recorded once;
the second path says `same_as` the first.

A record read from a results file is data from elsewhere: `check_record` checks it before
anything is built (`rebuild` calls it). Every value must have the type `record` writes,
dtypes come from a fixed list (`DTYPES`), `frozen` names the module's own parameters and
`same_as` a recorded module, no dimension exceeds `MAX_DIM`, and the tensors the record
lists, and the model its configuration builds (sized on the meta device, where nothing is
allocated), hold at most `MAX_ELEMENTS` numbers. A module built from its record is first
built on the meta device and must hold the parameters and buffers the record lists, so a
crafted argument cannot allocate more than the record's own (bounded) shapes.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, build_dataclass
from bench.records import NUMBER, ListOf, MapOf, Record, problem, show

FORMAT = 1
# Bounds on what a record (or a summary a record is derived from) may ask to allocate: far
# above every registered model at width 1 (wide_resnet50_2: 67M parameters) and every layer
# the methods build, far below what would exhaust a machine's memory.
MAX_ELEMENTS = 2**28            # numbers in a record's tensors, or in the model as configured
MAX_DIM = 2**16                 # one dimension of a tensor, one channel or feature count
MAX_GEOMETRY = 64               # a kernel size, stride, padding, dilation or pooled output size
MAX_IMAGE_SIZE = 1024           # an image side, in pixels
_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "output_size")
# The tensor types a record's buffers may have, by the name `record` writes.
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8,
          "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


class ArchitectureError(ConfigError):
    """A record that cannot be rebuilt (unknown class, shapes that do not match)."""


# --------------------------------------------------------------------------- the allow-list
def _conv_args(m: nn.Conv2d) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _linear_args(m: nn.Linear) -> dict[str, Any]:
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}


def _bn_args(m: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_args(m: nn.MaxPool2d) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
            (("kernel_size", m.kernel_size), ("stride", m.stride), ("padding", m.padding),
             ("dilation", m.dilation), ("return_indices", m.return_indices), ("ceil_mode", m.ceil_mode))}


def _avgpool_args(m: nn.AvgPool2d) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
            (("kernel_size", m.kernel_size), ("stride", m.stride), ("padding", m.padding),
             ("ceil_mode", m.ceil_mode), ("count_include_pad", m.count_include_pad),
             ("divisor_override", m.divisor_override))}


def _adaptive_args(m: nn.Module) -> dict[str, Any]:
    size = m.output_size
    return {"output_size": list(size) if isinstance(size, tuple) else size}


def _pad_args(m: nn.Module) -> dict[str, Any]:
    return {"padding": list(m.padding)}


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to read one constructible class's arguments and build it again. `children`:
    the constructor takes the module's children (by name, or positionally for Sequential)."""
    cls: type
    args: Callable[[nn.Module], dict[str, Any]] = lambda m: {}
    children: bool = False


def _torch_kinds() -> dict[str, Kind]:
    kinds = {
        "Conv2d": Kind(nn.Conv2d, _conv_args),
        "Linear": Kind(nn.Linear, _linear_args),
        "BatchNorm1d": Kind(nn.BatchNorm1d, _bn_args),
        "BatchNorm2d": Kind(nn.BatchNorm2d, _bn_args),
        "ReLU": Kind(nn.ReLU, lambda m: {"inplace": m.inplace}),
        "LeakyReLU": Kind(nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope, "inplace": m.inplace}),
        "MaxPool2d": Kind(nn.MaxPool2d, _pool_args),
        "AvgPool2d": Kind(nn.AvgPool2d, _avgpool_args),
        "AdaptiveAvgPool2d": Kind(nn.AdaptiveAvgPool2d, _adaptive_args),
        "AdaptiveMaxPool2d": Kind(nn.AdaptiveMaxPool2d, _adaptive_args),
        "Dropout": Kind(nn.Dropout, lambda m: {"p": m.p, "inplace": m.inplace}),
        "Flatten": Kind(nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
        "Identity": Kind(nn.Identity),
        "ZeroPad2d": Kind(nn.ZeroPad2d, _pad_args),
        "ConstantPad2d": Kind(nn.ConstantPad2d, lambda m: {**_pad_args(m), "value": m.value}),
        "Sequential": Kind(nn.Sequential, children=True),
    }
    return {f"torch.nn.{k}": v for k, v in kinds.items()}


def _project_kinds() -> dict[str, Kind]:
    """This project's own layer classes (imported here, not at module import, because the
    methods import the harness)."""
    from methods.decorrelated_bp import DecorConv2d, DecorLinear
    from methods.pcn import PCNConv, PCNLinear
    from methods.pcns import MixPool
    return {"PCNConv": Kind(PCNConv, children=True), "PCNLinear": Kind(PCNLinear, children=True),
            "MixPool": Kind(MixPool, children=True),
            "DecorConv2d": Kind(DecorConv2d, _conv_args), "DecorLinear": Kind(DecorLinear, _linear_args)}


_KINDS: Optional[dict[str, Kind]] = None


def constructible() -> dict[str, Kind]:
    """The allow-list: record name -> how to build it. Nothing else is ever constructed."""
    global _KINDS
    if _KINDS is None:
        _KINDS = {**_torch_kinds(), **_project_kinds()}
    return _KINDS


def class_name(m: nn.Module) -> str:
    """`m`'s record name: its allow-list name, else its qualified name (kept, never built)."""
    for name, kind in constructible().items():
        if type(m) is kind.cls:
            return name
    return f"{type(m).__module__}.{type(m).__qualname__}"


# --------------------------------------------------------------------------- record
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def record(model: nn.Module, model_cfg: ModelConfig) -> dict[str, Any]:
    """The architecture of `model` (built from `model_cfg`, then changed by a method) as
    plain data: see the module docstring. No weights, no code."""
    structure = getattr(model, "structure", None)
    modules: dict[str, Any] = {}
    first: dict[int, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if not path:
            continue
        if id(m) in first:
            modules[path] = {"same_as": first[id(m)]}
            continue
        first[id(m)] = path
        name = class_name(m)
        kind = constructible().get(name)
        entry: dict[str, Any] = {"class": name, "children": [n for n, _ in m.named_children()]}
        if kind is not None and not kind.children:
            entry["args"] = kind.args(m)
        entry["params"] = {n: list(p.shape) for n, p in m.named_parameters(recurse=False)}
        entry["buffers"] = {n: [list(b.shape), _dtype_name(b.dtype)] for n, b in m.named_buffers(recurse=False)}
        entry["frozen"] = [n for n, p in m.named_parameters(recurse=False) if not p.requires_grad]
        modules[path] = entry
    return {"format": FORMAT, "model": model_config_dict(model_cfg), "family": getattr(structure, "family", None),
            "root": class_name(model), "modules": modules}


# --------------------------------------------------------------------------- checking a record
_SCALAR = (bool, NUMBER, str, None)
_SHAPE = ListOf(int)
_RECORD = Record(required={"format": int, "model": dict, "modules": MapOf(dict)},
                 optional={"root": (str, None), "family": (str, None)})
_ENTRY = Record(required={"class": str},
                optional={"args": MapOf((*_SCALAR, ListOf(_SCALAR))), "children": ListOf(str),
                          "params": MapOf(_SHAPE), "buffers": MapOf(ListOf((_SHAPE, str))), "frozen": ListOf(str)})
_SHARED = Record(required={"same_as": str})


def _refuse(why: str) -> ArchitectureError:
    return ArchitectureError(f"architecture record: {why}")


def model_config(raw: Any, key: str = "model") -> ModelConfig:
    """The model configuration `raw` (from a record or a run's config), checked as a config
    file's is (known keys, types, ranges; bench.config.build_dataclass), and the model it
    builds no larger than MAX_ELEMENTS (sized on the meta device: nothing is allocated)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} is {show(raw)}, not a mapping")
    cfg = build_dataclass(ModelConfig, raw, f"{key}.")
    from bench.models import build_model
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except (RuntimeError, OverflowError):          # a size torch cannot even compute
        raise ConfigError(f"{key}: {cfg.name} at width {cfg.width:g} is too large to build") from None
    n = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if n > MAX_ELEMENTS:
        raise ConfigError(f"{key}: {cfg.name} at width {cfg.width:g} holds {n:,} numbers, over the "
                          f"{MAX_ELEMENTS:,} this harness builds")
    return cfg


def _numel(shape: list[int], where: str) -> int:
    if len(shape) > 8 or any(not 0 <= d <= MAX_DIM for d in shape):
        raise _refuse(f"{where} has shape {shape}: at most 8 dimensions of 0 to {MAX_DIM:,}")
    n = 1
    for d in shape:
        n *= d
    return n


def _check_args(args: dict[str, Any], where: str) -> None:
    for key, value in args.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, int):
                continue
            if key in _GEOMETRY and not 0 <= v <= MAX_GEOMETRY:
                raise _refuse(f"{where}.args.{key} is {show(value)}, not 0 to {MAX_GEOMETRY}")
            if abs(v) > MAX_DIM:
                raise _refuse(f"{where}.args.{key} is {show(value)}, over the {MAX_DIM:,} a layer may have")


def check_record(rec: Any) -> ModelConfig:
    """`rec`'s model configuration once the whole record is checked (see the module
    docstring); ArchitectureError, one line naming the value, for anything else."""
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("modules"), dict):
        raise _refuse(f"not a format-{FORMAT} record")
    if (p := problem(rec, _RECORD)) is not None:
        raise _refuse(p)
    try:
        cfg = model_config(rec["model"])
    except ArchitectureError:
        raise
    except ConfigError as e:
        raise _refuse(str(e)) from None
    modules: dict[str, dict] = rec["modules"]
    total = 0
    for path, entry in modules.items():
        where = f"modules.{path}"
        if "same_as" in entry:
            if (p := problem(entry, _SHARED, where)) is not None:
                raise _refuse(p)
            target = modules.get(entry["same_as"])
            if target is None or "same_as" in target:
                raise _refuse(f"{where}.same_as names {show(entry['same_as'])}, not a module the record builds")
            continue
        if (p := problem(entry, _ENTRY, where)) is not None:
            raise _refuse(p)
        _check_args(entry.get("args", {}), where)
        for name, shape in entry.get("params", {}).items():
            total += _numel(shape, f"{where}.params.{name}")
        for name, item in entry.get("buffers", {}).items():
            if len(item) != 2 or not isinstance(item[0], list) or not isinstance(item[1], str):
                raise _refuse(f"{where}.buffers.{name} is not [shape, dtype]")
            if item[1] not in DTYPES:
                raise _refuse(f"{where}.buffers.{name} has dtype {show(item[1])}, not one of {', '.join(DTYPES)}")
            total += _numel(item[0], f"{where}.buffers.{name}")
        unknown = [n for n in entry.get("frozen", []) if n not in entry.get("params", {})]
        if unknown:
            raise _refuse(f"{where}.frozen names {show(unknown[0])}, not one of the module's parameters")
        if total > MAX_ELEMENTS:
            raise _refuse(f"its tensors hold over {MAX_ELEMENTS:,} numbers")
    return cfg


# --------------------------------------------------------------------------- rebuild
def _get(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    holder = _get(model, parent) if parent else model
    if holder is None:
        raise ArchitectureError(f"architecture record: '{path}' lies under '{parent}', which the model does not have")
    setattr(holder, child, new)


def _args(entry: dict) -> dict[str, Any]:
    """The recorded constructor arguments, JSON's lists back as the tuples torch keeps."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry.get("args", {}).items()}


def _matches(m: Optional[nn.Module], entry: dict) -> bool:
    """Is the built module `m` what `entry` records (class, arguments, children's names)?"""
    if m is None or class_name(m) != entry["class"]:
        return False
    kind = constructible().get(entry["class"])
    if kind is not None and not kind.children and kind.args(m) != entry.get("args"):
        return False
    return [n for n, _ in m.named_children()] == entry.get("children", [])


def _shapes(tensors) -> dict[str, list[int]]:
    return {n: list(t.shape) for n, t in tensors}


def _build(modules: dict[str, dict], path: str) -> nn.Module:
    """A new module for `path` from its record (children first, for container classes).
    A class built from arguments is built on the meta device first: it must hold the
    parameters and buffers its record lists (bounded by check_record) before any memory
    is allocated for it."""
    entry = modules.get(path)
    if entry is None:
        raise ArchitectureError(f"architecture record: '{path}' is a child its parent names but no module recorded")
    if "same_as" in entry:
        return nn.Identity()          # a placeholder: rebuild puts the shared module here last
    kind = constructible().get(entry["class"])
    if kind is None:
        raise ArchitectureError(f"architecture record: '{path}' is a {entry['class']}, which the model as built "
                                f"does not have there and which is not on the list of classes a record may build")
    if kind.children:
        kids = {c: _build(modules, f"{path}.{c}") for c in entry.get("children", [])}
        if kind.cls is nn.Sequential:
            return nn.Sequential(OrderedDict(kids))
        return kind.cls(**kids)
    try:
        with torch.device("meta"):
            probe = kind.cls(**_args(entry))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ArchitectureError(f"architecture record: cannot build '{path}' ({entry['class']}): "
                                f"{' '.join(str(e).split())[:200]}") from None
    params, buffers = _shapes(probe.named_parameters(recurse=False)), _shapes(probe.named_buffers(recurse=False))
    recorded = {n: shape for n, (shape, _) in entry.get("buffers", {}).items()}
    if params != entry.get("params", {}) or any(recorded.get(n) != s for n, s in buffers.items()):
        raise ArchitectureError(f"architecture record: '{path}' ({entry['class']}) built from its args holds "
                                f"parameters {params} and buffers {buffers}; the record says "
                                f"{entry.get('params', {})} and {recorded}")
    return kind.cls(**_args(entry))


def _depth(path: str) -> int:
    return path.count(".")


def rebuild(rec: dict[str, Any], model_cfg: Optional[ModelConfig] = None) -> nn.Module:
    """The model `rec` describes, with fresh weights: built from `model_cfg` (default: the
    record's own model configuration), then every module whose record differs built from the
    record, extra buffers registered (zeros) and frozen parameters frozen. Raises
    ArchitectureError where the record is malformed (check_record) or the result would not
    match it. The global random stream is left as it was (the weights drawn here are to be
    overwritten or only timed)."""
    from bench.models import build_model
    own = check_record(rec)
    cfg = model_cfg if model_cfg is not None else own
    modules: dict[str, dict] = rec["modules"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
        if rec.get("root") != class_name(model):
            raise ArchitectureError(f"architecture record: the model is a {rec.get('root')}, model.name={cfg.name} "
                                    f"builds a {class_name(model)}")
        replaced: list[str] = []
        for path in sorted((p for p in modules if "same_as" not in modules[p]), key=_depth):
            if any(path.startswith(r + ".") for r in replaced):
                continue                                        # built with its replaced parent
            if not _matches(_get(model, path), modules[path]):
                _set(model, path, _build(modules, path))
                replaced.append(path)
        for path in sorted((p for p in modules if "same_as" in modules[p]), key=_depth):
            shared = _get(model, modules[path]["same_as"])
            if shared is None:
                raise ArchitectureError(f"architecture record: '{path}' is the same as "
                                        f"'{modules[path]['same_as']}', which the rebuilt model does not have there")
            _set(model, path, shared)
    for path, entry in modules.items():
        if "same_as" in entry:
            continue
        m = _get(model, path)
        if m is None:
            raise ArchitectureError(f"architecture record: '{path}' is recorded but not in the rebuilt model")
        for name, (shape, dtype) in entry.get("buffers", {}).items():
            if name not in dict(m.named_buffers(recurse=False)):
                try:
                    m.register_buffer(name, torch.zeros(shape, dtype=DTYPES[dtype]))
                except (KeyError, TypeError) as e:
                    raise ArchitectureError(f"architecture record: '{path}' cannot hold a buffer named "
                                            f"{show(name)} ({' '.join(str(e).split())[:120]})") from None
        got = {n: list(p.shape) for n, p in m.named_parameters(recurse=False)}
        if got != entry.get("params", {}):
            raise ArchitectureError(f"architecture record: '{path}' rebuilt with parameters {got}, "
                                    f"the record says {entry.get('params')}")
        for name in entry.get("frozen", []):
            getattr(m, name).requires_grad_(False)
    built = {p for p, _ in model.named_modules(remove_duplicate=False) if p}
    if built != set(modules):
        extra = sorted(built - set(modules))[:3]
        missing = sorted(set(modules) - built)[:3]
        raise ArchitectureError(f"architecture record: rebuilt modules differ from the record "
                                f"(not recorded: {extra}, not rebuilt: {missing})")
    return model


def same_architecture(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Do two records describe the same architecture (the model configuration included)?"""
    return a.get("model") == b.get("model") and a.get("modules") == b.get("modules")


# --------------------------------------------------------------------------- runs that predate the record
class NotDerivable(ArchitectureError):
    """A summary that records too little to rebuild its run's deployed architecture."""


def deployed_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The deployed architecture of a finished run: the summary's `architecture`, or, for a
    run written before summaries recorded it, derived from what its summary does record:

    - dense, decorrelated_bp: the model as configured (decorrelated BP deploys its layers
      with R merged: plain layers of the built shapes);
    - dense_small: the model at the width the method chose (`method_summary.width`);
    - l1_filter, snp (channel table `channels`: layer -> [before, after]) and pcns (each
      shrink's `n_after` per layer, the last shrink's count winning): every layer narrowed
      to its kept count, coupled layers with it (torch-pruning, as the methods do it); a
      PCNS shrink across a max pool (`p_into` "<pool>.mix (new)") first puts its 1x1 mix
      in front of the pool, as PCNS does;
    - pcn (`layers`: the layer, the producer it reads, kept channels, dims after): the
      producers narrowed, each transformed layer swapped for its PCN layer (padding, frozen
      projection d -> k, the layer reading k);
    - dsr: the model as configured with a bool mask buffer on every sparse layer.

    Which channels were kept is not recorded, nor needed: the architecture depends on the
    counts only. Raises NotDerivable for a summary that records none of these, or whose
    configuration or method summary does not describe a model this method builds (checked
    before anything is allocated where a number sets a size: the model's width, a layer's
    kept count, a projection's dimension)."""
    if isinstance(summary.get("architecture"), dict):
        return summary["architecture"]
    run = summary.get("run_id")
    cfg = summary.get("config") or {}
    method, ms = summary.get("method"), summary.get("method_summary") or {}
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise NotDerivable(f"{run}: the summary holds no model configuration (config.model)")
    try:
        model_cfg = build_cfg = model_config(cfg["model"], "config.model")
        if method == "dense_small" and isinstance(ms, dict) and "width" in ms:
            build_cfg = model_config({**cfg["model"], "width": ms["width"]}, "method_summary.width: config.model")
    except ConfigError as e:
        raise NotDerivable(f"{run}: {e}") from None
    if not isinstance(ms, dict):
        raise NotDerivable(f"{run}: method_summary is {show(ms)}, not a mapping")
    try:
        return record(_derived(build_cfg, cfg, method, ms, run), model_cfg)
    except NotDerivable as e:
        if str(e).startswith(f"{run}: "):
            raise
        raise NotDerivable(f"{run}: {e}") from None
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise NotDerivable(f"{run}: method_summary does not describe a {method} model "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def _channel_table(channels: dict[str, Any]) -> dict[str, int]:
    """l1_filter's and SNP's `channels` (layer -> [before, after]) as layer -> kept count."""
    bad = next((k for k, v in channels.items() if problem(v, ListOf(int)) is not None or len(v) != 2), None)
    if bad is not None:
        raise NotDerivable(f"method_summary.channels.{bad} is {show(channels[bad])}, not [before, after]")
    return {k: v[1] for k, v in channels.items()}


def _derived(model_cfg: ModelConfig, cfg: dict[str, Any], method: Any, ms: dict[str, Any], run: Any) -> nn.Module:
    """The deployed model deployed_record derives from a summary without a record (for
    dense_small, `model_cfg` is at the method's width)."""
    from bench.models import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if method in ("dense", "decorrelated_bp"):
            model = build_model(model_cfg)
        elif method == "dense_small" and "width" in ms:
            model = build_model(model_cfg)              # at the method's width (deployed_record)
        elif method in ("l1_filter", "snp") and isinstance(ms.get("channels"), dict):
            model = _narrowed(model_cfg, cfg, _channel_table(ms["channels"]))
        elif method == "pcns" and isinstance(ms.get("shrinks"), list):
            model = _pcns(model_cfg, cfg, ms["shrinks"])
        elif method == "pcn" and isinstance(ms.get("layers"), list):
            model = _pcn(model_cfg, cfg, ms["layers"])
        elif method == "dsr" and isinstance(ms.get("active_init"), dict):
            from methods.dsr import MASK
            model = build_model(model_cfg)
            for name in ms["active_init"]:
                layer = _layer(model, name)
                layer.register_buffer(MASK, torch.ones_like(layer.weight, dtype=torch.bool))
        else:
            raise NotDerivable(f"{run}: method {method!r} with this summary records no "
                               f"architecture to rebuild")
    return model


def _layer(model: nn.Module, name: Any) -> nn.Module:
    """The conv or linear layer `name` of `model` (a name from a summary)."""
    layer = _get(model, name) if isinstance(name, str) else None
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise NotDerivable(f"{show(name)} names no conv or linear layer of the model")
    return layer


def _example(cfg: dict[str, Any]) -> torch.Tensor:
    size = (cfg.get("data") or {}).get("image_size", 32)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise NotDerivable(f"config.data.image_size is {show(size)}, not an image side of 1 to {MAX_IMAGE_SIZE} pixels")
    return torch.zeros(1, 3, size, size)


def _narrowed(model_cfg: ModelConfig, cfg: dict[str, Any], widths: dict[str, int]) -> nn.Module:
    """The built model with each named layer's outputs cut to `widths[name]` (trailing
    channels removed; coupled norms and consumers follow)."""
    from bench.models import build_model
    from methods._pruning import build_graph, prune_out_channels
    model = build_model(model_cfg)
    graph = build_graph(model, _example(cfg))
    for name, keep in widths.items():
        layer = _layer(model, name)
        out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if not 0 < keep <= out:
            raise NotDerivable(f"{name}: {keep} channels kept of {out}")
        prune_out_channels(graph, layer, range(keep, out))
    return model


def _narrow(model: nn.Module, cfg: dict[str, Any], name: str, keep: int) -> None:
    from methods._pruning import build_graph, prune_out_channels
    layer = _layer(model, name)
    out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if not 0 < keep <= out:
        raise NotDerivable(f"{name}: {keep} channels kept of {out}")
    prune_out_channels(build_graph(model, _example(cfg)), layer, range(keep, out))


def _pcns(model_cfg: ModelConfig, cfg: dict[str, Any], shrinks: list[dict[str, Any]]) -> nn.Module:
    """PCNS's model from its shrink rows, replayed in order: a new mix in front of a pool
    where a row says so (a bias-free 1x1 conv on the producer's channels), then the
    producer narrowed to `n_after` (the mix or consumer reading it follows)."""
    from bench.models import build_model
    from methods.pcns import MixPool
    model = build_model(model_cfg)
    for shrink in shrinks:
        for row in shrink["layers"]:
            into = str(row.get("p_into", ""))
            if into.endswith(" (new)"):
                pool = into.removesuffix(" (new)").removesuffix(".mix")
                n = row["n_before"]
                if isinstance(n, bool) or not isinstance(n, int) or not 0 < n * n <= MAX_ELEMENTS:
                    raise NotDerivable(f"a PCNS shrink's n_before is {show(n)}, not a channel count")
                _set(model, pool, MixPool(nn.Conv2d(n, n, 1, bias=False), model.get_submodule(pool)))
            _narrow(model, cfg, row["layer"], int(row["n_after"]))
    return model


def _pcn(model_cfg: ModelConfig, cfg: dict[str, Any], layers: list[dict[str, Any]]) -> nn.Module:
    """PCN's deployed model from its per-layer rows: producers narrowed to the channels kept,
    then every consumer swapped for its PCN layer reading k = `in_dims_after` components
    (consumers of one tensor share one projection, as PCN builds them)."""
    from methods.pcn import PCNConv, PCNLinear
    model = _narrowed(model_cfg, cfg, {row["reads"]: int(row["in_channels_kept"]) for row in layers
                                       if row.get("reads") and row["in_channels_kept"] < row["in_dims_before"]})
    for row in layers:
        k, proj = row["in_dims_after"], None
        for name in row.get("consumers") or [row["layer"]]:
            layer = _layer(model, name)
            d = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d:
                raise NotDerivable(f"PCN layer {name}: in_dims_after is {show(k)}, not 1 to its {d} inputs")
            if isinstance(layer, nn.Linear):
                proj = proj or nn.Linear(layer.in_features, k).requires_grad_(False)
                new: nn.Module = PCNLinear(proj, nn.Linear(k, layer.out_features))
            else:
                ph, pw = layer.padding
                pad = nn.ZeroPad2d((pw, pw, ph, ph)) if (ph or pw) else nn.Identity()
                proj = proj or nn.Conv2d(layer.in_channels, k, 1).requires_grad_(False)
                new = PCNConv(pad, proj, nn.Conv2d(k, layer.out_channels, layer.kernel_size, layer.stride, 0,
                                                   layer.dilation))
            _set(model, name, new)
    return model
