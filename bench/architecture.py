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
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch
from torch import nn

from bench.config import ConfigError, ModelConfig

FORMAT = 1


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


# --------------------------------------------------------------------------- rebuild
def _get(model: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


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


def _build(modules: dict[str, dict], path: str) -> nn.Module:
    """A new module for `path` from its record (children first, for container classes)."""
    entry = modules[path]
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
        return kind.cls(**_args(entry))
    except (TypeError, ValueError) as e:
        raise ArchitectureError(f"architecture record: cannot build '{path}' ({entry['class']}): {e}") from None


def _depth(path: str) -> int:
    return path.count(".")


def rebuild(rec: dict[str, Any], model_cfg: Optional[ModelConfig] = None) -> nn.Module:
    """The model `rec` describes, with fresh weights: built from `model_cfg` (default: the
    record's own model configuration), then every module whose record differs built from the
    record, extra buffers registered (zeros) and frozen parameters frozen. Raises
    ArchitectureError where the result would not match the record. The global random
    stream is left as it was (the weights drawn here are to be overwritten or only timed)."""
    from bench.models import build_model
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("modules"), dict):
        raise ArchitectureError(f"architecture record: not a format-{FORMAT} record")
    cfg = model_cfg if model_cfg is not None else ModelConfig(**rec["model"])
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
            _set(model, path, model.get_submodule(modules[path]["same_as"]))
    for path, entry in modules.items():
        if "same_as" in entry:
            continue
        m = model.get_submodule(path)
        for name, (shape, dtype) in entry.get("buffers", {}).items():
            if name not in dict(m.named_buffers(recurse=False)):
                m.register_buffer(name, torch.zeros(shape, dtype=getattr(torch, dtype)))
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
    counts only. Raises NotDerivable for a summary that records none of these."""
    if isinstance(summary.get("architecture"), dict):
        return summary["architecture"]
    cfg = summary.get("config") or {}
    method, ms = summary.get("method"), summary.get("method_summary") or {}
    try:
        model_cfg = ModelConfig(**cfg["model"])
    except (KeyError, TypeError) as e:
        raise NotDerivable(f"{summary.get('run_id')}: the summary holds no model configuration ({e})") from None
    from bench.models import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if method in ("dense", "decorrelated_bp"):
            model = build_model(model_cfg)
        elif method == "dense_small" and "width" in ms:
            model = build_model(dataclasses.replace(model_cfg, width=float(ms["width"])))
        elif method in ("l1_filter", "snp") and isinstance(ms.get("channels"), dict):
            model = _narrowed(model_cfg, cfg, {k: int(v[1]) for k, v in ms["channels"].items()})
        elif method == "pcns" and isinstance(ms.get("shrinks"), list):
            model = _pcns(model_cfg, cfg, ms["shrinks"])
        elif method == "pcn" and isinstance(ms.get("layers"), list):
            model = _pcn(model_cfg, cfg, ms["layers"])
        elif method == "dsr" and isinstance(ms.get("active_init"), dict):
            from methods.dsr import MASK
            model = build_model(model_cfg)
            for name in ms["active_init"]:
                layer = model.get_submodule(name)
                layer.register_buffer(MASK, torch.ones_like(layer.weight, dtype=torch.bool))
        else:
            raise NotDerivable(f"{summary.get('run_id')}: method {method!r} with this summary records no "
                               f"architecture to rebuild")
    return record(model, model_cfg)


def _example(cfg: dict[str, Any]) -> torch.Tensor:
    size = int((cfg.get("data") or {}).get("image_size", 32))
    return torch.zeros(1, 3, size, size)


def _narrowed(model_cfg: ModelConfig, cfg: dict[str, Any], widths: dict[str, int]) -> nn.Module:
    """The built model with each named layer's outputs cut to `widths[name]` (trailing
    channels removed; coupled norms and consumers follow)."""
    from bench.models import build_model
    from methods._pruning import build_graph, prune_out_channels
    model = build_model(model_cfg)
    graph = build_graph(model, _example(cfg))
    for name, keep in widths.items():
        layer = model.get_submodule(name)
        out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if not 0 < keep <= out:
            raise NotDerivable(f"{name}: {keep} channels kept of {out}")
        prune_out_channels(graph, layer, range(keep, out))
    return model


def _narrow(model: nn.Module, cfg: dict[str, Any], name: str, keep: int) -> None:
    from methods._pruning import build_graph, prune_out_channels
    layer = model.get_submodule(name)
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
                n = int(row["n_before"])
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
        k, proj = int(row["in_dims_after"]), None
        for name in row.get("consumers") or [row["layer"]]:
            layer = model.get_submodule(name)
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
