"""L1-norm filter pruning: Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for
Efficient ConvNets", ICLR 2017 (arXiv 1608.08710). Description: docs/methods/l1_filter.md.

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
  share of the filters of the chosen layers, in one step, all scores computed on the
  unpruned network (the paper's independent strategy). VGG-16-pruned-A (Table 2): half
  the filters of conv 1 and conv 8-13, `configs/methods/l1_filter_vgg16_A.yaml`.

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
from activations, so autocast plays no part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch_pruning as tp
from torch import nn

from bench.config import ConfigError, opt
from bench.targets import Target
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
    """L1-norm filter pruning (Li et al. 2017) through Torch-Pruning: train, prune, fine-tune."""

    @dataclass
    class Config(PruningConfig):
        pruning_ratio: Optional[float] = opt(
            None, "instead of a target: remove this share of the filters of each layer in prune_layers "
                  "(Li et al. Table 2, e.g. 0.5 for VGG-16-pruned-A; set target_params: null)")
        prune_layers: list[int] = opt([], "1-based indices of the convs to prune, in forward order (empty: "
                                          "every conv the scope allows); VGG-16-pruned-A: [1, 8, ..., 13]")
        scope: str = opt("block_internal", "ResNets: block_internal prunes only a block's first conv (Li et al. "
                                           "sec. 4.2); all prunes every dependency group, residual stream "
                                           "included. VGG: every conv either way",
                         choices=("block_internal", "all"))
        global_pruning: bool = opt(False, "rank filters across layers instead of within each layer "
                                          "(Torch-Pruning's global scope; Li et al. prune layer by layer)")
        round_to: int = opt(1, "keep channel counts multiples of this (1: no rounding; Torch-Pruning round_to)")
        max_layer_ratio: float = opt(1.0, "at most this share of a layer's channels is removed "
                                          "(Torch-Pruning max_pruning_ratio, default 1.0; a layer keeps >= 1)")
        iterative_steps: int = opt(1, "pruning events (1: one-shot, Li et al.); more spreads them "
                                      "step_every_epochs apart from transform_epoch, the removed share growing linearly")
        step_every_epochs: int = opt(1, "epochs between pruning events when iterative_steps > 1")
        importance: str = opt("l1", "filter score: l1 (Li et al.) or random (Torch-Pruning's RandomImportance "
                                    "from the method's generator: the random structured-pruning control)",
                              choices=("l1", "random"))
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
            if not 0.0 < self.max_layer_ratio <= 1.0:
                raise ConfigError(f"method.max_layer_ratio must be in (0, 1], got {self.max_layer_ratio}")

    def __init__(self, cfg: "L1Filter.Config", ctx):
        super().__init__(cfg, ctx)
        self.events = prune_schedule(cfg.transform_epoch, ctx.epochs, cfg.iterative_steps, cfg.step_every_epochs)

    def check(self, model: nn.Module) -> None:
        selected_convs(model, self.cfg.scope, self.cfg.prune_layers)    # fail now, not after training

    def scorer(self) -> tp.importance.Importance:
        """The filter score: Li et al.'s L1 norm, or uniform random scores (the control)."""
        if self.cfg.importance == "random":
            return SeededRandomImportance(self.ctx.generator)
        return FirstLayerL1()

    # ---- the pruning -----------------------------------------------------------------
    def make_pruner(self, model: nn.Module, chosen: list[nn.Conv2d], **kw) -> tp.pruner.BasePruner:
        cfg = self.cfg
        kw.setdefault("global_pruning", cfg.global_pruning)
        return tp.pruner.BasePruner(
            model, self.ctx.example_inputs, importance=self.scorer(),
            ignored_layers=ignored_layers(model, chosen), round_to=cfg.round_to if cfg.round_to > 1 else None,
            max_pruning_ratio=cfg.max_layer_ratio, **kw)

    def prune(self, model: nn.Module, k: int = 1, n: int = 1) -> tuple[nn.Module, dict[str, Any]]:
        """Event k of n: a pruned copy of `model` and what happened."""
        cfg, ctx = self.cfg, self.ctx
        example = ctx.example_inputs
        model, training = detached_copy(model), model.training
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
                hint = ("it cannot be reached by pruning the allowed layers; raise it or use method.scope=all"
                        if value > limit else "a step removed too much; lower method.round_to")
                goal.check(achieved, hint)
        model.train(training)          # the replay in step_to may hand back the copy made in eval mode
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
        n_steps = math.ceil(cfg.max_layer_ratio / cfg.search_step_frac)
        spare = detached_copy(model)
        pruner = self.make_pruner(model, chosen, pruning_ratio=cfg.max_layer_ratio, iterative_steps=n_steps)
        kind, dense = goal.kind, limit / goal.frac
        value, steps = step_until(pruner, lambda: measure(model, example, kind), limit)
        if value > limit or goal.within(value / dense) or steps == 0:
            return model, value, {"steps": steps, "groups_of_last_step": 0}
        widths = channels(model)                      # every layer's width after the overshooting step
        model, chosen = spare, selected_convs(spare, cfg.scope, cfg.prune_layers)
        pruner = self.make_pruner(model, chosen, pruning_ratio=cfg.max_layer_ratio, iterative_steps=n_steps)
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
