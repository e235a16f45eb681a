"""PCNS: PCA Network Shrinking (P. Rolet, research draft, Sep 29 2022; no arXiv id, no public code).

Source: ../shared/seeds/pcns-draft.txt, the only one; METHODS.md sec. 2 restates it with this
suite's choices. No other implementation exists: this file is the reference. Measurements made
while building it: results/pcns-notes.md.

For one hidden layer l, notation of the draft's sec. 1.4 (bias = weight on a trailing input 1):
  S_l = W_l X_{l-1},  X_l = sigma(S_l)  (n x B over a calibration batch of B samples).
  Step 1 (sec. 2.1): transposed outputs TO_j = row j of X_l.
  Step 2 (sec. 2.2, eq. 3): TO_j ~ TO_hat + sum_{i<=M} lambda_ji EV_i with TO_hat the mean TO
     (mean over neurons, per sample; the draft writes a sum but calls it the mean vector),
     EV_i the top eigenvectors in R^B and lambda_ji = <TO_j - TO_hat, EV_i>. Computed through the
     n x n Gram matrix, never B x B: G = H X X^T H (H = I - 11^T/n), G u_i = Lambda_i u_i, so
     EV_i = X^T u_i / sqrt(Lambda_i) and lambda_ji = sqrt(Lambda_i) u_ji. The centred TOs sum to
     zero, so G has at most n - 1 non-zero eigenvalues: M <= n - 1 and "all components" is M = n - 1.
  Step 3 (sec. 2.3, eq. 4): the shrunk layer has M + 1 neurons, fitted by least squares
     W~_i X_{l-1} = sigma^{-1}(c EV_i) (i <= M) and W~_{M+1} X_{l-1} = sigma^{-1}(TO_hat).
  Step 4 (sec. 2.4, eq. 7): the next layer becomes W_{l+1} P, P = n x (M+1), row j =
     (lambda_j1 / c, ..., lambda_jM / c, 1). For a conv consumer P acts on its input channels at
     every kernel position (bench.surgery.substitute_inputs, no shift).

Conv layers (the draft's sec. 7 "next step"): neurons are channels and every spatial position of
every image is a sample (METHODS.md common notation); the least-squares rows are the im2col
patches of the layer input plus a bias column (C_in*k*k + 1 unknowns per neuron). Zero padding
needs no approximation: P has no shift, so the consumer's padding zeros of the new channels are
padding zeros of the old ones.

Statistics: the Gram X X^T (n x n) and the normal equations A^T A, A^T T, ||T||^2 are float64
sums in bench.activations.SumAccumulator (all-reduced under torchrun on the data's device), im2col rows
in float64 chunks of `CHUNK_BYTES`; every calibration forward runs outside autocast in the model's
own dtype (float32), on batches that may be channels_last.

Choices where the draft is silent or TODO (METHODS.md "choice"):
- Order (sec. 9.1, 4.6): from the second-to-last layer (the last hidden layer, whose consumer is
  the classifier) down to the first; the classifier is never shrunk. All fits use the network as
  it is before this shrink (the draft's "initial forward pass"): shrinking layer l changes W_l and
  W_{l+1} only, so the fits are independent, but no fit sees the errors of the layers below it.
  `refit: true` (not in the draft) fits the layers bottom-up instead, each on the inputs the
  already-shrunk layers below it produce, to the same targets (the unshrunk network's PCA and TOs);
  the report then also gives the draft order's logit error (`*_norefit`).
- Calibration: one fixed set of `calibration_images` unaugmented training images (issue 6: 2,048) for
  every layer, more if a layer needs `samples_per_unit` x n samples (draft sec. 4.3 "a few times
  the layer size"; METHODS.md: 10). The error table uses the first `error_images` of them and as
  many held-out images (ctx.calibration(heldout=True)).
- c (draft: a scale, cancels in step 4): c = ev_scale * sqrt(B) * rms(X_l), so c EV_i has the RMS
  of the layer's outputs; LeakyReLU^{-1} is positively homogeneous, so c changes nothing beyond
  float error. `ls_residual` is over the EV columns (c-free), `ls_residual_mean_to` the TO_hat one.
- Sign of EV_i (free in PCA): both signs are fitted in the same pass; the smaller residual wins.
- M: `energy` per layer (smallest M whose eigenvalues reach that fraction of the centred
  variance), or `target_params`: one threshold for all layers bisected so the model has at most
  the target count (within `target_tol_frac`, relative; the count includes every new module). With several
  `transform_epochs`, shrink k of K aims at target^(k/K). Eigen-directions below `EIG_FLOOR_FRAC`
  of the largest are never used. A layer stays as it is when M + 1 >= n (no size gain) unless
  `transform_full_rank`; `layers` restricts the shrink to named layers.
- BN between a layer and its activation: folded in (bench.surgery.fold_bn, running statistics)
  before solving; the target is the pre-activation. The shrunk layer gets a fresh BN that inverts
  its own normalisation with the calibration statistics of the new outputs (running_mean = mean,
  running_var = var, weight = sqrt(var + eps), bias = mean, plus the LS bias when the layer has
  none): the identity in eval mode, trained afterwards like any BN.
- A max pool between the activation and the consumer: maxpool(P e) != P maxpool(e).
  `maxpool: skip` (default; measured best on real data, results/pcns-notes.md) leaves such
  layers alone; `explicit` keeps P as a bias-free, trainable 1x1 conv in front of the pool
  (`MixPool`: exact, but n x (M+1) parameters and the consumer keeps its n inputs; a later
  shrink multiplies the mix by its new P); `commute` moves P past the pool into the consumer
  (inexact). What the mixes cost: `summary()["param_split"]["mix"]` and
  `summary()["mix_consumer_excess"]` (the consumers' unreduced inputs).
- ResNets: only block-internal layers (conv1 of a BasicBlock; conv1 and conv2 of a Bottleneck).
  The residual stream is NOT shrunk: PCNS replaces a layer's neurons by new ones, and the identity
  skip adds the old ones. For a block, `next_err_*` is on conv2's BN output, before the add.
- ReLU (draft sec. 4.5, one sentence): `relu_split` gives each EV_i two neurons fitted by least
  squares to relu(c EV_i) and relu(-c EV_i) (no inverse), P columns (lambda/c, -lambda/c):
  2M + 1 neurons, so a layer shrinks only when 2M + 1 < n.
- Not in the draft: `ls_ridge` (Tikhonov term, relative to the mean diagonal of A^T A).

Error table (draft sec. 4.2, approximations 1-3, per layer with only that layer changed, draft
order's fits): `pca_err` = ||X - X_PCA||^2 / ||X||^2 (approx. 1), `ls_residual` (approx. 2, in
sigma^{-1} space), `out_err_*` = ||P e - x|| / ||x|| for the layer output and `next_err_*` for the
next weighted layer's pre-activation (its BN included), on calibration (`_cal`) and held-out
(`_heldout`) images (approx. 3 = their gap); for the whole shrink `logit_err_*` and
`top1_agreement_*` against the unshrunk model; wall-clock per pass in `timing_s`.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn

from bench.config import ConfigError, opt
from bench.models import structure_of
from bench.activations import SumAccumulator, as_samples, capture
from bench.surgery import fold_bn, get_module, set_module, substitute_inputs
from bench.targets import Target, TargetError, bisect_fraction
from methods.base import Method, TargetConfig, register

SAMPLES_PER_UNIT = 10        # METHODS.md sec. 2 choice; draft sec. 4.3: "a few times bigger than the layer"
MIN_CONV_IMAGES = 2048       # issue 6: at least 2,048 calibration images for conv layers
ERROR_IMAGES = 512           # images per error table (calibration subset and held-out): ~4 forwards each
CALIB_BATCH = 256            # images per calibration forward (memory only)
LS_RIDGE_FRAC = 1e-8         # Tikhonov term / mean diagonal of A^T A (float64 Cholesky safety)
EIG_FLOOR_FRAC = 1e-10       # eigen-directions below this fraction of the largest are noise
CHUNK_BYTES = 64 * 2 ** 20   # float64 im2col rows held at once
POOLS_LINEAR = (nn.Identity, nn.Dropout, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
POOLS_MAX = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)


# --------------------------------------------------------------------------- activations
def sigma(x: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU with `slope` (0: ReLU)."""
    return F.leaky_relu(x, slope)


def sigma_inv(y: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU^{-1} (draft sec. 2.3); needs slope > 0."""
    return torch.where(y >= 0, y, y / slope)


def act_slope(module: nn.Module, relu_split: bool, name: str) -> float:
    if isinstance(module, nn.LeakyReLU):
        if relu_split:
            raise ConfigError(f"method.relu_split=true but '{name}' is LeakyReLU; set method.relu_split=false")
        if module.negative_slope <= 0:
            raise ConfigError(f"'{name}' has LeakyReLU slope {module.negative_slope}: PCNS needs slope > 0; "
                              f"set model.leaky_slope > 0")
        return float(module.negative_slope)
    if isinstance(module, nn.ReLU):
        if not relu_split:
            raise ConfigError(f"'{name}' is ReLU, which PCNS cannot invert; set model.act=leaky_relu "
                              f"(or method.relu_split=true for the draft's ReLU variant)")
        return 0.0
    raise ConfigError(f"'{name}' is {type(module).__name__}; PCNS supports LeakyReLU (and ReLU with relu_split)")


# --------------------------------------------------------------------------- where PCNS applies
class MixPool(nn.Module):
    """`pool(mix(x))`: PCNS's P kept as a bias-free 1x1 conv in front of a max pool (maxpool: explicit),
    because maxpool(P e) != P maxpool(e). Trainable like any layer; a later shrink multiplies it by
    the new P."""

    def __init__(self, mix: nn.Conv2d, pool: nn.Module):
        super().__init__()
        self.mix, self.pool = mix, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.mix(x))


@dataclass
class Site:
    """One shrinkable hidden layer: producer -> [bn] -> act -> between... -> consumer -> [consumer_bn]."""
    producer: str
    bn: Optional[str]
    act: str
    between: list[str]
    consumer: str
    consumer_bn: Optional[str]
    pool: Optional[str]              # the max pool (or MixPool) between act and consumer, if any


def _is_linear_between(m: nn.Module) -> bool:
    if isinstance(m, SelectAdaptivePool2d):
        return isinstance(m.pool, (nn.AdaptiveAvgPool2d, nn.Identity)) or m.pool_type == "avg"
    return isinstance(m, POOLS_LINEAR)


def chain_sites(items: list[tuple[str, nn.Module]]) -> tuple[list[Site], list[str]]:
    """Sites of a plain chain of modules (forward order); the last weighted layer is the output."""
    sites, skipped = [], []
    weighted = [i for i, (_, m) in enumerate(items) if isinstance(m, (nn.Conv2d, nn.Linear))]
    for a, b in zip(weighted, weighted[1:]):
        mids, j = items[a + 1:b], 0
        bn = None
        if j < len(mids) and isinstance(mids[j][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
            bn, j = mids[j][0], j + 1
        if j >= len(mids) or not isinstance(mids[j][1], (nn.ReLU, nn.LeakyReLU)):
            skipped.append(f"{items[a][0]}: no ReLU/LeakyReLU right after it")
            continue
        act, j = mids[j][0], j + 1
        rest = mids[j:]
        pools = [n for n, m in rest if isinstance(m, POOLS_MAX + (MixPool,))]
        if len(pools) > 1 or not all(_is_linear_between(m) or n in pools for n, m in rest):
            skipped.append(f"{items[a][0]}: unsupported modules between it and {items[b][0]}")
            continue
        after = items[b + 1] if b + 1 < len(items) else ("", None)
        cbn = after[0] if isinstance(after[1], (nn.BatchNorm1d, nn.BatchNorm2d)) else None
        sites.append(Site(items[a][0], bn, act, [n for n, m in rest if not isinstance(m, nn.Identity)],
                          items[b][0], cbn, pools[0] if pools else None))
    return sites, skipped


def find_sites(model: nn.Module) -> tuple[list[Site], list[str]]:
    """Shrinkable layers in forward order, from the model's published structure
    (bench.models.structure_of; a bare nn.Sequential is a chain of its children): along the
    module chain of a chain network, else inside each block only (a block's last conv writes
    the residual stream, whose channels the skip adds: not shrunk)."""
    st = structure_of(model)
    if st.chain:
        return chain_sites([(n, get_module(model, n)) for n in st.chain])
    sites = [Site(a.conv, a.bn, a.act, [], b.conv, b.bn, None)
             for block in st.blocks() for a, b in zip(block.body, block.body[1:])]
    return sites, ["residual stream (stem, block outputs, shortcuts): not shrunk by design"]


def check_site(model: nn.Module, s: Site) -> Optional[str]:
    """Why a site cannot be shrunk, or None."""
    prod, cons = get_module(model, s.producer), get_module(model, s.consumer)
    for name, m in ((s.producer, prod), (s.consumer, cons)):
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return f"{name}: grouped or non-zero-padded conv"
    out = prod.out_channels if isinstance(prod, nn.Conv2d) else prod.out_features
    inn = cons.in_channels if isinstance(cons, nn.Conv2d) else cons.in_features
    if out != inn:
        return f"{s.producer}: {out} outputs but {s.consumer} reads {inn} (flatten over space)"
    return None


# --------------------------------------------------------------------------- pure helpers
def apply_layer(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` without calling the module (so without its hooks: we run inside them)."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    return F.linear(x, layer.weight, layer.bias)


def im2col_chunks(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """(images, rows): float64 least-squares rows [rows, d + 1] (im2col patches or inputs, then a 1)
    of the images `x[images]`, in chunks of about `CHUNK_BYTES`; column order matches
    `layer.weight.reshape(n, -1)`, row order matches `as_samples` of the layer's output."""
    if isinstance(layer, nn.Linear):
        step = max(1, CHUNK_BYTES // (8 * (x.shape[1] + 1)))
    else:
        n_pos = im2col(x[:1], layer).shape[0]
        step = max(1, CHUNK_BYTES // (8 * (x.shape[1] * layer.weight[0, 0].numel() + 1) * n_pos))
    for i in range(0, len(x), step):
        images = slice(i, i + step)
        a = (x[images] if isinstance(layer, nn.Linear) else im2col(x[images], layer)).to(torch.float64)
        yield images, torch.cat([a, a.new_ones(len(a), 1)], 1)


def im2col(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """[N*Ho*Wo, C*kh*kw] patches in `conv.weight.reshape(n, -1)` column order (F.unfold's layout;
    shifted slices of the zero-padded input, several times faster than F.unfold on this CPU)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = xp.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    cols = [xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    return torch.stack(cols, 2).permute(0, 3, 4, 1, 2).reshape(n * ho * wo, c * kh * kw)


def full_weight(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """[n, d + 1] float64: flattened weights, then the bias (0 if none)."""
    w = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    b = layer.bias.detach().to(torch.float64) if layer.bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, b[:, None]], 1)


def gram_pca(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-pairs of H gram H on 1-perp (H centres over neurons): Lambda [n-1] descending, U [n, n-1].

    `gram` = X X^T summed over samples. Restricting to an orthonormal basis Q of 1-perp drops the
    null direction 1/sqrt(n) that centring always creates (Q^T H = Q^T)."""
    n = gram.shape[0]
    h = torch.eye(n, dtype=torch.float64, device=gram.device) - 1.0 / n
    q = torch.linalg.qr(h[:, :n - 1]).Q
    vals, vecs = torch.linalg.eigh(q.T @ gram @ q)
    order = torch.argsort(vals, descending=True)
    return vals[order].clamp_min(0), q @ vecs[:, order]


def components_for(lam: torch.Tensor, threshold: float) -> tuple[int, int]:
    """(M, M_max): smallest M whose eigenvalues reach `threshold` of the total, within the usable ones."""
    usable = int((lam > EIG_FLOOR_FRAC * lam[0]).sum()) if len(lam) and lam[0] > 0 else 0
    if usable == 0:
        return 0, 0
    expl = torch.cumsum(lam[:usable], 0) / lam.sum()
    m = int(torch.searchsorted(expl, torch.tensor(threshold - 1e-12, dtype=expl.dtype, device=expl.device))) + 1
    return min(max(m, 1), usable), usable


def solve_normal(ata: torch.Tensor, att: torch.Tensor, ridge_frac: float) -> torch.Tensor:
    """argmin_W ||A W - T||^2 + r ||W||^2 from A^T A, A^T T (float64), r = ridge_frac * mean diag."""
    eye = torch.eye(len(ata), dtype=ata.dtype, device=ata.device)
    k = ata + ridge_frac * ata.diagonal().mean().clamp_min(1e-300) * eye
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) == 0:
        return torch.cholesky_solve(att, chol)
    return torch.linalg.lstsq(k, att, driver="gelsd" if ata.device.type == "cpu" else None).solution


def residuals(ata: torch.Tensor, att: torch.Tensor, ttt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per target column ||A w - t||^2 from the normal-equation sums."""
    return (ttt - 2 * (w * att).sum(0) + (w * (ata @ w)).sum(0)).clamp_min(0)


# --------------------------------------------------------------------------- per-layer state
@dataclass
class LayerPlan:
    """One layer's shrink, filled by the passes of `shrink` in order (comments say which)."""
    site: Site                   # plan_layers
    slope: float
    n: int
    kind: str
    target: str = ""             # the module whose inputs get P: the consumer, or a mix in front of a max pool
    new_mix: bool = False        # the mix does not exist yet (first shrink across a max pool)
    positions: int = 1           # calibration_size: spatial positions per image of the output
    lam: Optional[torch.Tensor] = None        # gram_pass: PCA of the TOs (eigenvalues, vectors)
    u: Optional[torch.Tensor] = None
    total_sq: float = 0.0
    samples: int = 0
    shrink: bool = False         # set_widths
    m_comp: int = 0              # M
    width: int = 0               # neurons after: M + 1 (2M + 1 with relu_split)
    c: float = 0.0
    p: Optional[torch.Tensor] = None          # solve_layer: [n, width]
    w: Optional[torch.Tensor] = None          # [d + 1, width] float64 LS solution
    producer_new: Optional[nn.Module] = None
    bn_new: Optional[nn.Module] = None
    target_new: Optional[nn.Module] = None    # `target` reading the new channels (this layer alone)
    row: Optional[dict] = None                # the report's table row

    def resized(self) -> list[str]:
        """Modules whose width this shrink changes (a mix is not one of them: see `param_split`)."""
        return [self.site.producer] + ([self.site.bn] if self.site.bn else []) + \
            ([self.target] if self.target == self.site.consumer else [])


def projected_params(model: nn.Module, plans: list[LayerPlan], widths: dict[int, int]) -> int:
    """Parameter count of `model` after giving site i `widths[i]` neurons (no other change)."""
    total = sum(p.numel() for p in model.parameters())
    prod = {pl.site.producer: i for i, pl in enumerate(plans)}
    cons = {pl.target: i for i, pl in enumerate(plans) if not pl.new_mix}
    total += sum(plans[i].n * w for i, w in widths.items() if plans[i].new_mix)   # new 1x1 mixes
    for name in set(prod) | set(cons):
        m = get_module(model, name)
        out, inn = m.weight.shape[0], m.weight.shape[1]
        k = m.weight[0, 0].numel()
        bias = m.bias is not None
        if name in prod and prod[name] in widths:
            out = widths[prod[name]]
            bias = bias or plans[prod[name]].site.bn is None
        if name in cons and cons[name] in widths:
            inn = widths[cons[name]]
        total += out * inn * k + (out if bias else 0) - sum(p.numel() for p in m.parameters())
    for i, w in widths.items():
        if plans[i].site.bn is not None:
            bn = get_module(model, plans[i].site.bn)
            total += 2 * w - sum(p.numel() for p in bn.parameters())
    return total


def width_of(m_comp: int, relu_split: bool) -> int:
    return 2 * m_comp + 1 if relu_split else m_comp + 1


def choose(plans: list[LayerPlan], threshold: float, relu_split: bool, full_rank: bool) -> dict[int, int]:
    """Site index -> new width for one variance threshold (sites that do not shrink are left out)."""
    widths = {}
    for i, pl in enumerate(plans):
        if pl.lam is None:
            continue
        m, _ = components_for(pl.lam, threshold)
        w = width_of(m, relu_split)
        if w < pl.n or (full_rank and w <= pl.n):
            widths[i] = w
    return widths


# --------------------------------------------------------------------------- the shrink, pass by pass
class Stopwatch:
    """Wall-clock per named phase, for the report's `timing_s`."""

    def __init__(self):
        self.t_start, self.times = time.perf_counter(), {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        return {**self.times, "total_s": time.perf_counter() - self.t_start}


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the module of interest has run."""


def run_until(model: nn.Module, name: str, x: torch.Tensor, inputs: bool) -> torch.Tensor:
    """Forward `x` through `model` only as far as module `name`; its input (or output)."""
    seen: list[torch.Tensor] = []

    def stop(_: str, t: torch.Tensor) -> None:
        seen.append(t)
        raise _Reached
    try:
        with capture({name: get_module(model, name)}, stop, inputs=inputs):
            model(x)
    except _Reached:
        pass
    return seen[0]


def plan_layers(model: nn.Module, cfg: "PCNS.Config") -> tuple[list[LayerPlan], list[str]]:
    """The layers this shrink considers (forward order), each with where its P will go; the
    reasons others are left alone."""
    sites, skipped = find_sites(model)
    if cfg.layers:
        unknown = set(cfg.layers) - {s.producer for s in sites}
        if unknown:
            raise ConfigError(f"method.layers: {sorted(unknown)} are not shrinkable layers; "
                              f"choose from {[s.producer for s in sites]}")
        sites = [s for s in sites if s.producer in cfg.layers]
    plans: list[LayerPlan] = []
    for s in sites:
        mixed = s.pool is not None and isinstance(get_module(model, s.pool), MixPool)
        why = check_site(model, s) or (f"{s.producer}: max pool before its consumer (maxpool=skip)"
                                       if s.pool and not mixed and cfg.maxpool == "skip" else None)
        if why:
            skipped.append(why)
            continue
        prod = get_module(model, s.producer)
        pl = LayerPlan(s, act_slope(get_module(model, s.act), cfg.relu_split, s.act), n=prod.weight.shape[0],
                       kind="conv" if isinstance(prod, nn.Conv2d) else "linear")
        if mixed:                                   # P goes into the existing mix: exact
            pl.target = s.pool + ".mix"
        elif s.pool and cfg.maxpool == "explicit":  # a new mix in front of the pool: exact
            pl.target, pl.new_mix = s.pool + ".mix", True
        else:                                       # the consumer (maxpool=commute: P moved past the pool)
            pl.target = s.consumer
        plans.append(pl)
    if not plans:
        raise ConfigError("PCNS found no layer to shrink in this model (see method.layers / maxpool)")
    return plans, skipped


def calibration_size(model: nn.Module, plans: list[LayerPlan], cfg: "PCNS.Config",
                     example_inputs: torch.Tensor) -> int:
    """Calibration images: `calibration_images` for conv models, more where a layer needs
    `samples_per_unit` samples per neuron (sets each plan's spatial `positions`)."""
    pos: dict[str, int] = {}

    def probe(name: str, t: torch.Tensor) -> None:
        pos[name] = t[0, 0].numel() if t.dim() == 4 else 1
    with capture({pl.site.producer: get_module(model, pl.site.producer) for pl in plans}, probe):
        model(example_inputs[:1])
    for pl in plans:
        pl.positions = pos[pl.site.producer]
    need = [math.ceil(cfg.samples_per_unit * pl.n / pl.positions) for pl in plans]
    return max(need + [cfg.calibration_images if any(pl.kind == "conv" for pl in plans) else 0])


def weight_device(model: nn.Module, name: str) -> torch.device:
    """Where module `name` computes, so where the data its statistics come from lives."""
    return get_module(model, name).weight.device


def gram_pass(model: nn.Module, plans: list[LayerPlan], batches: Iterable[torch.Tensor]) -> None:
    """Steps 1-2: the n x n Gram X_l X_l^T of each layer's outputs (after the activation) summed
    over all samples, then its PCA (sets `lam`, `u`, `samples`, `total_sq`)."""
    sums = {pl.site.act: SumAccumulator({"gram": (pl.n, pl.n)}, weight_device(model, pl.site.producer))
            for pl in plans}

    def hook(act: str, out: torch.Tensor) -> None:
        xs = as_samples(out).to(torch.float64)
        sums[act].add("gram", xs.T @ xs)
        sums[act].count += len(xs)
    with capture({a: get_module(model, a) for a in sums}, hook):
        for x in batches:
            model(x)
    for pl in plans:
        acc = sums[pl.site.act].all_reduce_()      # under torchrun: every rank's shard of the images
        pl.samples, pl.total_sq = acc.count, float(acc["gram"].trace())
        if pl.n >= 2:
            pl.lam, pl.u = gram_pca(acc["gram"])


def choose_widths(model: nn.Module, plans: list[LayerPlan], cfg: "PCNS.Config",
                  target_params: Optional[int]) -> tuple[float, dict[int, int]]:
    """(variance threshold, plan index -> new width): `cfg.energy` per layer, or one threshold
    bisected so the shrunk model has at most `target_params` parameters."""
    def widths_at(threshold: float) -> dict[int, int]:
        return choose(plans, threshold, cfg.relu_split, cfg.transform_full_rank)
    if target_params is None:
        return cfg.energy, widths_at(cfg.energy)
    at_0 = widths_at(0.0)
    floor = projected_params(model, plans, at_0)
    if floor > target_params:
        raise TargetError(f"method.target_params: {target_params:,} parameters are below what PCNS reaches with "
                          f"one component per layer ({floor:,}); raise method.target_params")
    (lo, widths), _ = bisect_fraction(widths_at, lambda w: projected_params(model, plans, w) <= target_params,
                                      at_0, None)
    return lo, widths


def set_widths(plans: list[LayerPlan], widths: dict[int, int], cfg: "PCNS.Config") -> list[LayerPlan]:
    """Mark the layers that shrink, with their M and scale c; returns them (forward order)."""
    for i, pl in enumerate(plans):
        if i in widths:
            pl.shrink, pl.width = True, widths[i]
            pl.m_comp = (widths[i] - 1) // 2 if cfg.relu_split else widths[i] - 1
            rms = math.sqrt(pl.total_sq / max(pl.n * pl.samples, 1))
            pl.c = cfg.ev_scale * math.sqrt(pl.samples) * max(rms, 1e-30)
    return [pl for pl in plans if pl.shrink]


def ev_map(pl: LayerPlan) -> torch.Tensor:
    """[n, M]: x_s -> c EV_i(s) = c u_i^T x_s / sqrt(Lambda_i) (u_i is orthogonal to 1: H drops out)."""
    return pl.u[:, :pl.m_comp] * (pl.c / pl.lam[:pl.m_comp].sqrt())


def ls_targets(xs: torch.Tensor, z_map: torch.Tensor, slope: float, relu_split: bool) -> torch.Tensor:
    """Step 3's targets [rows, 2M + 1] from the layer outputs `xs` [rows, n] (eq. 4): sigma^{-1} of
    +c EV_i, of -c EV_i (both signs, see `solve_layer`) and of TO_hat; with `relu_split`
    relu(+c EV_i), relu(-c EV_i) and TO_hat."""
    z = xs @ z_map
    mean_to = xs.mean(1, keepdim=True)
    if relu_split:
        return torch.cat([F.relu(z), F.relu(-z), mean_to], 1)
    return torch.cat([sigma_inv(z, slope), sigma_inv(-z, slope), sigma_inv(mean_to, slope)], 1)


def normal_sums(model: nn.Module, pl: LayerPlan) -> SumAccumulator:
    """Empty normal-equation sums for layer `pl` as `model` has it now: A^T A, A^T T, ||T||^2."""
    prod = get_module(model, pl.site.producer)
    d1, k = prod.weight[0].numel() + 1, 2 * pl.m_comp + 1
    return SumAccumulator({"ata": (d1, d1), "att": (d1, k), "ttt": (k,)}, prod.weight.device)


def add_rows(acc: SumAccumulator, a: torch.Tensor, t: torch.Tensor) -> None:
    acc.add("ata", a.T @ a)
    acc.add("att", a.T @ t)
    acc.add("ttt", (t * t).sum(0))
    acc.count += len(a)


def draft_ls_pass(model: nn.Module, active: list[LayerPlan], relu_split: bool,
                  batches: Iterable[torch.Tensor]) -> dict[str, SumAccumulator]:
    """Step 3's sums for every layer in one pass over the unshrunk network (the draft's order):
    A = the layer's inputs, targets from its own outputs recomputed in float64 from them."""
    sums = {pl.site.producer: normal_sums(model, pl) for pl in active}
    fits = {}
    for pl in active:
        prod = get_module(model, pl.site.producer)
        folded = fold_bn(prod, get_module(model, pl.site.bn)) if pl.site.bn else prod
        fits[pl.site.producer] = (pl, folded, full_weight(folded).T, ev_map(pl))

    def hook(name: str, x: torch.Tensor) -> None:
        pl, folded, wt, z_map = fits[name]
        for _, a in im2col_chunks(folded, x):
            add_rows(sums[name], a, ls_targets(sigma(a @ wt, pl.slope), z_map, pl.slope, relu_split))
    with capture({name: get_module(model, name) for name in sums}, hook, inputs=True):
        for x in batches:
            model(x)
    return {name: acc.all_reduce_() for name, acc in sums.items()}


def solve_layer(model: nn.Module, pl: LayerPlan, acc: SumAccumulator, cfg: "PCNS.Config") -> dict[str, float]:
    """Steps 3-4 from the summed normal equations: picks each EV's sign, sets the LS weights `w`,
    P, the new producer and its fresh BN; returns the least-squares residuals."""
    ata, att, ttt = acc["ata"], acc["att"], acc["ttt"]
    w_all = solve_normal(ata, att, cfg.ls_ridge)
    res = residuals(ata, att, ttt, w_all)
    m = pl.m_comp
    coef = pl.u[:, :m] * (pl.lam[:m].sqrt() / pl.c)                 # lambda_ji / c
    if cfg.relu_split:
        cols = [c for i in range(m) for c in (i, m + i)] + [2 * m]
        pcols = [v for i in range(m) for v in (coef[:, i], -coef[:, i])]
    else:
        neg = res[m:2 * m] < res[:m]                                # sign of EV_i with the smaller residual
        cols = [m + i if bool(neg[i]) else i for i in range(m)] + [2 * m]
        pcols = [-coef[:, i] if bool(neg[i]) else coef[:, i] for i in range(m)]
    pl.p = torch.stack(pcols + [torch.ones(pl.n, dtype=torch.float64, device=coef.device)], 1)
    pl.w = w_all[:, cols]
    mean = (ata[-1] @ pl.w) / acc.count                             # of the new pre-activations
    var = ((pl.w * (ata @ pl.w)).sum(0) / acc.count - mean ** 2).clamp_min(0)
    pl.producer_new, pl.bn_new = new_producer(model, pl, mean, var)
    ls_res, t_sq = float(res[cols[:-1]].sum()), float(ttt[cols[:-1]].sum())   # EV columns (c-free)
    return {"ls_residual": ls_res / max(t_sq, 1e-300),
            "ls_residual_mean_to": float(res[cols[-1]]) / max(float(ttt[cols[-1]]), 1e-300),
            "ls_residual_abs": float(res[cols].sum()), "ls_unknowns": int(ata.shape[0])}


def layer_row(pl: LayerPlan, fit: dict[str, float]) -> dict[str, Any]:
    """The report's row for one layer (before the error table adds its columns)."""
    m = pl.m_comp
    kept = float(pl.lam[:m].sum() / pl.lam.sum()) if float(pl.lam.sum()) > 0 else 1.0
    return {"layer": pl.site.producer, "consumer": pl.site.consumer, "kind": pl.kind,
            "n_before": pl.n, "n_after": pl.width, "components": m, "variance_kept": kept,
            "pca_err": float(pl.lam[m:].sum()) / max(pl.total_sq, 1e-300), **fit,
            "samples": pl.samples, "c": pl.c, "p_into": pl.target + (" (new)" if pl.new_mix else "")}


def isolated_target(model: nn.Module, pl: LayerPlan) -> nn.Module:
    """`pl.target` reading the new channels, with only this layer changed (for the error table)."""
    target = identity_conv(pl.n, pl.p.device) if pl.new_mix else get_module(model, pl.target)
    return substitute_inputs(target, pl.p)


def error_table(model: nn.Module, active: list[LayerPlan], batches: Callable[..., Iterable[torch.Tensor]],
                n_err: int) -> dict[bool, list[torch.Tensor]]:
    """Draft sec. 4.2: each layer's change on its own, on calibration and held-out images (adds
    `out_err_*`, `next_err_*` to the rows); returns the unshrunk model's logits per image set."""
    logits_old: dict[bool, list[torch.Tensor]] = {}
    for heldout in ((False, True) if n_err > 0 else ()):
        errs, logits_old[heldout] = layer_errors(model, active, batches(heldout, n_err))
        tag = "heldout" if heldout else "cal"
        for pl in active:
            e = errs[pl.site.producer]
            pl.row[f"out_err_{tag}"] = math.sqrt(e[0] / max(e[1], 1e-300))
            pl.row[f"next_err_{tag}"] = math.sqrt(e[2] / max(e[3], 1e-300))
    return logits_old


def apply_surgery(model: nn.Module, pl: LayerPlan) -> None:
    """Put one layer's shrink into `model`: the new producer and its fresh BN, then P into the
    target (the consumer, or the mix in front of a max pool, created on the first shrink)."""
    set_module(model, pl.site.producer, pl.producer_new)
    if pl.site.bn:
        set_module(model, pl.site.bn, pl.bn_new)
    if pl.new_mix:
        set_module(model, pl.site.pool, MixPool(identity_conv(pl.n, pl.p.device), get_module(model, pl.site.pool)))
    set_module(model, pl.target, substitute_inputs(get_module(model, pl.target), pl.p))
    model.eval()                                                    # the fresh BN too


def refit_pass(model: nn.Module, teacher: nn.Module, active: list[LayerPlan], cfg: "PCNS.Config",
               batches: Callable[[], Iterable[torch.Tensor]]) -> None:
    """`refit: true`: shrink `model` bottom-up, fitting each layer on the inputs the already-shrunk
    layers below it produce (the draft's order fits all on the unshrunk network, sec. 9.1). The
    targets, P and M stay those of the unshrunk network (`teacher`, same images): the least squares
    maps what the shrunk network sees onto what the original computed. One pass per layer, each
    forward stopped at that layer; adds `*_refit` residuals to the rows."""
    for pl in active:                                               # forward order
        acc, student = normal_sums(model, pl), get_module(model, pl.site.producer)
        z_map = ev_map(pl)
        for x in batches():
            x_old = run_until(teacher, pl.site.act, x, inputs=False)   # X_l of the unshrunk network
            x_in = run_until(model, pl.site.producer, x, inputs=True)  # layer l's input, shrunk below
            for images, a in im2col_chunks(student, x_in):
                xs = as_samples(x_old[images]).to(torch.float64)
                add_rows(acc, a, ls_targets(xs, z_map, pl.slope, cfg.relu_split))
        fit = solve_layer(model, pl, acc.all_reduce_(), cfg)
        pl.row.update({f"{k}_refit": v for k, v in fit.items()})
        apply_surgery(model, pl)


def logit_errors(model: nn.Module, logits_old: dict[bool, list[torch.Tensor]],
                 batches: Callable[..., Iterable[torch.Tensor]], n_err: int, suffix: str = "") -> dict[str, float]:
    """`logit_err_*` (relative L2) and `top1_agreement_*` of `model` against the unshrunk logits."""
    out = {}
    model.eval()
    for heldout, old in logits_old.items():
        num = den = agree = total = 0.0
        for x, y_old in zip(batches(heldout, n_err), old):
            y_new = model(x)
            num += float(((y_new - y_old) ** 2).sum())
            den += float((y_old ** 2).sum())
            agree += float((y_new.argmax(1) == y_old.argmax(1)).sum())
            total += len(x)
        tag = "heldout" if heldout else "cal"
        out[f"logit_err_{tag}{suffix}"] = math.sqrt(num / max(den, 1e-300))
        out[f"top1_agreement_{tag}{suffix}"] = agree / max(total, 1)
    return out


def param_split(model: nn.Module, resized: Iterable[str]) -> dict[str, int]:
    """The model's parameters by role: `shrunk` (modules whose width PCNS changed: shrunk layers,
    their fresh BNs, consumers reading the new neurons directly), `mix` (the 1x1 mixes kept in
    front of max pools) and `untouched` (the rest, e.g. consumers behind a mix); they sum to the total."""
    total = sum(p.numel() for p in model.parameters())
    mix = sum(p.numel() for m in model.modules() if isinstance(m, MixPool) for p in m.mix.parameters())
    names = dict(model.named_modules())
    shrunk = sum(p.numel() for n in set(resized) if n in names for p in names[n].parameters())
    return {"shrunk": shrunk, "mix": mix, "untouched": total - shrunk - mix}


def mix_consumer_excess(model: nn.Module) -> int:
    """Parameters the consumers behind the mixes spend on reading a mix's n channels instead of
    the M + 1 it mixes (with `maxpool: commute` they would read M + 1; counted in `param_split`'s
    shrunk or untouched)."""
    excess = 0
    for s in find_sites(model)[0]:
        pool = get_module(model, s.pool) if s.pool else None
        if isinstance(pool, MixPool):
            excess += get_module(model, s.consumer).weight[:, 0].numel() * (pool.mix.out_channels -
                                                                           pool.mix.in_channels)
    return excess


@torch.no_grad()
def shrink(model: nn.Module, cfg: "PCNS.Config", calibration: Callable[..., Iterator[torch.Tensor]],
           example_inputs: torch.Tensor, target_params: Optional[int] = None
           ) -> tuple[nn.Module, dict[str, Any], list[LayerPlan]]:
    """One PCNS shrink of every hidden layer of `model` (in place). Returns the model, the report
    (JSON-able: per-layer table in shrink order) and the per-layer plans (tensors, for tests).

    `calibration(n_images, batch_size, heldout)` yields normalised image batches (ctx.calibration).
    `target_params`: absolute parameter count to meet (else cfg.energy per layer). Runs outside
    autocast: every forward in the model's dtype, every sum in float64."""
    clock = Stopwatch()
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
                pl.target_new = isolated_target(model, pl)
        n_err = min(cfg.error_images, n_images)
        with clock("errors_s"):
            logits_old = error_table(model, active, batches, n_err)
        report: dict[str, Any] = {"threshold": threshold, "projected_params": projected,
                                  "target_params": target_params, "calib_images": n_images,
                                  "error_images": n_err, "skipped": skipped, "refit": cfg.refit,
                                  "order": [pl.site.producer for pl in reversed(plans)],
                                  "resized": sorted({n for pl in active for n in pl.resized()})}
        if cfg.refit:
            teacher, draft = copy.deepcopy(model), copy.deepcopy(model)
            with clock("logits_norefit_s"):
                for pl in reversed(active):
                    apply_surgery(draft, pl)
                report.update(logit_errors(draft, logits_old, batches, n_err, suffix="_norefit"))
            del draft
            report["order"] = [pl.site.producer for pl in plans]
            with clock("refit_s"):
                refit_pass(model, teacher, active, cfg, batches)
        else:
            with clock("surgery_s"):                                # second-to-last layer down (sec. 9.1)
                for pl in reversed(active):
                    apply_surgery(model, pl)
        with clock("logits_s"):
            report.update(logit_errors(model, logits_old, batches, n_err))
    report.update({"layers": [pl.row for pl in (active if cfg.refit else reversed(active))],
                   "unchanged": [pl.site.producer for pl in reversed(plans) if not pl.shrink],
                   "timing_s": clock.total()})
    model.train(was_training)
    return model, report, plans


@torch.no_grad()
def identity_conv(n: int, device: torch.device) -> nn.Conv2d:
    """A bias-free 1x1 conv computing the identity on n channels (the mix before P goes in)."""
    conv = nn.Conv2d(n, n, 1, bias=False).to(device)
    conv.weight.copy_(torch.eye(n, device=device)[:, :, None, None])
    return conv


@torch.no_grad()
def new_producer(model: nn.Module, pl: LayerPlan, mean: torch.Tensor, var: torch.Tensor
                 ) -> tuple[nn.Module, Optional[nn.Module]]:
    """The shrunk layer (LS weights, `pl.w`) and its fresh BN (eval-mode identity, see docstring)."""
    old = get_module(model, pl.site.producer)
    bn_old = get_module(model, pl.site.bn) if pl.site.bn else None
    bias = old.bias is not None or bn_old is None
    m = pl.width
    if isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, m, old.kernel_size, old.stride, old.padding, old.dilation, bias=bias)
    else:
        new = nn.Linear(old.in_features, m, bias=bias)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    w = pl.w.T                                                # [m, d + 1]
    new.weight.copy_(w[:, :-1].reshape(new.weight.shape).to(new.weight.dtype))
    if bias:
        new.bias.copy_(w[:, -1].to(new.bias.dtype))
    if bn_old is None:
        return new, None
    bn = type(bn_old)(m, eps=bn_old.eps, momentum=bn_old.momentum).to(device=old.weight.device)
    z_mean = mean if bias else mean - w[:, -1]                # mean of what the new layer outputs
    bn.running_mean.copy_(z_mean.to(bn.running_mean.dtype))
    bn.running_var.copy_(var.to(bn.running_var.dtype))
    bn.weight.copy_(torch.sqrt(var + bn_old.eps).to(bn.weight.dtype))
    bn.bias.copy_(mean.to(bn.bias.dtype))                     # + the LS bias if the layer has none
    return new, bn


@torch.no_grad()
def layer_errors(model: nn.Module, plans: list[LayerPlan], batches) -> tuple[dict, list[torch.Tensor]]:
    """For every plan, on its own: sums ||P e - x||^2, ||x||^2 (layer output) and ||s~ - s||^2, ||s||^2
    (the next weighted layer's pre-activation, its BN included) over `batches`, plus the logits."""
    sums = {pl.site.producer: [0.0, 0.0, 0.0, 0.0] for pl in plans}
    by_name = {pl.site.producer: pl for pl in plans}

    def next_pre(pl: LayerPlan, t: torch.Tensor, new: bool) -> torch.Tensor:
        for name in pl.site.between:
            m = get_module(model, name)
            if new and name == pl.site.pool and pl.target.startswith(name + "."):    # through the (new) mix
                t = (m.pool if isinstance(m, MixPool) else m)(apply_layer(pl.target_new, t))
            else:
                t = m(t)
        cons = pl.target_new if new and pl.target == pl.site.consumer else get_module(model, pl.site.consumer)
        t = apply_layer(cons, t)
        return get_module(model, pl.site.consumer_bn)(t) if pl.site.consumer_bn else t

    def hook(name: str, x: torch.Tensor) -> None:
        pl, s = by_name[name], sums[name]
        s_old = apply_layer(get_module(model, pl.site.producer), x)
        if pl.site.bn:
            s_old = get_module(model, pl.site.bn)(s_old)
        x_old = sigma(s_old, pl.slope)
        e = pl.producer_new(x)
        if pl.bn_new is not None:
            e = pl.bn_new.eval()(e)
        e = sigma(e, pl.slope)
        x_rec = torch.einsum("jm,nm...->nj...", pl.p.to(e.dtype), e)
        s[0] += float(((x_rec - x_old) ** 2).sum())
        s[1] += float((x_old ** 2).sum())
        nxt_old, nxt_new = next_pre(pl, x_old, False), next_pre(pl, e, True)
        s[2] += float(((nxt_new - nxt_old) ** 2).sum())
        s[3] += float((nxt_old ** 2).sum())
    outs = []
    with capture({k: get_module(model, k) for k in sums}, hook, inputs=True):
        for x in batches:
            outs.append(model(x))
    return sums, outs


# --------------------------------------------------------------------------- the method
@register("pcns")
class PCNS(Method):
    """PCA network shrinking, repeated at `transform_epochs` (see the module docstring)."""

    @dataclass
    class Config(TargetConfig):
        target_kinds: ClassVar[tuple[str, ...]] = ("params",)
        transform_epochs: list[int] = opt([2], "shrink after these completed epochs, each time the already-shrunk "
                                       "network (draft sec. 2: repeatable during training; 2 of the quick 8-epoch "
                                       "recipe: a partially trained network)")
        energy: float = opt(0.99, "per-layer fraction of the TOs' centred variance to keep (draft sec. 2.2 "
                            "'variance threshold', value TODO there; PCN's example)")
        calibration_images: int = opt(MIN_CONV_IMAGES, "calibration images at least, for models with conv layers "
                                "(issue 6: 2,048)")
        samples_per_unit: int = opt(SAMPLES_PER_UNIT, "calibration samples per neuron at least, conv positions "
                                    "counted as samples (METHODS.md sec. 2: 10; draft sec. 4.3)")
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
        transform_full_rank: bool = opt(False, "also transform layers whose new width M+1 is not smaller (tests)")
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
        model, report, _ = shrink(model, self.cfg, self.ctx.calibration, self.ctx.example_inputs, target)
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

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
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
        return {"shrinks": self.shrinks, "params": sum(p.numel() for p in model.parameters()),
                "params_frac_of_dense": sum(p.numel() for p in model.parameters()) / self.ctx.dense_params,
                "param_split": param_split(model, self.resized()), "mix_consumer_excess": mix_consumer_excess(model)}

    def state_dict(self) -> dict[str, Any]:
        return {"shrinks": self.shrinks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shrinks = state.get("shrinks", [])
