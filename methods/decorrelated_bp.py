"""Decorrelated backpropagation (Dalm, Offergeld, Ahmad, van Gerven, arXiv 2405.02385).

Every Conv2d and Linear (the first conv and the classifier included, as the authors
did) reads its input through a decorrelation matrix R (d x d, d = fan-in: C_in*k*k
for a conv, acting on each input patch), initialised to I and learned by its own
local rule, not by autograd (docs/methods/decorrelated_bp.md; the authors' code is github
artcogsys/decorbp, `decorrelation/decorrelation.py`).

Forward: `y = (W R) x`, computed as ONE ordinary conv/linear with the merged weight
`(W.flatten(1) @ R).view_as(W)` (the authors merge the same way), so the per-image
cost is the plain layer's; merging costs out*d^2 MACs a step (and as much again in
the backward for dL/dW = dL/dM R^T), independent of the batch. The trained weight
is W; R is a buffer. On zero-padded borders the identity is exact: the merged conv
equals R applied to every unfolded (zero-padded) patch, then W.

R update, after every optimizer step (`update_every_steps`, default 1 as the
authors), per layer, from the layer inputs of that step's batch, of which a random
`downsample_frac` of the images is kept (the authors' `downsample_perc`; CIFAR 0.1):
with z = R x the decorrelated inputs (conv: every patch of the kept images is a row
of Z; N rows),
    Sigma = Z^T Z / N,   C = Sigma - diag(Sigma),   v = mean_n(z^2 - 1)   (a d-vector)
    R <- R - eta [ (1 - kappa) C R + kappa v * R ]
    loss = [ (1 - kappa) ||C||_F^2 + kappa ||v||^2 ] / d^2  (logged, computed before the update)
This is the authors' `method='standard'` (their code also has a `'normalized'` variant
with other scalings; not implemented). As in their loop, the z of an update are those
of the step's own forward pass (R is unchanged by the optimizer step in between).
`v * R` broadcasts v over R's last axis as the authors' code does
(`self.kappa * v * self.weight`), i.e. it scales column j of R by v_j (= R diag(v));
the gradient of the variance term alone would be diag(v) R (rows). The two agree
while R is diagonal (at the start). Sigma is uncentred, as in the authors' code.

Cheaper, mathematically identical arithmetic (our choice): when N (N + d) < d^2 (deep layers, few
patch rows) `C R` is formed as `Z^T (Z R) / N - diag(Sigma) R` and ||Sigma||_F^2 from
the N x N Gram matrix, O(N d^2) instead of O(d^3); otherwise the direct form.

Precision: the forward (the merge `W R` included) runs under the harness's autocast;
the R update and the loss are computed in R's dtype (float32, as the parameters)
outside autocast in `after_step`, from the captured inputs cast to it (they arrive as
bf16 under bf16 autocast).

Under torchrun every rank sums its Z^T Z and Z^T Z R (d x d each) and its row count
over all ranks before the update, so R is updated from the global batch's Sigma (the
kept images of every rank's shard) and is identical on every rank.

Inputs: each Decor layer keeps a reference (no copy) to its input during training
forwards with autograd on; `after_step` takes it, keeps a random `downsample_frac`
of the images (drawn from the method's generator; without replacement, where the
authors draw with replacement) and drops the reference. The reference never enters
a pickle or deep copy (`__getstate__`), so checkpoints hold no activations, there
are no hooks to re-register after a resume, and a resumed run is exact.

Epoch 0. The authors' loop (`decorrelation/train.py`) runs `epochs + 1` passes: pass 0
only measures the losses (no BP step and no R update), then every pass updates both.
This harness has no measure-only epoch, so R is updated from the first step; the
first update's loss is reported as the initial decorrelation loss.

MACs: bench.metrics.count_macs counts DecorConv2d/DecorLinear as the plain layers
they run (it maps subclasses to their base layer). The training MACs add what R costs:
the merge and its backward (2 out d^2 per layer per step) and every update
(`decor_update_macs`), so the row sits at the compute it ran, not at dense's.

Reported: decorrelation loss per layer per epoch (`decorrelated_bp/loss/<layer>`,
mean over the epoch's updates) and its mean over layers; the time of the R updates
per step against the mean training-step time; the merge MACs per step.

Host-device synchronisation: none per step. The losses stay on the device and are read
at the epoch's end; the update and step times are device intervals (IntervalTimer,
read at the epoch's end); the kept images' indices are drawn on the host (the method's
generator, so every device and every rank draws the same) and reach the device by an
asynchronous copy from pinned memory.

Under torch.compile the forward's capture of its input (a write to the module's
`__dict__`) is a side effect that dynamo replays after the compiled graph, so R is
updated from the same inputs as in eager mode (tested with dynamo on the CPU).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench import dist
from bench.config import ConfigError, opt
from bench.device import to_device
from bench.metrics import IntervalTimer
from bench.surgery import set_module
from methods.base import Method, MethodConfig, last_epoch_metrics, register

# The authors' CIFAR ResNet-18 settings as the method is specified for this suite
# (docs/methods/decorrelated_bp.md): Adam lr 1e-4, batch 128. The config stored in their repository
# (experiments/config/CIFAR10_RESNET18.txt, a 1,000-image debug setting) has decor lr 1e-2, batch 64.
AUTHORS_DECOR_LR = 1e-4
AUTHORS_KAPPA = 0.01
AUTHORS_DOWNSAMPLE_FRAC = 0.1


# --------------------------------------------------------------------------- layers
INPUT_ATTR = "_decor_input"   # transient: the last training forward's input, never pickled


class _Decorrelated:
    """What the two Decor layers share: the captured input and pickling without it."""

    def _keep_input(self, x: torch.Tensor) -> None:
        # A reference, not a copy (autograd keeps this tensor for the weight gradient anyway);
        # after_step subsamples it and drops it.
        if self.training and torch.is_grad_enabled():
            self.__dict__[INPUT_ATTR] = x.detach()

    def take_input(self) -> Optional[torch.Tensor]:
        return self.__dict__.pop(INPUT_ATTR, None)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(INPUT_ATTR, None)
        return state


class DecorConv2d(_Decorrelated, nn.Conv2d):
    """Conv2d whose input patches are decorrelated by the buffer `decor` (R, d x d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep_input(x)
        merged = (self.weight.flatten(1) @ self.decor).view_as(self.weight)
        return self._conv_forward(x, merged, self.bias)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input patches as rows: [N * L, d] (same order as the weight's fan-in)."""
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class DecorLinear(_Decorrelated, nn.Linear):
    """Linear whose input is decorrelated by the buffer `decor` (R, d x d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._keep_input(x)
        return F.linear(x, self.weight @ self.decor, self.bias)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])


DECOR_TYPES = (DecorConv2d, DecorLinear)


def decorrelate_layer(layer: nn.Module) -> nn.Module:
    """A Decor layer sharing `layer`'s parameters, with R = I (built on the meta device,
    so no random initialisation runs)."""
    w = layer.weight
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ConfigError("decorrelated_bp supports ungrouped, zero-padded convs with numeric padding only; "
                              "this model has another kind")
        new = DecorConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, bias=layer.bias is not None, device="meta")
    elif isinstance(layer, nn.Linear):
        new = DecorLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    else:
        raise TypeError(f"expected Conv2d or Linear, got {type(layer).__name__}")
    new.weight = w
    new.bias = layer.bias
    d = w[0].numel()
    new.register_buffer("decor", torch.eye(d, device=w.device, dtype=w.dtype))
    new.train(layer.training)
    return new


def merged_layer(layer: nn.Module) -> nn.Module:
    """The plain Conv2d/Linear that computes what the Decor `layer` computes, its weight
    W R merged once (the inverse of decorrelate_layer); a new module, `layer` unchanged."""
    with torch.no_grad():
        weight = (layer.weight.flatten(1) @ layer.decor).view_as(layer.weight)
    if isinstance(layer, DecorConv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, bias=layer.bias is not None, device="meta")
    else:
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    new.weight = nn.Parameter(weight.detach().clone(), requires_grad=layer.weight.requires_grad)
    new.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
    new.train(layer.training)
    return new


# --------------------------------------------------------------------------- the rule
@torch.no_grad()
def decor_update(r: torch.Tensor, x: torch.Tensor, lr: float, kappa: float, gram: Optional[bool] = None
                 ) -> torch.Tensor:
    """One update of R (in place) from input rows `x` [N, d]; returns the loss before it,
    a float64 scalar on R's device (not read here: reading it would wait for the device).

    R <- R - lr [(1 - kappa) C R + kappa v * R] (authors' broadcasting of v, see the
    module docstring); `gram` forces the N x N (True) or d x d (False) arithmetic in one
    process. Under torchrun the statistics are those of every rank's rows together."""
    z = x @ r.T
    d = z.shape[1]
    sq, c_fro2, cr = _global_terms(z, r) if dist.is_distributed() else _local_terms(z, r, gram)
    v = sq - 1.0
    loss = ((1 - kappa) * c_fro2 + kappa * (v.double() ** 2).sum()) / d ** 2
    r.sub_(lr * ((1 - kappa) * cr + kappa * v * r))   # v * r: v over the last axis, as the authors' code
    return loss


def decor_update_macs(n: int, d: int) -> int:
    """Multiply-adds of one decor_update on n rows of dimension d, in the arithmetic it
    chooses: Z = X R^T (n d^2), then Z^T Z (n d^2) and C R (d^3), or with the n x n Gram
    matrix Z Z^T (n^2 d), Z R and Z^T (Z R) (2 n d^2); under torchrun Z^T Z and Z^T Z R."""
    if dist.is_distributed():
        return 2 * n * d * d + (2 * n * d * d if 2 * n < d else d ** 3)
    if n * (n + d) < d * d:
        return 3 * n * d * d + n * n * d
    return 2 * n * d * d + d ** 3


def decor_step(r: torch.Tensor, x: torch.Tensor, lr: float, kappa: float, gram: Optional[bool] = None
               ) -> float:
    """decor_update with the loss read on the host (waits for the device)."""
    return float(decor_update(r, x, lr, kappa, gram))


def _local_terms(z: torch.Tensor, r: torch.Tensor, gram: Optional[bool]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diag(Sigma), ||C||_F^2 (float64 scalar) and C R from this process's rows Z [N, d]."""
    n, d = z.shape
    sq = (z * z).mean(0)                  # diag(Sigma)
    if gram is None:
        gram = n * (n + d) < d * d
    if gram:
        g = z @ z.T
        c_fro2 = (g.double() ** 2).sum() / n ** 2 - (sq.double() ** 2).sum()
        return sq, c_fro2.clamp_min(0.0), z.T @ (z @ r) / n - sq[:, None] * r
    c = z.T @ z / n
    c.diagonal().zero_()
    return sq, (c.double() ** 2).sum(), c @ r


def _global_terms(z: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diag(Sigma), ||C||_F^2 and C R of all ranks' rows: Z^T Z, Z^T Z R and N are sums
    over rows, summed over ranks in one all-reduce (shapes depend on d only, so every
    rank sends the same; each picks its cheaper association for Z^T Z R)."""
    n, d = z.shape
    zz = z.T @ z
    zzr = z.T @ (z @ r) if 2 * n < d else zz @ r
    # The row count by a fill on the device (a tensor made from a host list would be a blocking copy).
    sums = dist.all_reduce_sum_(torch.cat([zz.flatten(), zzr.flatten(), zz.new_full((1,), float(n))]))
    total = sums[-1]                      # float32: exact up to 2^24 rows per update
    sigma = sums[:d * d].view(d, d) / total
    sq = sigma.diagonal().clone()
    c = sigma.clone()
    c.diagonal().zero_()
    return sq, (c.double() ** 2).sum(), sums[d * d:2 * d * d].view(d, d) / total - sq[:, None] * r


# --------------------------------------------------------------------------- the method
@register("decorrelated_bp")
class DecorrelatedBP(Method):
    """Decorrelated backpropagation (Dalm et al. 2024): every layer's input patches decorrelated by a learned R."""

    in_place_hooks = frozenset({"on_train_start"})   # swaps every Conv2d/Linear for a Decor layer with buffer R

    @dataclass
    class Config(MethodConfig):
        decor_lr: float = opt(AUTHORS_DECOR_LR, "eta, learning rate of the R update (authors' CIFAR ResNet-18: 1e-4)")
        kappa: float = opt(AUTHORS_KAPPA, "weight of the unit-variance term against decorrelation, in [0, 1] "
                                          "(authors' CIFAR ResNet-18: 0.01)")
        downsample_frac: float = opt(AUTHORS_DOWNSAMPLE_FRAC, "fraction of the batch's images whose inputs update R "
                                                              "(authors' downsample_perc; CIFAR: 0.1)")
        update_every_steps: int = opt(1, "update R every this many optimizer steps (authors: 1); trades the "
                                         "O(N d^2 + d^3) update cost per layer against decorrelation")

        def validate(self) -> None:
            if self.decor_lr < 0:
                raise ConfigError(f"method.decor_lr={self.decor_lr} must be >= 0")
            if not 0.0 <= self.kappa <= 1.0:
                raise ConfigError(f"method.kappa={self.kappa} must be in [0, 1]")
            if not 0.0 < self.downsample_frac <= 1.0:
                raise ConfigError(f"method.downsample_frac={self.downsample_frac} must be in (0, 1]")
            if self.update_every_steps < 1:
                raise ConfigError(f"method.update_every_steps={self.update_every_steps} must be >= 1")

    def __init__(self, cfg: Config, ctx):
        super().__init__(cfg, ctx)
        self.layers_info: dict[str, dict] = {}
        self.first_loss: dict[str, float] = {}
        self.epochs_log: list[dict] = []
        self._acc = self._fresh_acc()
        self._extra_macs = 0                # R's merges and updates since the harness last asked
        self._last_end: Any = None          # an IntervalTimer mark
        self._timer = IntervalTimer(ctx.device)

    @staticmethod
    def _fresh_acc() -> dict[str, Any]:
        return {"loss": {}, "updates": 0, "calls": 0, "update_s": 0.0, "step_s": 0.0, "steps": 0}

    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        targets = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, DECOR_TYPES)]
        if not targets:
            raise ConfigError(f"model {self.ctx.model_name} has no Conv2d or Linear layer to decorrelate")
        for name, layer in targets:
            new = decorrelate_layer(layer)
            set_module(model, name, new)
            d = new.decor.shape[0]
            self.layers_info[name] = {"d": d, "out": new.weight.shape[0], "merge_macs": new.weight.shape[0] * d * d}
        return None   # same parameter tensors: the optimizer stays valid

    def after_step(self, model: nn.Module) -> None:
        ctx, acc, cfg, timer = self.ctx, self._acc, self.cfg, self._timer
        t0 = timer.mark()
        acc["calls"] += 1
        if self._last_end is not None:
            timer.add("step_s", self._last_end, t0)
            acc["steps"] += 1
        update = ctx.step % cfg.update_every_steps == 0
        self._extra_macs += self.merge_macs_per_step()
        for name, m in model.named_modules():
            if not isinstance(m, DECOR_TYPES):
                continue
            x = m.take_input()
            if x is None or not update:
                continue
            # the authors' downsampling: a random fraction of the batch's images (ours without replacement)
            n = max(1, int(len(x) * cfg.downsample_frac))
            x = x[to_device(torch.randperm(len(x), generator=ctx.generator)[:n], x.device)]
            with torch.autocast(device_type=x.device.type, enabled=False):   # R's float32, whatever the forward ran in
                rows = m.patches(x.to(m.decor.dtype))
                loss = decor_update(m.decor, rows, cfg.decor_lr, cfg.kappa)
            self._extra_macs += decor_update_macs(*rows.shape)
            self.first_loss.setdefault(name, loss)          # read (as a float) at the epoch's end
            s = acc["loss"].setdefault(name, [0.0, 0])
            s[0] += loss
            s[1] += 1
        if update:
            acc["updates"] += 1
            timer.add("update_s", t0, timer.mark())
        self._last_end = timer.mark()

    def merge_macs_per_step(self) -> int:
        """W R in the forward and dL/dW = dL/dM R^T in the backward: 2 out d^2 per layer."""
        return 2 * sum(v["merge_macs"] for v in self.layers_info.values())

    def take_extra_train_macs(self) -> float:
        # every rank merges and updates on its own rows (the harness's images are all ranks')
        extra, self._extra_macs = self._extra_macs, 0
        return float(extra * dist.world_size())

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        acc = self._acc
        for key, seconds in self._timer.totals().items():   # the epoch's update and step times
            acc[key] += seconds
        self.first_loss = {n: float(v) for n, v in self.first_loss.items()}
        loss = {n: float(s) / max(1, c) for n, (s, c) in acc["loss"].items()}
        step_s = acc["step_s"] / max(1, acc["steps"])
        per_step = acc["update_s"] / max(1, acc["calls"])
        self.epochs_log.append({
            "epoch": epoch, "loss_mean": sum(loss.values()) / max(1, len(loss)), "updates": acc["updates"],
            "update_s": acc["update_s"], "update_s_per_step": per_step, "step_s_mean": step_s,
            "overhead_frac": per_step / step_s if step_s > 0 else None, "loss": loss,
        })
        self._acc = self._fresh_acc()
        self._last_end = None
        return None

    def deploy(self, model: nn.Module) -> nn.Module:
        """R is a training-time device: deployed, each layer is the plain layer with W R
        merged once, so inference does not pay the merge (out * d^2 MACs per layer) on every
        forward, which at batch 1 costs more than the layer itself."""
        out = copy.deepcopy(model)
        for name, layer in list(out.named_modules()):
            if isinstance(layer, DECOR_TYPES):
                set_module(out, name, merged_layer(layer))
        return out

    # ---- reporting -----------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return last_epoch_metrics("decorrelated_bp", self.epochs_log, "loss")

    def summary(self, model: nn.Module) -> dict[str, Any]:
        first = self.first_loss
        last = self.epochs_log[-1]["loss"] if self.epochs_log else {}
        steps = [r["step_s_mean"] for r in self.epochs_log if r["step_s_mean"] > 0]
        ups = [r["update_s_per_step"] for r in self.epochs_log]
        step_mean = sum(steps) / max(1, len(steps))
        up_mean = sum(ups) / max(1, len(ups))
        return {
            "layers": self.layers_info,
            "merge_macs_per_step": self.merge_macs_per_step(),
            "loss_first_update": first, "loss_last_epoch": last,
            "loss_mean_first_update": sum(first.values()) / max(1, len(first)),
            "loss_mean_last_epoch": sum(last.values()) / max(1, len(last)),
            "update_s_per_step": up_mean, "train_step_s_mean": step_mean,
            "overhead_frac": up_mean / step_mean if step_mean > 0 else None,
            "epochs": self.epochs_log,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"layers_info": self.layers_info, "first_loss": self.first_loss, "epochs_log": self.epochs_log}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers_info = state["layers_info"]
        self.first_loss = state["first_loss"]
        self.epochs_log = state["epochs_log"]
