"""The `pcns` method: PCNS shrinks at the configured epochs (docs/methods/pcns.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from torch import nn

from bench.config import ConfigError, opt
from bench.surgery import get_module
from bench.targets import Target
from methods.base import Method, TargetConfig, register
from methods.pcns.algebra import LS_RIDGE_FRAC
from methods.pcns.diagnostics import mix_consumer_excess, param_split
from methods.pcns.planning import CALIB_BATCH, ERROR_IMAGES, MIN_CONV_IMAGES, SAMPLES_PER_UNIT
from methods.pcns.shrinking import Diagnostics, shrink_model
from methods.pcns.sites import act_slope, find_sites


@register("pcns")
class PCNS(Method):
    """PCA network shrinking, repeated at `transform_epochs` (docs/methods/pcns.md).

    `on_epoch_end` (timed as the method's cost) shrinks; the shrink's diagnostics (error
    table, logit errors) run in the next untimed call, `epoch_metrics` (or `summary`)."""

    run_overrides: ClassVar[str] = "model.act=leaky_relu model.leaky_slope=0.2"   # an invertible activation

    @dataclass
    class Config(TargetConfig):
        target_kinds: ClassVar[tuple[str, ...]] = ("params",)
        transform_epochs: list[int] = opt([2], "shrink after these completed epochs, each time the already-shrunk "
                                       "network (draft sec. 2: repeatable during training; 2 of the quick 8-epoch "
                                       "recipe: a partially trained network)")
        energy: float = opt(0.99, "per-layer fraction of the TOs' centred variance to keep (draft sec. 2.2 "
                            "'variance threshold', value left open there; PCN's example)")
        calibration_images: int = opt(MIN_CONV_IMAGES, "calibration images at least, for models with conv layers "
                                "(2,048: enough for a stable PCA of a CIFAR conv layer)")
        samples_per_unit: int = opt(SAMPLES_PER_UNIT, "calibration samples per neuron at least, conv positions "
                                    "counted as samples (draft: 'a few times the layer size')")
        error_images: int = opt(ERROR_IMAGES, "error table (draft sec. 4.2) on the first N calibration images and on "
                                "N held-out ones (0: no table)")
        calibration_batch_size: int = opt(CALIB_BATCH, "images per calibration forward pass (memory only)")
        ev_scale: float = opt(1.0, "c = ev_scale * sqrt(B) * rms(layer outputs): conditioning scale of the "
                              "eigenvectors, cancels in step 4 (draft: unspecified)")
        ls_ridge: float = opt(LS_RIDGE_FRAC, "ridge of the least squares, relative to the mean diagonal of A^T A")
        relu_split: bool = opt(False, "ReLU models: fit the positive and negative part of each EV as two neurons "
                               "(draft sec. 4.5); LeakyReLU models must leave it false")
        maxpool: str = opt("skip", "a max pool between a layer and its consumer: leave such layers alone (skip, "
                           "the default: measured best, results/pcns-notes.md), keep P as a trainable 1x1 conv before "
                           "the pool (explicit: exact, costs n x (M+1) parameters and the consumer keeps its n "
                           "inputs), or move P past the pool into the consumer (commute: inexact, maxpool(Pe) != "
                           "P maxpool(e)); see summary()['param_split']",
                           choices=("skip", "explicit", "commute"))
        refit: bool = opt(False, "false: the draft's order (sec. 9.1), every layer fitted on the unshrunk network, "
                          "top layer first; true: fit bottom-up, each layer on the inputs the already-shrunk layers "
                          "below it produce (one calibration pass per layer; the report adds the draft order's "
                          "logit_err_*_norefit)")
        transform_full_rank: bool = opt(False, "also transform layers whose new width M+1 is not smaller (no size gain: for checking the algebra)")
        layers: list[str] = opt([], "producer layers to shrink (module names); empty: every hidden layer")

        def validate(self) -> None:
            super().validate()
            if not self.transform_epochs or any(e < 1 for e in self.transform_epochs) or \
                    any(b <= a for a, b in zip(self.transform_epochs, self.transform_epochs[1:])):
                raise ConfigError(f"method.transform_epochs must be increasing epochs >= 1, got {self.transform_epochs}")
            if not 0 < self.energy <= 1:
                raise ConfigError(f"method.energy must be in (0, 1], got {self.energy}")
            if self.calibration_images < 1 or self.samples_per_unit < 1 or self.calibration_batch_size < 1 or self.error_images < 0:
                raise ConfigError("method.calibration_images, samples_per_unit, calibration_batch_size must be >= 1 and "
                                  "error_images >= 0")
            if self.ev_scale <= 0 or self.ls_ridge < 0:
                raise ConfigError("method.ev_scale must be > 0 and method.ls_ridge >= 0")

    def __init__(self, cfg: Config, ctx):
        super().__init__(cfg, ctx)
        if cfg.transform_epochs[-1] > ctx.epochs:
            raise ConfigError(f"method.transform_epochs={cfg.transform_epochs} go past the budget of {ctx.epochs} "
                              f"epochs; keep them <= train.epochs")
        # More calibration or error images than the training set holds: ctx.calibration takes
        # the whole set (the held-out error images then overlap the calibration ones).
        self.shrinks: list[dict[str, Any]] = []
        self.pending: Optional[Diagnostics] = None

    def on_train_start(self, model: nn.Module) -> None:
        sites, _ = find_sites(model)   # fail before training on an unsupported model or activation
        for s in sites:
            act_slope(get_module(model, s.act), self.cfg.relu_split, s.act)
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        done = {r["epoch"] for r in self.shrinks}
        if epoch not in self.cfg.transform_epochs or epoch in done:
            return None
        k = self.cfg.transform_epochs.index(epoch) + 1
        target = None
        if self.cfg.target_params is not None:
            target = int(self.cfg.target_params ** (k / len(self.cfg.transform_epochs)) * self.ctx.dense_params)
        params_before = sum(p.numel() for p in model.parameters())
        model, report, _, self.pending = shrink_model(model, self.cfg, self.ctx.calibration, self.ctx.example_inputs,
                                                      target)
        params_after = sum(p.numel() for p in model.parameters())
        n = self.ctx.num_train_images          # ctx.calibration serves at most the whole training set
        report.update({"calib_images": min(report["calib_images"], n), "error_images": min(report["error_images"], n)})
        report.update({"epoch": epoch, "params_before": params_before, "params_after": params_after,
                       "target_met": None if target is None else
                       Target("params", target / self.ctx.dense_params, self.cfg.target_tol_frac).within(
                           params_after / self.ctx.dense_params),
                       "params_frac_of_dense": params_after / self.ctx.dense_params,
                       "epoch_train_s": self.ctx.last_epoch_s,
                       "shrink_to_epoch_ratio": report["timing_s"]["total_s"] / self.ctx.last_epoch_s
                       if self.ctx.last_epoch_s else None})
        self.shrinks.append(report)
        report["param_split"] = param_split(model, self.resized())     # every shrink's resized modules so far
        report["mix_consumer_excess"] = mix_consumer_excess(model)
        return model

    def run_diagnostics(self, model: nn.Module) -> None:
        """The last shrink's diagnostics, against `model` as the shrink left it (outside the timed hook)."""
        if self.pending is not None:
            self.pending.run(model)
            self.pending = None

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        self.run_diagnostics(model)
        out: dict[str, Any] = {"pcns/shrinks": len(self.shrinks)}
        if self.shrinks and self.shrinks[-1]["epoch"] == self.ctx.epoch:
            r = self.shrinks[-1]
            out.update({"pcns/shrink_s": r["timing_s"]["total_s"], "pcns/params_frac": r["params_frac_of_dense"]})
            out.update({f"pcns/{k}": r[k] for k in ("logit_err_cal", "logit_err_heldout", "logit_err_cal_norefit",
                                                    "logit_err_heldout_norefit") if k in r})
        return out

    def resized(self) -> set[str]:
        """Every module whose width a shrink so far changed (module names survive the surgeries)."""
        return {n for r in self.shrinks for n in r.get("resized", [])}

    def summary(self, model: nn.Module) -> dict[str, Any]:
        self.run_diagnostics(model)
        return {"shrinks": self.shrinks, "params": sum(p.numel() for p in model.parameters()),
                "params_frac_of_dense": sum(p.numel() for p in model.parameters()) / self.ctx.dense_params,
                "param_split": param_split(model, self.resized()), "mix_consumer_excess": mix_consumer_excess(model)}

    def state_dict(self) -> dict[str, Any]:
        return {"shrinks": self.shrinks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shrinks = state.get("shrinks", [])
