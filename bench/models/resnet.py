"""CIFAR ResNets over timm's `ResNet`:

- `resnet18/34/50`, `wide_resnet50_2`: the ImageNet layouts with the CIFAR stem (3x3
  stride-1 conv, no max-pool).
- `resnet20/56/110`: the 3-stage CIFAR ResNets of He et al. 2016 (sec. 4.2): 16/32/64
  channels, 3n BasicBlocks, built with timm's `ResNet` and `make_blocks`. Shortcuts that
  change shape use timm's 1x1 conv + BN projection ("option B"), so ResNet-56 has 0.86M
  parameters rather than option A's 0.85M.

Structure: stem `conv1/bn1/act1`, stages `layer1..`, blocks `layerS.B` whose body is
`convJ/bnJ/actJ` (2 convs in a BasicBlock, 3 in a Bottleneck; the last one's activation
follows the residual add) and whose projection shortcut is `downsample.0/1`, classifier `fc`.
"""
from __future__ import annotations

from functools import partial

from torch import nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks

from bench.config import ModelConfig
from bench.models.base import act_layer, register_model, scaled
from bench.models.structure import Block, ConvBN, Stage, Structure

# The authors' PCN settings (github rogerwaleffe/Principal-Component-Networks): transform
# after EPOCHS_BEFORE_COMPRESSION = 5 epochs (resnet/cifar10.py); `layers: late` = the
# inputs read inside the last stage. Network slimming's L1 penalty is Liu et al.'s 1e-5 for
# ResNets (sec. 4.3); globally ranked pruning has no per-layer cap (Torch-Pruning's
# ResNet-56 scripts set none).
DEFAULTS = {"pcn.transform_epoch": 5, "pcn.late_stages": 1, "slimming.reg": 1e-5}
BODY_CONVS = {BasicBlock: 2, Bottleneck: 3}


def resnet_structure(model: ResNet, block: type, n_stages: int) -> Structure:
    n = BODY_CONVS[block]
    stages = []
    for s in range(1, n_stages + 1):
        blocks = []
        for b, blk in enumerate(getattr(model, f"layer{s}")):
            p = f"layer{s}.{b}"
            body = tuple(ConvBN(f"{p}.conv{j}", f"{p}.bn{j}", f"{p}.act{j}" if j < n else None)
                         for j in range(1, n + 1))
            shortcut = None if blk.downsample is None else ConvBN(f"{p}.downsample.0", f"{p}.downsample.1")
            blocks.append(Block(p, body, shortcut, residual=True))
        stages.append(Stage(f"layer{s}", tuple(blocks)))
    return Structure(family="resnet", stem=ConvBN("conv1", "bn1", "act1"), stages=tuple(stages), classifier="fc")


def cifar_resnet(block: type, layers: tuple[int, ...], channels: tuple[int, ...], stem: int,
                 cfg: ModelConfig, base_width: int = 64) -> tuple[nn.Module, Structure]:
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
    return model, resnet_structure(model, block, len(chs))


register_model("resnet18", "CIFAR ResNet-18 (timm ResNet, 3x3 stem, no max-pool)", DEFAULTS)(
    partial(cifar_resnet, BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64))
register_model("resnet34", "CIFAR ResNet-34", DEFAULTS)(
    partial(cifar_resnet, BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), 64))
register_model("resnet50", "CIFAR ResNet-50 (Bottleneck)", DEFAULTS)(
    partial(cifar_resnet, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64))
register_model("wide_resnet50_2", "CIFAR Wide ResNet-50-2 (Bottleneck, base width 128)", DEFAULTS)(
    partial(cifar_resnet, Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), 64, base_width=128))
for _n, _depth in ((3, 20), (9, 56), (18, 110)):
    register_model(f"resnet{_depth}", f"3-stage CIFAR ResNet-{_depth} (16/32/64 channels, {_n} blocks a stage)",
                   DEFAULTS)(partial(cifar_resnet, BasicBlock, (_n, _n, _n), (16, 32, 64), 16))
