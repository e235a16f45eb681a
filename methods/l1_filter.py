"""The structured-pruning family over Torch-Pruning, and its first member, L1-norm filter
pruning: Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets",
ICLR 2017 (arXiv 1608.08710).

`L1Filter` is the family's one code path (registered as `l1_filter`, whose defaults are Li
et al.'s): a filter score from the `IMPORTANCES` registry, uniform (per-layer) or global
allocation, one-shot or iterative events, the target search below, and an optional
sparse-learning phase in which Torch-Pruning's own regularising pruner adds its penalty
to the gradients (`before_step`) from `sl_start_epoch` until the first pruning event. The
other rows (methods/pruning_baselines.py: depgraph, slimming, taylor, fpgm) are this class
with their papers' defaults; docs/methods/filter_pruning.md states the equations.

A filter's importance is the sum of its absolute kernel weights, `s_j = sum |F_j|`
(paper sec. 3.1); in each pruned layer the filters with the smallest `s_j` are removed
together with their feature maps, the matching BN entries and the kernels of the next
layer that read them (sec. 3.1, steps 1-4). Everything goes through Torch-Pruning
(`tp.pruner.BasePruner`, `tp.importance.MagnitudeImportance(p=1, normalizer=None,
group_reduction="first")`: the L1 norm of the group's first layer, i.e. the filter
itself); no hand-written channel surgery. The classifier is in `ignored_layers`.

Schedule: train `transform_epoch` epochs, prune once, fine-tune for the rest of the same
budget (the paper prunes a trained network and retrains, sec. 4). Option:
`iterative_steps` pruning events every `step_every_epochs` epochs, the removed share
growing linearly to the target.

How much is pruned, one of:
- `target_params` / `target_macs` (fraction of dense): Torch-Pruning's `pruning_ratio`
  is a *channel* ratio (parameters fall by about 1-(1-p)^2), so an iterative pruner is
  stepped, `search_step_frac` of every layer's channels a step (or of all channels with
  `global_pruning`), until the target is reached; the result must lie within
  `target_tol_frac` of the target (relative), at or below it where the granularity allows. **Choice**: equal-width layers lose a channel on
  the same step, so if the last step jumps past the tolerance it is replayed one
  dependency group at a time (forward order) and stopped once the target is met, so
  some layers end one step narrower than others. **Choice/deviation**: importance is re-computed
  after every small step, so a filter's L1 norm no longer counts kernels that read
  feature maps already removed: this is the paper's "greedy" cross-layer strategy
  (sec. 3.3), not its "independent" one.
- `pruning_ratio` with `prune_layers` (1-based conv indices in forward order): a fixed
  share of the filters of each chosen layer (with `global_pruning`: of the chosen layers'
  channels together, one Torch-Pruning scope, so the per-layer shares can differ), in one
  step, all scores computed on the unpruned network (the paper's independent strategy).
  VGG-16-pruned-A (Table 2): half the filters of conv 1 and conv 8-13,
  `configs/methods/l1_filter_vgg16_A.yaml`.

ResNets (`scope`): `block_internal` prunes only the first conv of each residual block
(paper sec. 4.2: the second conv's output is tied to the shortcut; Bottleneck: conv1
and conv2); `all` prunes every Torch-Pruning dependency group, residual-stream groups
(stem, every block's last conv and the projection shortcuts of a stage) included,
scored by the group's first layer. `global_pruning` ranks filters across layers
(Torch-Pruning's global scope; the paper prunes layer by layer); `round_to` keeps
channel counts multiples of a number.

Random structured pruning (`importance: random`, the suites' `random_filter` control, the
sanity baseline for any criterion; Blalock et al. 2020): the same pruner, schedule, layer
choice and target search with Torch-Pruning's `RandomImportance` instead of the L1 norm,
its scores drawn from the method's own generator (seeded from the run seed). Under local
pruning the number of channels removed from each layer depends only on the target, not on
the scores, so it prunes the same number of channels per layer as L1 at the same target.

Statistics: the L1 scores are computed from the weights as stored (fp32 parameters), never
from activations, so autocast plays no part. The Taylor scores are the one exception in the
family: gradients of the training loss on `calibration_images` labelled training images,
in fp32 and eval mode, summed over the images and all-reduced under torchrun.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch_pruning as tp
from torch import nn

from bench.config import ConfigError, opt
from bench.models import model_defaults
from bench.targets import Target
from bench import dist
from methods._pruning import (PruningConfig, ScheduledPruning, SeededRandomImportance, block_internal_convs,
                              channel_table, channels, classifier_of, conv_layers, dense_value,
                              detached_copy, eval_mode, event_fraction, measure, prune_out_channels, prune_schedule,
                              sizes)
from methods.base import register


class FirstLayerL1(tp.importance.MagnitudeImportance):
    """Li et al.'s criterion, `MagnitudeImportance(p=1, normalizer=None, group_reduction="first")`:
    the L1 norm of each filter of the group's first (root) layer. The stock class computes
    the norms of every coupled layer and then keeps only the first; this passes it the
    first entry alone, which gives the same scores (tested) at a fraction of the cost
    when the pruner is stepped hundreds of times."""

    def __init__(self):
        super().__init__(p=1, normalizer=None, group_reduction="first")

    def __call__(self, group):
        return super().__call__(group[:1])


class FilterDistanceSum(tp.importance.Importance):
    """FPGM (He et al., CVPR 2019, sec. 3.3-3.4): a filter near the geometric median of its
    layer's filters is the one the others can best stand in for. The geometric median is
    approximated, as in the paper, by the filter minimising the summed Euclidean distance to
    all the layer's filters, so the score of filter i is

        s_i = sum_j || F_i - F_j ||_2        (F: the layer's filters, flattened)

    and the smallest s_i are removed. Only the group's first (root) layer is scored: the
    paper ranks a layer's own filters. Torch-Pruning's `FPGMImportance` instead measures
    distances between the element-wise powers |F|^p and averages them over every coupled
    layer (consumers' input slices included), which is not the paper's quantity."""

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        dep, idxs = group[0]
        w = dep.target.module.weight.detach()[list(idxs)].flatten(1).float()
        return torch.cdist(w[None], w[None]).squeeze(0).sum(1)


@dataclass(frozen=True)
class Criterion:
    """One entry of the importance registry: how to build the scorer, what it needs.

    `make(method)` returns a Torch-Pruning importance; `regulariser` is the Torch-Pruning
    pruner whose `regularize()` is the criterion's sparse-learning penalty (None: the
    criterion has none, `reg` must stay 0); `default_reg(model_name)` is the penalty's
    paper default (used when `reg` is null); `gradients`: scores read `.grad`, so labelled
    calibration batches are back-propagated at the prune point."""
    make: Callable[["L1Filter"], tp.importance.Importance]
    help: str
    regulariser: Optional[type] = None
    default_reg: Callable[[str], float] = lambda model_name: 0.0
    gradients: bool = False


def default_max_layer_ratio(model_name: str) -> float:
    """The largest share of one layer's channels a globally ranked criterion may remove
    when `max_layer_ratio` is null: the model family's "pruning.max_layer_ratio"
    (bench.models.model_defaults), else 1.0. 0.7 on VGG (bench/models/vgg.py), as in
    Torch-Pruning's reproduction of DepGraph on VGG-19 (benchmarks/scripts/prune/cifar/global_group_gsl.sh,
    `--max-sparsity 0.7`), 1.0 elsewhere (its ResNet-56 scripts set none). Without it, a
    global ranking after a short training collapses VGG's early layers (measured once:
    docs/methods/filter_pruning.md)."""
    return model_defaults(model_name).get("pruning.max_layer_ratio", 1.0)


def _slimming_reg(model_name: str) -> float:
    """The model family's "slimming.reg", else 1e-4. Liu et al. 2017 sec. 4.3 (grid search
    over 1e-3, 1e-4, 1e-5 on CIFAR-10) use 1e-4 for VGGNet and 1e-5 for ResNet and DenseNet:
    bench/models/vgg.py and resnet.py say so; a family that names none gets VGG's 1e-4."""
    return model_defaults(model_name).get("slimming.reg", 1e-4)


# DepGraph's penalty: torch-pruning's CIFAR reproduction script (its --reg default, 5e-4, which its
# ResNet-56 group_sl run at 2.11x uses).
DEPGRAPH_REG = 5e-4

IMPORTANCES: dict[str, Criterion] = {
    "l1": Criterion(lambda m: FirstLayerL1(),
                    "Li et al. 2017: L1 norm of the filter (the group's first layer)"),
    "random": Criterion(lambda m: SeededRandomImportance(m.ctx.generator),
                        "uniform random scores from the method's generator (the control)"),
    "group_norm": Criterion(lambda m: tp.importance.GroupMagnitudeImportance(p=2),
                            "DepGraph (Fang et al. 2023): squared L2 norm of the channel over every coupled "
                            "layer, group mean, divided by its mean over the group's channels",
                            regulariser=tp.pruner.GroupNormPruner, default_reg=lambda n: DEPGRAPH_REG),
    "bn_scale": Criterion(lambda m: tp.importance.BNScaleImportance(normalizer=None),
                          "network slimming (Liu et al. 2017): |gamma| of the channel's BatchNorm scale "
                          "(mean over coupled BNs), unnormalised so a global ranking is one threshold",
                          regulariser=tp.pruner.BNScalePruner, default_reg=_slimming_reg),
    # Molchanov et al. 2019's weight-sum variant ("Taylor FO on weights": their eq. 3 term summed over the
    # structure) with |g w| for (g w)^2, the gradient of the loss summed over all calibration images, and the
    # consumers' input slices added to the filter (Torch-Pruning's GroupTaylorImportance, multivariable=False);
    # not their gate/BN variant (sum_s g_s w_s)^2. docs/methods/taylor.md.
    "taylor": Criterion(lambda m: tp.importance.GroupTaylorImportance(),
                        "first-order Taylor (Molchanov et al. 2019, weight-sum variant with |g w|): sum of "
                        "|w dL/dw| over the channel's weights in every coupled conv/linear layer, group mean, "
                        "divided by its mean", gradients=True),
    "fpgm": Criterion(lambda m: FilterDistanceSum(),
                      "FPGM (He et al. 2019): summed Euclidean distance of the filter to its layer's filters"),
    "lamp": Criterion(lambda m: tp.importance.LAMPImportance(p=2),
                      "LAMP (Lee et al. 2021): squared group L2 norm divided by the sum of the larger ones"),
}


def selected_convs(model: nn.Module, scope: str, prune_layers: list[int]) -> list[nn.Conv2d]:
    """The convs whose filters may be pruned: the scope's convs, restricted to
    `prune_layers` (1-based indices among all convs in forward order) if given."""
    allowed = block_internal_convs(model) if scope == "block_internal" else [m for _, m in conv_layers(model)]
    if not prune_layers:
        return allowed
    convs = conv_layers(model)
    chosen = []
    for i in prune_layers:
        if not 1 <= i <= len(convs):
            raise ConfigError(f"method.prune_layers: conv {i} does not exist; the model has convs 1..{len(convs)}")
        name, conv = convs[i - 1]
        if not any(conv is a for a in allowed):
            raise ConfigError(f"method.prune_layers: conv {i} ({name}) is not block-internal; "
                              f"use method.scope=all or drop it from prune_layers")
        chosen.append(conv)
    return chosen


def ignored_layers(model: nn.Module, chosen: list[nn.Conv2d]) -> list[nn.Module]:
    """Classifier and every conv not chosen: Torch-Pruning then skips any group whose
    output channels include one of them (residual-stream groups under block_internal)."""
    keep = {id(c) for c in chosen}
    return [classifier_of(model)] + [m for _, m in conv_layers(model) if id(m) not in keep]


def step_until(pruner: tp.pruner.BasePruner, value: Callable[[], int], limit: float) -> tuple[int, int]:
    """Step an iterative pruner until `value() <= limit` or its schedule ends.
    Returns (final value, steps taken)."""
    v, steps = value(), 0
    while v > limit and pruner.current_step < pruner.iterative_steps:
        pruner.step()
        steps += 1
        v = value()
    return v, steps


@register("l1_filter")
class L1Filter(ScheduledPruning):
    """L1-norm filter pruning (Li et al. 2017) through Torch-Pruning: train, prune, fine-tune;
    with another `importance` and `reg` > 0, the structured-pruning family (module docstring)."""

    @dataclass
    class Config(PruningConfig):
        pruning_ratio: Optional[float] = opt(
            None, "instead of a target: the share of channels removed from the layers in prune_layers, in "
                  "one step (set target_params: null). global_pruning false: this share of each layer's "
                  "filters (Li et al. Table 2, e.g. 0.5 for VGG-16-pruned-A); true: this share of those "
                  "layers' channels taken together, ranked in one scope, so the layers' shares can differ")
        prune_layers: list[int] = opt([], "1-based indices of the convs to prune, in forward order (empty: "
                                          "every conv the scope allows); VGG-16-pruned-A: [1, 8, ..., 13]")
        scope: str = opt("block_internal", "ResNets: block_internal prunes only channels inside a block (BasicBlock "
                                           "conv1, Bottleneck conv1 and conv2; Li et al. sec. 4.2); all prunes every dependency group, residual stream "
                                           "included. VGG: every conv either way",
                         choices=("block_internal", "all"))
        global_pruning: bool = opt(False, "rank filters across layers instead of within each layer "
                                          "(Torch-Pruning's global scope; Li et al. prune layer by layer)")
        round_to: int = opt(1, "keep channel counts multiples of this (1: no rounding; Torch-Pruning round_to)")
        max_layer_ratio: Optional[float] = opt(1.0, "at most this share of a layer's channels is removed "
                                                    "(Torch-Pruning max_pruning_ratio, default 1.0; a layer keeps "
                                                    ">= 1); null: 0.7 on VGG, 1.0 elsewhere (Torch-Pruning's "
                                                    "VGG-19 DepGraph script, --max-sparsity 0.7)")
        iterative_steps: int = opt(1, "pruning events (1: one-shot, Li et al.); more spreads them "
                                      "step_every_epochs apart from transform_epoch, the removed share growing linearly")
        step_every_epochs: int = opt(1, "epochs between pruning events when iterative_steps > 1")
        importance: str = opt("l1", "filter score: " + "; ".join(f"{k}: {c.help}" for k, c in IMPORTANCES.items()),
                              choices=tuple(IMPORTANCES))
        reg: Optional[float] = opt(0.0, "sparse learning: strength of the criterion's penalty, added to the "
                                        "gradients from sl_start_epoch until the first pruning event by "
                                        "Torch-Pruning's regularising pruner (group_norm: GroupNormPruner, "
                                        "bn_scale: BNScalePruner); 0: none (Li et al.); null: the paper default "
                                        f"(group_norm {DEPGRAPH_REG:g}: torch-pruning's CIFAR reproduction; "
                                        "bn_scale: 1e-4 VGG, 1e-5 ResNet, Liu et al. 2017 sec. 4.3)")
        sl_start_epoch: Optional[int] = opt(
            None, "sparse learning starts after this many completed epochs; null: round(2/3 of the epochs "
                  "before the first pruning event), at most one before it (torch-pruning's reproduction: 200 "
                  "training, then 100 sparse-learning epochs)")
        sl_alpha: float = opt(4.0, "group_norm penalty: channel j's penalty is scaled by 2^(sl_alpha (max I - I_j) "
                                   "/ (max I - min I)) (DepGraph; GroupNormPruner alpha=4)")
        calibration_images: int = opt(3200, "taylor: labelled training images whose loss gradients score the "
                                            "filters at each pruning event (50 batches of 64, the torch-pruning "
                                            "authors' ImageNet pruning script, --taylor-batchs 50)")
        calibration_batch_size: int = opt(64, "taylor: images per forward/backward pass of the calibration")
        search_step_frac: float = opt(0.0025, "targets: channel-ratio increment of each step of the stepping "
                                              "pruner (small enough that one step moves parameters by well under "
                                              "the 2% tolerance at usual targets)")

        def validate(self) -> None:
            super().validate()
            if self.pruning_ratio is not None:
                if self.targets_set():
                    raise ConfigError("method: set either pruning_ratio or a target, not both "
                                      "(e.g. method.target_params=null)")
                if not 0.0 < self.pruning_ratio < 1.0:
                    raise ConfigError(f"method.pruning_ratio must be in (0, 1), got {self.pruning_ratio}")
            elif not self.targets_set():
                raise ConfigError("method: l1_filter needs target_params, target_macs or pruning_ratio")
            if self.round_to < 1 or self.iterative_steps < 1 or self.step_every_epochs < 1:
                raise ConfigError("method.round_to, iterative_steps and step_every_epochs must be >= 1")
            if not 0.0 < self.search_step_frac <= 0.1:
                raise ConfigError(f"method.search_step_frac must be in (0, 0.1], got {self.search_step_frac}")
            if self.max_layer_ratio is not None and not 0.0 < self.max_layer_ratio <= 1.0:
                raise ConfigError(f"method.max_layer_ratio must be in (0, 1], got {self.max_layer_ratio}")
            crit = IMPORTANCES[self.importance]
            if self.reg is not None and self.reg < 0:
                raise ConfigError(f"method.reg must be >= 0 (0: no sparse learning), got {self.reg}")
            if (self.reg is None or self.reg > 0) and crit.regulariser is None:
                with_reg = [k for k, c in IMPORTANCES.items() if c.regulariser is not None]
                raise ConfigError(f"method.reg: importance {self.importance} has no sparse-learning penalty; set "
                                  f"method.reg=0 or use importance {' or '.join(with_reg)}")
            if self.sl_start_epoch is not None and self.sl_start_epoch < 0:
                raise ConfigError(f"method.sl_start_epoch must be >= 0, got {self.sl_start_epoch}")
            if self.calibration_images < 1 or self.calibration_batch_size < 1:
                raise ConfigError("method.calibration_images and calibration_batch_size must be >= 1")

    def __init__(self, cfg: "L1Filter.Config", ctx):
        super().__init__(cfg, ctx)
        self.events = prune_schedule(cfg.transform_epoch, ctx.epochs, cfg.iterative_steps, cfg.step_every_epochs)
        self.criterion = IMPORTANCES[cfg.importance]
        self.reg = self.criterion.default_reg(ctx.model_name) if cfg.reg is None else cfg.reg
        self.max_ratio = (default_max_layer_ratio(ctx.model_name) if cfg.max_layer_ratio is None
                          else cfg.max_layer_ratio)
        self.sl_epochs = self.sparse_learning_epochs()
        self.regulariser: Optional[tp.pruner.BasePruner] = None     # built on the live model, rebuilt after resume

    # ---- sparse learning ---------------------------------------------------------------
    def sparse_learning_epochs(self) -> tuple[int, int]:
        """[start, end) in epochs (0-based, as ctx.epoch during training) in which the
        penalty is applied: from sl_start_epoch to the first pruning event; empty when reg
        is 0."""
        first = self.events[0]
        if self.reg == 0:
            return (first, first)
        start = self.cfg.sl_start_epoch
        if start is None:
            start = max(0, min(round(2 / 3 * first), first - 1))
        if start >= first:
            raise ConfigError(f"method: sparse learning (reg={self.reg:g}) needs epochs before the first pruning "
                              f"event at epoch {first}; lower method.sl_start_epoch (now {start}) or prune later")
        return (start, first)

    def in_sparse_learning(self) -> bool:
        return self.sl_epochs[0] <= self.ctx.epoch < self.sl_epochs[1]

    def make_regulariser(self, model: nn.Module) -> tp.pruner.BasePruner:
        """Torch-Pruning's regularising pruner on the live model (same scorer, layer choice and
        allocation as the pruning), traced in eval mode so no BN statistic moves."""
        cfg = self.cfg
        chosen = selected_convs(model, cfg.scope, cfg.prune_layers)
        with eval_mode(model):
            return self.criterion.regulariser(
                model, self.ctx.example_inputs, importance=self.scorer(), reg=self.reg,
                ignored_layers=ignored_layers(model, chosen), global_pruning=cfg.global_pruning,
                round_to=cfg.round_to if cfg.round_to > 1 else None, max_pruning_ratio=self.max_ratio)

    def before_step(self, model: nn.Module) -> None:
        """In the sparse-learning epochs: add the criterion's penalty to the gradients
        (GroupNormPruner: reg * gamma_j * w on every weight slice of channel j, DepGraph's
        group-lasso-like push; BNScalePruner: reg * sign(gamma) on every BN scale, the
        subgradient of slimming's L1 term). The gradients are already all-reduced, the
        weights identical on every rank, so every rank adds the same."""
        if self.reg == 0 or not self.in_sparse_learning():
            return
        if self.regulariser is None:
            self.regulariser = self.make_regulariser(model)
        if isinstance(self.regulariser, tp.pruner.GroupNormPruner):
            self.regulariser.regularize(model, alpha=2 ** self.cfg.sl_alpha)
        else:
            self.regulariser.regularize(model)

    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        if self.reg > 0 and self.sl_epochs[0] == 0:
            self.regulariser = self.make_regulariser(model)
        return super().on_train_start(model)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        if self.reg > 0 and self.sl_epochs[0] <= epoch < self.sl_epochs[1]:
            if self.regulariser is None:                 # the phase starts now (or resumed)
                self.regulariser = self.make_regulariser(model)
            self.regulariser.update_regularizer()        # once per epoch, as Torch-Pruning asks
        elif epoch >= self.sl_epochs[1]:
            self.regulariser = None                      # the phase is over; the model is about to change
        return super().on_epoch_end(model, epoch)

    def check(self, model: nn.Module) -> None:
        selected_convs(model, self.cfg.scope, self.cfg.prune_layers)    # fail now, not after training

    def scorer(self) -> tp.importance.Importance:
        """The filter score of `importance` (IMPORTANCES): Li et al.'s L1 norm, random scores
        (the control), or another criterion of the family."""
        return self.criterion.make(self)

    def calibrate_gradients(self, model: nn.Module) -> None:
        """`.grad` of every parameter of `model` = d/dw of the training loss summed over the
        `calibration_images` labelled images (fp32, eval mode: BN uses its running statistics
        and none of them moves). Under torchrun every rank back-propagates its shard of each
        batch and the sums are all-reduced, so every rank holds the full-set gradient."""
        cfg, ctx = self.cfg, self.ctx
        if ctx.criterion is None:
            raise RuntimeError(f"method {self.name}: importance {cfg.importance} needs the training loss (ctx.criterion)")
        model.zero_grad(set_to_none=True)
        with eval_mode(model), torch.enable_grad():
            for x, y in ctx.calibration(cfg.calibration_images, cfg.calibration_batch_size, labels=True):
                if len(y):
                    (ctx.criterion(model(x.float()), y) * len(y)).backward()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce_sum_(p.grad)

    # ---- the pruning -----------------------------------------------------------------
    def make_pruner(self, model: nn.Module, chosen: list[nn.Conv2d], **kw) -> tp.pruner.BasePruner:
        cfg = self.cfg
        kw.setdefault("global_pruning", cfg.global_pruning)
        return tp.pruner.BasePruner(
            model, self.ctx.example_inputs, importance=self.scorer(),
            ignored_layers=ignored_layers(model, chosen), round_to=cfg.round_to if cfg.round_to > 1 else None,
            max_pruning_ratio=self.max_ratio, **kw)

    def prune(self, model: nn.Module, k: int = 1, n: int = 1) -> tuple[nn.Module, dict[str, Any]]:
        """Event k of n: a pruned copy of `model` and what happened."""
        cfg, ctx = self.cfg, self.ctx
        example = ctx.example_inputs
        model, training = detached_copy(model), model.training
        if self.criterion.gradients:
            self.calibrate_gradients(model)
        before, ch_before = sizes(model, example), channels(model)
        chosen = selected_convs(model, cfg.scope, cfg.prune_layers)
        info: dict[str, Any] = {}
        with eval_mode(model):
            target = cfg.target()
            if target is None:
                # Fixed ratio of the original width after event k: r k / n; relative to now:
                r_now = 1 - (1 - cfg.pruning_ratio * k / n) / (1 - cfg.pruning_ratio * (k - 1) / n)
                pruner = self.make_pruner(model, chosen, pruning_ratio=0.0,
                                          pruning_ratio_dict={tuple(chosen): r_now}, iterative_steps=1)
                pruner.step()
                info.update({"pruning_ratio_step": r_now, "steps": 1})
            else:
                kind, frac = target.kind, target.frac
                goal = Target(kind, event_fraction(frac, k, n), cfg.target_tol_frac)
                limit = goal.goal(dense_value(ctx, kind))
                model, value, steps = self.step_to(model, chosen, goal, limit)
                achieved = value / dense_value(ctx, kind)
                info.update({"target": kind, "target_frac": goal.frac, "achieved_frac": achieved, **steps})
                hint = ("it cannot be reached by pruning the allowed layers; raise it, use method.scope=all "
                        f"or raise method.max_layer_ratio (now {self.max_ratio:g})"
                        if value > limit else "a step removed too much; lower method.round_to")
                goal.check(achieved, hint)
        model.train(training)          # the replay in step_to may hand back the copy made in eval mode
        for p in model.parameters():   # calibration gradients (taylor) are not the model's business
            p.grad = None
        after = sizes(model, example)
        info.update({"params_before": before["params"], "params_after": after["params"],
                     "macs_before": before["macs"], "macs_after": after["macs"],
                     "channels": channel_table(ch_before, channels(model))})
        return model, info

    def step_to(self, model: nn.Module, chosen: list[nn.Conv2d], goal: Target, limit: float
                ) -> tuple[nn.Module, int, dict[str, int]]:
        """Step an iterative pruner on `model` until its `goal.kind` count is <= `limit`.

        Under local pruning every layer loses the same share of channels per step, so
        layers of equal width lose a channel on the same step and the last step can jump
        past the tolerance on small models (or with round_to). If it does, the steps before
        it are replayed on a copy kept aside and the last step is applied one dependency
        group at a time, in Torch-Pruning's group order (forward order here), each group cut
        to its width after that step by the same ranking (L1, or random scores), until the target is met (or
        one group before, if that is within the tolerance above the target and the group
        would overshoot it below)."""
        cfg, example = self.cfg, self.ctx.example_inputs
        n_steps = math.ceil(self.max_ratio / cfg.search_step_frac)
        spare = detached_copy(model, grads=self.criterion.gradients)
        pruner = self.make_pruner(model, chosen, pruning_ratio=self.max_ratio, iterative_steps=n_steps)
        kind, dense = goal.kind, limit / goal.frac
        value, steps = step_until(pruner, lambda: measure(model, example, kind), limit)
        if value > limit or goal.within(value / dense) or steps == 0:
            return model, value, {"steps": steps, "groups_of_last_step": 0}
        widths = channels(model)                      # every layer's width after the overshooting step
        model, chosen = spare, selected_convs(spare, cfg.scope, cfg.prune_layers)
        pruner = self.make_pruner(model, chosen, pruning_ratio=self.max_ratio, iterative_steps=n_steps)
        for _ in range(steps - 1):
            pruner.step()
        graph, names = pruner.DG, {m: n for n, m in model.named_modules()}
        roots = [g[0].dep.target.module for g in graph.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)]
        value, done = measure(model, example, kind), 0
        for root in roots:
            surplus = root.out_channels - widths[names[root]]
            if value <= limit:
                break
            if surplus <= 0:
                continue
            before = (detached_copy(model), value) if goal.within(value / dense) else None
            group = graph.get_pruning_group(root, tp.prune_conv_out_channels, list(range(root.out_channels)))
            prune_out_channels(graph, root, torch.argsort(self.scorer()(group))[:surplus].tolist())
            value, done = measure(model, example, kind), done + 1
            if before is not None and not goal.within(value / dense):
                (model, value), done = before, done - 1      # one group fewer: just above, within tolerance
                break
        return model, value, {"steps": steps - 1, "groups_of_last_step": done}
