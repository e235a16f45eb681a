"""The structured-pruning baselines the field compares against, as members of the one
family of methods/l1_filter.py (same pruner, schedule, allocation and target search;
only the criterion, the sparse-learning phase and the defaults differ). Each class is
one registry entry whose `Config` redeclares the defaults of its paper (or of
Torch-Pruning's reproduction of it), each with its source; every other option is
`l1_filter`'s. Equations, sources and the choices made where they are silent:
docs/methods/<name>.md and docs/methods/filter_pruning.md.

- `depgraph`   Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023: group
               norm over every coupled layer, ranked globally, after a sparse-learning
               phase with Torch-Pruning's `GroupNormPruner`. Without that phase
               (`reg: 0`): the suites' `depgraph_nosl` row.
- `slimming`   Liu et al., "Learning Efficient Convolutional Networks through Network
               Slimming", ICCV 2017: L1 penalty on the BN scales while training
               (`BNScalePruner`), then a global threshold on |gamma|.
- `taylor`     Molchanov et al., "Importance Estimation for Neural Network Pruning",
               CVPR 2019: first-order Taylor scores from labelled calibration batches,
               ranked globally.
- `fpgm`       He et al., "Filter Pruning via Geometric Median", CVPR 2019: per layer, the
               filters closest to the others (summed distance), the same share in every layer.

Budget (the quick suite trains 4 epochs): these rows prune at the same point as
`l1_filter` and `random_filter` (`transform_epoch`), and the sparse-learning phase runs
in the epochs before it (`sl_start_epoch`; docs/methods/filter_pruning.md says what that
changes against the papers' 100+ epoch phases).

Statistics: scores from the stored fp32 weights; taylor's gradients in fp32 on the
calibration images (all-reduced under torchrun); the penalties act on the all-reduced
gradients in `before_step`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bench.config import opt
from methods.base import register
from methods.l1_filter import IMPORTANCES, L1Filter

GLOBAL = "rank channels across layers (Torch-Pruning's global scope); false: the same share in every layer"
SCOPE = ("block_internal", "all")
MAX_LAYER = ("at most this share of a layer's channels is removed; null: 0.7 on VGG (Torch-Pruning's VGG-19 "
             "DepGraph reproduction, --max-sparsity 0.7: a global ranking after a short training otherwise "
             "strips VGG's early layers to a few channels), 1.0 elsewhere (its ResNet-56 scripts set none)")


@register("depgraph")
class DepGraph(L1Filter):
    """DepGraph group-norm pruning with its sparse-learning phase (Fang et al. 2023)."""

    @dataclass
    class Config(L1Filter.Config):
        importance: str = opt("group_norm", "filter score (l1_filter's importance registry); paper: group norm "
                                            "over every coupled layer (Fang et al. 2023 sec. 4)",
                              choices=tuple(IMPORTANCES))
        reg: Optional[float] = opt(None, "sparse-learning penalty; null: 5e-4 (torch-pruning's CIFAR reproduction "
                                         "script's --reg default); 0: no sparse learning (the depgraph_nosl row)")
        scope: str = opt("all", "every dependency group, residual stream included (Fang et al. prune whole "
                                "groups; torch-pruning's reproduction ignores only the classifier)", choices=SCOPE)
        global_pruning: bool = opt(True, GLOBAL + "; torch-pruning's ResNet-56 reproduction: --global-pruning")
        max_layer_ratio: Optional[float] = opt(None, MAX_LAYER)


@register("slimming")
class Slimming(L1Filter):
    """Network slimming (Liu et al. 2017): L1 on BN scales while training, prune by |gamma|."""

    @dataclass
    class Config(L1Filter.Config):
        importance: str = opt("bn_scale", "filter score (l1_filter's importance registry); paper: |gamma| of the "
                                          "channel's BN scale (Liu et al. 2017 sec. 3)",
                              choices=tuple(IMPORTANCES))
        reg: Optional[float] = opt(None, "L1 penalty on the BN scales; null: 1e-4 for VGG, 1e-5 for ResNets "
                                         "(Liu et al. 2017 sec. 4.3)")
        sl_start_epoch: Optional[int] = opt(0, "the penalty applies from the start of training (Liu et al. 2017 "
                                               "sec. 3: trained with sparsity regularisation from scratch)")
        scope: str = opt("all", "every channel that has a BN scale (Liu et al. prune any BN channel)", choices=SCOPE)
        global_pruning: bool = opt(True, GLOBAL + "; paper: one global percentile threshold on |gamma| "
                                                  "(Liu et al. 2017 sec. 3)")
        max_layer_ratio: Optional[float] = opt(None, MAX_LAYER)


@register("taylor")
class Taylor(L1Filter):
    """First-order Taylor pruning (Molchanov et al. 2019) from labelled calibration batches."""

    @dataclass
    class Config(L1Filter.Config):
        importance: str = opt("taylor", "filter score (l1_filter's importance registry); paper: first-order "
                                        "Taylor estimate of the loss change (Molchanov et al. 2019 sec. 3)",
                              choices=tuple(IMPORTANCES))
        scope: str = opt("all", "every dependency group (Molchanov et al. prune any neuron, residual ones "
                                "included)", choices=SCOPE)
        global_pruning: bool = opt(True, GLOBAL + "; paper: neurons ranked across all layers "
                                                  "(Molchanov et al. 2019 sec. 4)")
        max_layer_ratio: Optional[float] = opt(None, MAX_LAYER)


@register("fpgm")
class FPGM(L1Filter):
    """Filter pruning via geometric median (He et al. 2019), the same share in every layer."""

    @dataclass
    class Config(L1Filter.Config):
        importance: str = opt("fpgm", "filter score (l1_filter's importance registry); paper: summed distance "
                                      "to the layer's other filters (He et al. 2019 sec. 3.4)",
                              choices=tuple(IMPORTANCES))
        scope: str = opt("all", "every conv (He et al. prune all conv layers of the CIFAR ResNets)", choices=SCOPE)
        global_pruning: bool = opt(False, GLOBAL + "; paper: the same pruning rate in every layer (He et al. 2019 "
                                                   "sec. 4.1)")
