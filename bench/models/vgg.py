"""CIFAR VGG: `vgg11/13/16/19`, timm's `VGG` with BatchNorm after every 3x3 conv, and its
4096-wide 7x7 `ConvMlp` head replaced by global average pooling and one Linear classifier
(the usual CIFAR VGG; the ConvMlp head alone would hold ~100M parameters at 32x32 input).

Structure: a chain (`features`, `pre_logits`, `head`), one stage per conv group between
max-pools (`chain_structure`).
"""
from __future__ import annotations

from functools import partial

from torch import nn
from timm.layers import ClassifierHead
from timm.models.vgg import VGG, cfgs as VGG_CFGS

from bench.config import ModelConfig
from bench.models.base import act_layer, register_model, scaled
from bench.models.structure import Structure, chain_structure

# The authors' PCN settings (github rogerwaleffe/Principal-Component-Networks): transform
# after EPOCHS_BEFORE_COMPRESSION = 1 epoch (vgg16.py); `layers: late` = the convs of the
# last two groups between max-pools (VGG-16: conv 8-13).
# Globally ranked pruning (depgraph, slimming, taylor) removes at most 70% of a layer's
# channels, as in Torch-Pruning's VGG-19 DepGraph script (--max-sparsity 0.7); network
# slimming's L1 penalty is Liu et al.'s 1e-4 for VGGNet (sec. 4.3).
DEFAULTS = {"pcn.transform_epoch": 1, "pcn.late_stages": 2, "pruning.max_layer_ratio": 0.7, "slimming.reg": 1e-4}


def cifar_vgg(depth: int, cfg: ModelConfig) -> tuple[nn.Module, Structure]:
    layout = [v if v == "M" else scaled(v, cfg.width) for v in VGG_CFGS[f"vgg{depth}"]]
    # mlp_ratio makes the throw-away ConvMlp 1 unit wide so that building it costs nothing.
    model = VGG(layout, num_classes=cfg.num_classes, norm_layer=nn.BatchNorm2d,
                act_layer=act_layer(cfg), mlp_ratio=1 / 4096)
    model.pre_logits = nn.Identity()
    model.head = ClassifierHead(model.num_features, cfg.num_classes, pool_type="avg")
    model.head_hidden_size = model.num_features
    items = [(f"features.{n}", m) for n, m in model.features.named_children()]
    items += [("pre_logits", model.pre_logits)] + [(f"head.{n}", m) for n, m in model.head.named_children()]
    return model, chain_structure(items, "vgg")


for _d in (11, 13, 16, 19):
    register_model(f"vgg{_d}", f"CIFAR VGG-{_d}: BN, 3x3 convs, global avg pool, one Linear", DEFAULTS)(
        partial(cifar_vgg, _d))
