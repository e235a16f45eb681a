"""The small dense control: the same family at a narrower width, trained from scratch with
the same budget (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019;
Blalock et al. 2020; docs/methods/dense_small.md).

A method that compresses a network to a parameter target has to beat this network to show
that its procedure adds anything: a dense model of the same family whose width multiplier
gives the parameter count closest to `target_params` x the dense model's count.

Width search. Every channel count is `max(1, round(c x width))` (bench.models.scaled), so
the parameter count is a non-decreasing step function of the width, constant between the
widths (k + 1/2) / c, and no width hits a target exactly in general. The search bisects
over those steps (one width inside each, its midpoint) for the step at which the count
first reaches the target and takes the closer of the two counts on either side of it
(**choice**: the closest, so the small model may land up to the tolerance above its
target while the pruning methods land at or below it). Candidate
models are built on the meta device (no memory). A target that no width meets within
`target_tol_frac` (relative) is not an error: the closest width is trained and the
summary says `within_tol: false`.

What is rebuilt. The harness hands a method the model as built and its name (Context), not
the model config, so the family's other settings are read from the model: the activation
(ReLU, or LeakyReLU with its slope) and the number of classes (the classifier's outputs).
The run's own width is found by the same search for the dense parameter count; a model
that this cannot rebuild exactly (same count) is an error rather than a silently different
control.

Initialisation: built on the CPU under `torch.manual_seed(run seed)` inside a forked RNG,
so the small model is the same for a given seed (paired comparisons across methods use the
same seed) and the harness's global random stream is left as it was.

Scratch-B (`match_dense_macs: true`; the suites' `scratch_b` row). Liu et al. train the
small network twice: Scratch-E, the same epochs as the large model (this method as is),
and Scratch-B, the same training compute. Training MACs are 3 x (forward MACs per image) x
images x epochs for both (the harness's `train_macs`), so matching them means

    E_B = min(2 E, round(E x M_dense / M_small))      (round half up; E_B >= E)

with E = train.epochs, M the forward MACs per image of the dense model as built and of
the small model this method trains, and the cap at twice the epochs as in Liu et al.
(sec. 4, training budget). The rule runs when the config is
built (`resolve_run`): train.epochs becomes E_B, so the run's config.yaml, its hash and
the report see the epoch count, and the option is reset to false, so the run is exactly
a `dense_small` run at E_B epochs; the learning-rate schedule is a function of the step
and the step count (bench.optim), so it stretches over the longer run unchanged. A scratch
curve (dense_small at E, 2E, 4E epochs) is then suite rows with `run: {train: {epochs: N}}`,
and the one at E_B is the same run as scratch_b's.

Statistics: none; the method computes no statistics from activations (it only counts
parameters).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

from bench.config import ConfigError, ModelConfig, RunConfig, opt
from bench.models import build_model, count_params, structure_of
from methods.base import Method, TargetConfig, register

MAX_WIDTH = 16.0             # the search covers widths up to this multiplier (targets are <= the dense width)
SCRATCH_B_CAP = 2            # Scratch-B trains at most this many times the epochs (Liu et al. 2019 sec. 4)


@dataclass
class WidthChoice:
    """A width and the parameter count it gives."""
    width: float
    params: int


def infer_family(model: nn.Module, name: str) -> ModelConfig:
    """The model config of `model` except its width: name, activation (the first one its
    structure names) and classes (its classifier's outputs)."""
    st = structure_of(model)
    act, slope = "relu", ModelConfig().leaky_slope
    acts = [model.get_submodule(u.act) for u in st.units() if u.act is not None]
    if acts and isinstance(acts[0], nn.LeakyReLU):
        act, slope = "leaky_relu", float(acts[0].negative_slope)
    classifier = model.get_submodule(st.classifier)
    if not isinstance(classifier, nn.Linear):
        raise ConfigError(f"dense_small: the classifier {st.classifier} is not a Linear; it needs a model of "
                          f"bench.models")
    return ModelConfig(name=name, width=1.0, act=act, leaky_slope=slope, num_classes=classifier.out_features)


# An architecture's parameter count, conv widths and MACs are pure functions of its model
# config: one process builds each config once (a suite's scratch_b cells repeat the same
# width search for every seed and target, and a meta-device build of a ResNet-50 costs a
# second, most of it in the initialisers). Keys: what is computed, repr of the config (its
# every field), and any further argument.
_BUILT: dict[tuple, object] = {}


def _once(what: str, model_cfg: ModelConfig, compute: Callable[[], object], *extra) -> object:
    key = (what, repr(model_cfg), *extra)
    if key not in _BUILT:
        _BUILT[key] = compute()
    return _BUILT[key]


def _on_meta(model_cfg: ModelConfig) -> nn.Module:
    with torch.device("meta"):
        return build_model(model_cfg)


def params_of(model_cfg: ModelConfig) -> int:
    """Parameter count of the model `model_cfg` builds, built on the meta device."""
    return _once("params", model_cfg, lambda: count_params(_on_meta(model_cfg)))


def meta_count(family: ModelConfig) -> Callable[[float], int]:
    """width -> parameter count of `family` at that width."""
    return lambda width: params_of(dataclasses.replace(family, width=width))


def step_widths(family: ModelConfig, max_width: float) -> list[float]:
    """One width inside every interval on which the parameter count is constant, in
    increasing order, up to `max_width`.

    A channel count is `max(1, round(c x width))` for a channel count c of the model at
    width 1, so the count can change only at widths (k + 1/2) / c; between two such widths
    every layer's channels are fixed. Each interval is represented by its midpoint (never
    by an end, where Python's round-half-to-even would decide)."""
    at_one = dataclasses.replace(family, width=1.0)
    chans = _once("channels", at_one, lambda: {m.out_channels for m in _on_meta(at_one).modules()
                                               if isinstance(m, nn.Conv2d)})
    edges = sorted({(k + 0.5) / c for c in chans for k in range(int(c * max_width) + 1) if (k + 0.5) / c <= max_width})
    return [edges[0] / 2] + [(a + b) / 2 for a, b in zip(edges, edges[1:])] + [edges[-1] + 1.0]


def closest_width(count: Callable[[float], int], widths: list[float], goal: float) -> tuple[WidthChoice, WidthChoice]:
    """(closest, other): the two widths of `widths` (increasing, count non-decreasing)
    on either side of the step at which the count first reaches `goal`, the closer one
    first (the lower one on a tie). Bisection: O(log len(widths)) counts."""
    lo, hi = -1, len(widths) - 1                 # invariant: count(widths[lo]) < goal <= count(widths[hi])
    if count(widths[hi]) < goal:
        raise ConfigError(f"dense_small: no width up to {widths[hi]:.1f} reaches {goal:.0f} parameters")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(widths[mid]) >= goal:
            hi = mid
        else:
            lo = mid
    above = WidthChoice(widths[hi], count(widths[hi]))
    if lo < 0:                                   # even the narrowest model reaches the goal
        return above, above
    below = WidthChoice(widths[lo], count(widths[lo]))
    return (below, above) if goal - below.params <= above.params - goal else (above, below)


def small_width(family: ModelConfig, dense_params: int, target_params: float) -> tuple[WidthChoice, WidthChoice]:
    """(closest, other) widths of `family` for `target_params` x `dense_params` parameters."""
    return closest_width(meta_count(family), step_widths(family, MAX_WIDTH), target_params * dense_params)


def scratch_b_epochs(epochs: int, dense_macs: int, small_macs: int) -> int:
    """Liu et al.'s Scratch-B epoch count: the dense model's training MACs spent on the small
    model, E x M_dense / M_small rounded half up, capped at SCRATCH_B_CAP x E (never below E)."""
    matched = math.floor(epochs * dense_macs / small_macs + 0.5)
    return min(SCRATCH_B_CAP * epochs, max(epochs, matched))


def forward_macs(model_cfg: ModelConfig, image_shape: tuple[int, ...]) -> int:
    """MACs per image of the model `model_cfg` builds (the harness's counter, CPU, eval mode)."""
    from bench.metrics import count_macs

    def compute() -> int:
        with torch.random.fork_rng(devices=[]):
            model = build_model(model_cfg).eval()
        return count_macs(model, torch.zeros(1, *image_shape))[0]
    return _once("macs", model_cfg, compute, tuple(image_shape))


@register("dense_small")
class DenseSmall(Method):
    """A narrower dense model of the same family, trained from scratch: the control any
    compression method at the same parameter target has to beat."""

    @dataclass
    class Config(TargetConfig):
        target_kinds: ClassVar[tuple[str, ...]] = ("params",)
        target_params: Optional[float] = opt(0.5, "parameters of the small model as a fraction of the dense "
                                                  "model's, in (0, 1] (the width is searched; outside the "
                                                  "tolerance the closest width is still trained and the summary "
                                                  "says within_tol: false)")
        match_dense_macs: bool = opt(False, "Scratch-B (Liu et al. 2019): train.epochs becomes min(2 E, round(E "
                                            "M_dense / M_small)), the dense model's training MACs (capped at 2x, "
                                            "paper sec. 4); resolved when the config is built, then reset to false "
                                            "(the run is dense_small at those epochs)")

        def validate(self) -> None:
            super().validate()
            if self.target() is None:
                raise ConfigError("method: dense_small needs method.target_params")

    @classmethod
    def resolve_run(cls, cfg: RunConfig, image_shape: tuple[int, ...]) -> None:
        """Scratch-B: set cfg.train.epochs by the rule in the module docstring (needs the
        model config and the dataset's image shape, not a trained model)."""
        if not cfg.method.match_dense_macs:
            return
        dense_cfg = cfg.model
        dense_params = params_of(dense_cfg)
        family = dataclasses.replace(dense_cfg, width=1.0)
        dense, _ = closest_width(meta_count(family), step_widths(family, MAX_WIDTH), dense_params)
        if dense.params != dense_params:
            raise ConfigError(f"dense_small: cannot rebuild {dense_cfg.name} at width {dense_cfg.width} from the "
                              f"width search (closest width {dense.width:.4f} gives {dense.params} parameters)")
        best, _ = small_width(family, dense_params, cfg.method.target_params)
        small_cfg = dataclasses.replace(family, width=best.width)
        cfg.train.epochs = scratch_b_epochs(cfg.train.epochs, forward_macs(dense_cfg, image_shape),
                                            forward_macs(small_cfg, image_shape))
        cfg.method.match_dense_macs = False

    def __init__(self, cfg: "DenseSmall.Config", ctx):
        super().__init__(cfg, ctx)
        self.info: dict[str, Any] = {}

    def choose(self, model: nn.Module) -> tuple[ModelConfig, dict[str, Any]]:
        """The small model's config and what the search found."""
        family = infer_family(model, self.ctx.model_name)
        count, widths = meta_count(family), step_widths(family, MAX_WIDTH)
        dense, _ = closest_width(count, widths, self.ctx.dense_params)
        if dense.params != self.ctx.dense_params:
            raise ConfigError(f"dense_small: cannot rebuild {self.ctx.model_name} with {self.ctx.dense_params} "
                              f"parameters from its name, activation and classes (closest width {dense.width:.4f} "
                              f"gives {dense.params}); the model has settings this method does not read")
        best, other = small_width(family, self.ctx.dense_params, self.cfg.target_params)
        achieved = best.params / self.ctx.dense_params
        info = {"width": best.width, "dense_width": dense.width, "width_ratio": best.width / dense.width,
                "params": best.params, "target_frac": self.cfg.target_params, "achieved_frac": achieved,
                "within_tol": self.cfg.target().within(achieved),
                "other_side": {"width": other.width, "achieved_frac": other.params / self.ctx.dense_params}}
        return dataclasses.replace(family, width=best.width), info

    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        cfg, self.info = self.choose(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.ctx.seed)
            small = build_model(cfg)
        return small.train(model.training)

    def summary(self, model: nn.Module) -> dict[str, Any]:
        return dict(self.info)

    def state_dict(self) -> dict[str, Any]:
        return {"info": self.info}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.info = dict(state.get("info", {}))
