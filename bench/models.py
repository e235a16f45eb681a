"""Model factory over timm's own classes, in their CIFAR form.

- `vgg11/13/16/19`: `timm.models.vgg.VGG` with BatchNorm after every 3x3 conv, and
  its 4096-wide 7x7 `ConvMlp` head replaced by global average pooling and one
  Linear classifier (the usual CIFAR VGG; the ConvMlp head alone would hold
  ~100M parameters at 32x32 input).
- `resnet18/34/50`, `wide_resnet50_2`: `timm.models.resnet.ResNet` with the CIFAR
  stem (3x3 stride-1 conv, no max-pool).
- `resnet20/56/110`: the 3-stage CIFAR ResNets of He et al. 2016 (sec. 4.2):
  16/32/64 channels, 3n BasicBlocks, built with timm's `ResNet` and `make_blocks`.
  Shortcuts that change shape use timm's 1x1 conv + BN projection ("option B"),
  so ResNet-56 has 0.86M parameters rather than option A's 0.85M.

Options: `width` multiplies every channel count; `act` picks ReLU or LeakyReLU.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

from torch import nn
from timm.layers import ClassifierHead
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks
from timm.models.vgg import VGG, cfgs as VGG_CFGS

from bench.config import ConfigError, ModelConfig
from bench.registry import lookup

MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {}
MODEL_NOTES: dict[str, str] = {}
# Classes of a model built from a bare ModelConfig (num_classes 0), outside a run config,
# which would take the count from its dataset: the default dataset's (CIFAR-10's) count.
DEFAULT_NUM_CLASSES = 10


def register_model(name: str, note: str):
    def deco(fn):
        MODELS[name] = fn
        MODEL_NOTES[name] = note
        return fn
    return deco


def check_model_name(name: str) -> None:
    lookup(MODELS, name, "model")


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build `cfg.name` with fresh weights (seed the global RNG before calling)."""
    check_model_name(cfg.name)
    if cfg.width <= 0:
        raise ConfigError(f"model.width must be positive, got {cfg.width}")
    if cfg.num_classes < 0:
        raise ConfigError(f"model.num_classes must be >= 0 (0: the dataset's count), got {cfg.num_classes}")
    if cfg.num_classes == 0:
        cfg = dataclasses.replace(cfg, num_classes=DEFAULT_NUM_CLASSES)
    return MODELS[cfg.name](cfg)


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


# --------------------------------------------------------------------------- VGG
def cifar_vgg(depth: int, cfg: ModelConfig) -> nn.Module:
    layout = [v if v == "M" else scaled(v, cfg.width) for v in VGG_CFGS[f"vgg{depth}"]]
    # mlp_ratio makes the throw-away ConvMlp 1 unit wide so that building it costs nothing.
    model = VGG(layout, num_classes=cfg.num_classes, norm_layer=nn.BatchNorm2d,
                act_layer=act_layer(cfg), mlp_ratio=1 / 4096)
    model.pre_logits = nn.Identity()
    model.head = ClassifierHead(model.num_features, cfg.num_classes, pool_type="avg")
    model.head_hidden_size = model.num_features
    return model


for _d in (11, 13, 16, 19):
    register_model(f"vgg{_d}", f"CIFAR VGG-{_d}: BN, 3x3 convs, global avg pool, one Linear")(
        partial(cifar_vgg, _d))


# --------------------------------------------------------------------------- ResNet
def cifar_resnet(block: type, layers: tuple[int, ...], channels: tuple[int, ...], stem: int,
                 cfg: ModelConfig, base_width: int = 64) -> nn.Module:
    chs = tuple(scaled(c, cfg.width) for c in channels)
    stem = scaled(stem, cfg.width)
    act = act_layer(cfg)
    model = ResNet(block, layers, channels=chs, num_classes=cfg.num_classes, act_layer=act,
                   base_width=base_width)
    # CIFAR stem (He et al. 2016, sec. 4.2): one 3x3 stride-1 conv, no max-pool.
    model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    model.act1 = act(inplace=True)
    model.maxpool = nn.Identity()
    # Rebuild the stages from the narrower stem (timm's stem is fixed at 64 channels).
    stages, _ = make_blocks((block,) * len(chs), chs, layers, stem, base_width=base_width,
                            act_layer=act, norm_layer=nn.BatchNorm2d)
    for name, stage in stages:
        setattr(model, name, stage)
    if len(chs) == 3:
        # timm's forward_features always calls layer1..layer4; a 3-stage net has no layer4.
        model.layer4 = nn.Identity()
    model.init_weights(zero_init_last=True)
    return model


register_model("resnet18", "CIFAR ResNet-18 (timm ResNet, 3x3 stem, no max-pool)")(
    partial(cifar_resnet, BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64))
register_model("resnet34", "CIFAR ResNet-34")(
    partial(cifar_resnet, BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), 64))
register_model("resnet50", "CIFAR ResNet-50 (Bottleneck)")(
    partial(cifar_resnet, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64))
register_model("wide_resnet50_2", "CIFAR Wide ResNet-50-2 (Bottleneck, base width 128)")(
    partial(cifar_resnet, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64, base_width=128))
for _n, _depth in ((3, 20), (9, 56), (18, 110)):
    register_model(f"resnet{_depth}", f"3-stage CIFAR ResNet-{_depth} (16/32/64 channels, {_n} blocks a stage)")(
        partial(cifar_resnet, BasicBlock, (_n, _n, _n), (16, 32, 64), 16))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
