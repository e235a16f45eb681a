"""One PCNS shrink, pass by pass (`shrink_model`), timed per pass (`Stopwatch`); its
diagnostics (`Diagnostics`: the error table and logit errors) run apart from it, so a caller
can run them outside the method's timed hook. `shrink` does both, for tests and scripts.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from methods.pcns.diagnostics import error_table, logit_errors
from methods.pcns.passes import draft_ls_pass, gram_pass, layer_row, refit_pass, solve_layer
from methods.pcns.planning import (LayerPlan, calibration_size, choose_widths, plan_layers, projected_params,
                                   set_widths)
from methods.pcns.surgery import apply_surgery, isolated_target


class Stopwatch:
    """Wall-clock per named phase, for the report's `timing_s`. On CUDA the device is
    synchronised before every clock reading, so a phase is charged with the kernels it
    queued, not with those of the phase before it."""

    def __init__(self, device: Optional[torch.device] = None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.device = device
        self.t_start, self.times = self.now(), {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = self.now()
        yield
        self.times[key] = self.times.get(key, 0.0) + self.now() - t0

    def total(self) -> dict[str, float]:
        return {**self.times, "total_s": self.now() - self.t_start}


class Diagnostics:
    """The error table (each layer's change on its own, on calibration and held-out images)
    and the logit errors of one shrink, computed when `run` is called: from a copy of the
    unshrunk model and the draft-order fits kept by `shrink_model`, against the shrunk model
    given to `run`. Adds `out_err_*`, `next_err_*` to the report's layer rows, `logit_err_*`,
    `top1_agreement_*` (and `*_norefit` after a refit) to the report, and its wall-clock as
    `diagnostics_s`. Changes no model."""

    def __init__(self, unshrunk: nn.Module, active: list[LayerPlan], refit: bool,
                 batches: Callable[..., Iterator[torch.Tensor]], n_err: int, report: dict[str, Any]):
        self.unshrunk, self.refit, self.batches, self.n_err, self.report = unshrunk, refit, batches, n_err, report
        # The draft-order fits: a refit replaces the plans' layers, P and weights afterwards.
        self.plans = [copy.copy(pl) for pl in active]

    @torch.no_grad()
    def run(self, model: nn.Module) -> None:
        clock = Stopwatch(next(model.parameters()).device)
        was_training = model.training
        with torch.autocast(device_type=next(model.parameters()).device.type, enabled=False):
            for pl in self.plans:
                pl.target_new = isolated_target(self.unshrunk, pl)
            with clock("errors_s"):
                logits_old = error_table(self.unshrunk, self.plans, self.batches, self.n_err)
            if self.refit:
                with clock("logits_norefit_s"):
                    draft = copy.deepcopy(self.unshrunk)
                    for pl in reversed(self.plans):
                        apply_surgery(draft, pl)
                    self.report.update(logit_errors(draft, logits_old, self.batches, self.n_err, suffix="_norefit"))
                del draft
            with clock("logits_s"):
                self.report.update(logit_errors(model, logits_old, self.batches, self.n_err))
        model.train(was_training)
        self.report["diagnostics_s"] = clock.total()
        self.unshrunk = self.plans = None


@torch.no_grad()
def shrink_model(model: nn.Module, cfg: "PCNS.Config", calibration: Callable[..., Iterator[torch.Tensor]],
                 example_inputs: torch.Tensor, target_params: Optional[int] = None
                 ) -> tuple[nn.Module, dict[str, Any], list[LayerPlan], Optional[Diagnostics]]:
    """One PCNS shrink of every hidden layer of `model` (in place), without its diagnostics.
    Returns the model, the report (JSON-able: per-layer table in shrink order), the per-layer
    plans (tensors, for tests) and the diagnostics to run on the shrunk model (None when
    `cfg.error_images` is 0).

    `calibration(n_images, batch_size, heldout)` yields normalised image batches (ctx.calibration).
    `target_params`: absolute parameter count to meet (else cfg.energy per layer). Runs outside
    autocast: every forward in the model's dtype, every sum in float64."""
    clock = Stopwatch(example_inputs.device)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.autocast(device_type=example_inputs.device.type, enabled=False):
        plans, skipped = plan_layers(model, cfg)
        n_images = calibration_size(model, plans, cfg, example_inputs)

        def batches(heldout: bool = False, n: Optional[int] = None) -> Iterator[torch.Tensor]:
            return (x.to(dtype) for x in calibration(n or n_images, cfg.calibration_batch_size, heldout))
        with clock("gram_s"):
            gram_pass(model, plans, batches())
        threshold, widths = choose_widths(model, plans, cfg, target_params)
        projected = projected_params(model, plans, widths)
        active = set_widths(plans, widths, cfg)
        with clock("ls_pass_s"):
            sums = draft_ls_pass(model, active, cfg.relu_split, batches())
        with clock("solve_s"):
            for pl in active:
                pl.row = layer_row(pl, solve_layer(model, pl, sums.pop(pl.site.producer), cfg))
        n_err = min(cfg.error_images, n_images)
        report: dict[str, Any] = {"threshold": threshold, "projected_params": projected,
                                  "target_params": target_params, "calib_images": n_images,
                                  "error_images": n_err, "skipped": skipped, "refit": cfg.refit,
                                  "order": [pl.site.producer for pl in reversed(plans)],
                                  "resized": sorted({n for pl in active for n in pl.resized()})}
        unshrunk = None
        if cfg.refit or n_err > 0:
            with clock("copy_s"):                                   # the refit's teacher, the diagnostics' reference
                unshrunk = copy.deepcopy(model)
        diagnostics = Diagnostics(unshrunk, active, cfg.refit, batches, n_err, report) if n_err > 0 else None
        if cfg.refit:
            report["order"] = [pl.site.producer for pl in plans]
            with clock("refit_s"):
                refit_pass(model, unshrunk, active, cfg, batches)
        else:
            with clock("surgery_s"):                                # second-to-last layer down (sec. 9.1)
                for pl in reversed(active):
                    apply_surgery(model, pl)
    report.update({"layers": [pl.row for pl in (active if cfg.refit else reversed(active))],
                   "unchanged": [pl.site.producer for pl in reversed(plans) if not pl.shrink],
                   "timing_s": clock.total()})
    model.train(was_training)
    return model, report, plans, diagnostics


def shrink(model: nn.Module, cfg: "PCNS.Config", calibration: Callable[..., Iterator[torch.Tensor]],
           example_inputs: torch.Tensor, target_params: Optional[int] = None
           ) -> tuple[nn.Module, dict[str, Any], list[LayerPlan]]:
    """`shrink_model`, then its diagnostics at once: the model, the full report, the plans."""
    model, report, plans, diagnostics = shrink_model(model, cfg, calibration, example_inputs, target_params)
    if diagnostics is not None:
        diagnostics.run(model)
    return model, report, plans
