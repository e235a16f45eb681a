"""The model registry and what every family shares.

A family registers one builder per model name with `@register_model(name, note,
defaults)`; the builder takes the `ModelConfig` and returns `(model, Structure)`.
`build_model` attaches the structure to the model as the plain attribute `structure`
(so deep copies, pickled checkpoints and pruned copies keep it), with the family's
`defaults` filled in; `structure_of` reads it back.

Options every family takes: `width` multiplies every channel count (`scaled`); `act`
picks ReLU or LeakyReLU (`act_layer`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from torch import nn

from bench.config import ConfigError, ModelConfig
from bench.models.structure import Structure, chain_structure
from bench.registry import lookup

Builder = Callable[[ModelConfig], tuple[nn.Module, Structure]]
MODELS: dict[str, Builder] = {}
MODEL_NOTES: dict[str, str] = {}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {}
# Classes of a model built from a bare ModelConfig (num_classes 0), outside a run config,
# which would take the count from its dataset: the default dataset's (CIFAR-10's) count.
DEFAULT_NUM_CLASSES = 10


def register_model(name: str, note: str, defaults: Optional[Mapping[str, Any]] = None):
    """Register `builder(cfg) -> (model, structure)` as `model.name=name`. `defaults`: the
    family's method defaults, keyed "method.option" (e.g. {"pcn.transform_epoch": 1})."""
    def deco(fn: Builder) -> Builder:
        MODELS[name] = fn
        MODEL_NOTES[name] = note
        MODEL_DEFAULTS[name] = dict(defaults or {})
        return fn
    return deco


def check_model_name(name: str) -> None:
    lookup(MODELS, name, "model")


def model_defaults(name: str) -> dict[str, Any]:
    """The method defaults of model `name`'s family (empty for a name not registered), for
    a method that needs them before it sees the model."""
    return dict(MODEL_DEFAULTS.get(name, {}))


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build `cfg.name` with fresh weights (seed the global RNG before calling), its
    `Structure` attached."""
    check_model_name(cfg.name)
    if cfg.width <= 0:
        raise ConfigError(f"model.width must be positive, got {cfg.width}")
    if cfg.num_classes < 0:
        raise ConfigError(f"model.num_classes must be >= 0 (0: the dataset's count), got {cfg.num_classes}")
    if cfg.num_classes == 0:
        cfg = dataclasses.replace(cfg, num_classes=DEFAULT_NUM_CLASSES)
    model, structure = MODELS[cfg.name](cfg)
    model.structure = dataclasses.replace(structure, defaults=model_defaults(cfg.name))
    return model


def structure_of(model: nn.Module) -> Structure:
    """The structure `build_model` attached to `model`; for a bare `nn.Sequential`, the
    chain structure of its children (`chain_structure`)."""
    structure = getattr(model, "structure", None)
    if isinstance(structure, Structure):
        return structure
    if isinstance(model, nn.Sequential):
        return chain_structure(list(model.named_children()), "sequential")
    raise ConfigError(f"{type(model).__name__} publishes no structure: build it with bench.models.build_model "
                      f"(a family registered with register_model) or use an nn.Sequential")


class LeakyReLULayer:
    """`act_layer(inplace)` factory for timm (which passes `inplace` positionally)."""

    def __init__(self, negative_slope: float):
        self.negative_slope = negative_slope

    def __call__(self, inplace: bool = False) -> nn.LeakyReLU:
        return nn.LeakyReLU(self.negative_slope, inplace=inplace)


def act_layer(cfg: ModelConfig) -> type[nn.Module] | Callable[..., nn.Module]:
    if cfg.act == "relu":
        return nn.ReLU
    return LeakyReLULayer(cfg.leaky_slope)


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
