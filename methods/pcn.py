"""PCN: Principal Component Networks (Waleffe & Rekatsinas, arXiv 2006.13347; journal version:
"Principal Component Networks: Utilizing Low-Rank Activation Structure to Reduce Parameters Early
in Training", ACM/IMS J. Data Science 2024). Description: docs/methods/pcn.md; the authors'
TensorFlow code is github rogerwaleffe/Principal-Component-Networks, `src/pcns/` (read, not copied).

Train the full network for `transform_epoch` epochs, then in one step (`pcn_transform`):

1. Calibration: one eval-mode pass over `calibration_images` unaugmented training images,
   accumulating the channel mean `mu` and covariance `S = Xc Xc^T / (s-1)` of exactly the tensor
   each transformed layer reads (a forward PRE-hook on the consumer: after BN, ReLU and pooling).
   `bench.activations.collect_covariances`, never all activations at once. Where and in which dtype:
   the calibration forward runs in float32 with autocast disabled (bf16/fp16 batches are cast up,
   channels_last ones are fine), and the sums are accumulated in float64 (`calibrate`).
2. Eigendecomposition `S = V diag(lambda) V^T` (`bench.activations.PCA`), top-k eigenvectors `V_k`.
3. Output side (channel selection, code: `tf_kill_outputs` / `tf_get_indices_from_muVs`): the
   producer's output channels are scored by their loadings on the kept components,
   `score_c = sum_{j<k} |V[c, j]|`, or with `score: weighted`, `sum_{j<k} |V[c, j]| lambda_j`
   (code's `weighted_row_sum`). The top-m channels are kept: the producer's filters, bias and BN
   entries and the rows of the consumer's `mu`, `V` are sliced. A dropped channel is thereby
   replaced by its calibration mean. The removal itself goes through torch-pruning's
   `DependencyGraph`, which also slices every other layer coupled to the channel (the residual
   adds, every block of a stage, the next stage's first block).
4. Input side (rotation, code: `tf_transform_conv_weights`, `Conv2DPCALayer`): the layer reads
   `z = V_k^T (x - mu)`. Conv: `W'[:, :, i, j] = W[:, :, i, j] V_k`, `b' = b + sum_ij W[:, :, i, j] mu`
   (`bench.surgery.substitute_inputs`). The projection is a frozen 1x1 conv (weight `V_k^T`,
   bias `-V_k^T mu`) applied to the ZERO-PADDED input, then the k x k conv runs unpadded
   (`PCNConv`, as the authors' ZeroPadding2D, project, VALID conv). Every input position,
   padding included, is thus seen as its reconstruction `mu + V_k V_k^T (x - mu)`: a padding zero
   is treated like any pixel of value 0, so borders are exact only at k = d (then the function
   is unchanged, border pixels included); at k < d they carry the same kind of error as the
   interior. Linear: `PCNLinear`. `V_k` and `mu` are frozen parameters (`requires_grad=False`):
   counted in the model's size, never trained (the authors' `trainable=False` weights).

Error of k components for one linear layer `y = W x + b` on the calibration data (tested):
`sum_samples ||y - y_k||^2 / (s - 1) = sum_{j >= k} lambda_j ||W v_j||^2`.

Parameters of a site (the tensor some consumers read, one PCA) as a function of k (`SiteCost`):
`k (sum_c out_c kh_c kw_c + d + 1) + sum_c out_c` rotated (k inputs per consumer, the frozen
`d x k` projection and its k biases, a bias per consumer absorbing `W mu`), against the
consumers' parameters as they are. A site whose k is at or above this break-even is left as it is
(no projection, original layers) and listed in `skipped_sites`.

Choices where the sources are silent or differ (docs/methods/pcn.md):
- How many components: `dims` (explicit, as the authors' configs), else `target_params` (the total
  parameter count, frozen projections included, within `target_tol_frac` (relative) of the target fraction of the dense
  count), else `energy` (per-layer explained-variance threshold, 0.99 if unset). The code's
  absolute eigenvalue cut-off and width fraction are not offered. `allocation` says how
  `target_params` is spent: `threshold` (the default), one explained-variance threshold shared
  by all sites, bisected to the target (the authors' per-layer energy rule with one global
  value, as the method is specified for this suite); or `greedy`, our variant, every component
  of every site ranked by its eigenvalue share `lambda_j / sum_i lambda_i` per parameter it
  costs (`out kh kw` summed over the consumers plus `d + 1` for its projection row, at the
  unpruned shapes) and the best prefix of that ranking bisected to the target (its runs:
  results/pcn-greedy-quick). A site the bisection takes to its break-even is left as it is.
- The classifier's input: never in `all` or `late`; it can be named in a list of layers, and
  then keeps k >= num_classes (out_features). With a bias,
  `k (out + d + 1) + out >= d out + out` for every k >= out, so a named classifier is always at
  its break-even and left as it is: cutting it never saves parameters. Consequently the
  classifier's input stream (VGG's last conv, a ResNet's last stage) keeps all its channels.
- How many output channels: the code takes a separate count or threshold per layer; its CIFAR
  VGG-16 and ResNet configs select none, its one config that selects channels keeps as many as
  the next layer keeps components (`'d64'` out / `'d64'` in). Here
  `m = min(d, ceil(out_channels_ratio * k))`; the default `null` keeps every channel (their
  CIFAR configs), `1.0` is that pattern. Dropped channels lose part of the next layer's input
  variance (`kept_var` in the summary). `score` and `residual_channels` only act with a ratio.
- A stream's channels are removed only when every layer reading it is rotated (its score needs
  their PCA, and an untouched reader would see a dropped channel as 0, not as its mean).
- ResNets: the residual stream is never rotated; each reader of it (a block's first conv, and
  its projection shortcut, which shares the block-input PCA and ONE frozen projection module:
  the authors duplicated it) and each block-internal input (conv2, Bottleneck conv3) is.
  Residual channels are removed per stage, jointly over the stage's stem/projection-shortcut
  and last-conv producers (`residual_channels: joint`, the default), or never (`keep`). In the
  suite's timm ResNet-20 the stem writes into stage 1's stream (no shortcut projection there),
  so the stem belongs to that stage; the authors' net had a stage-1 projection.
- `layers: late` = the authors' choice of layers: VGG, the convs of the last two blocks
  between max-pools (VGG-16: conv 8-13); ResNet, every input read inside the last stage
  (block-internal inputs, the first convs of blocks 2..n), as in their CIFAR ResNet config
  (stage 3; their fc1 kept full width, a pure rotation that only adds parameters). Each
  family sets how many last stages are late (`pcn.late_stages` in bench/models/vgg.py, resnet.py).
- `transform_epoch` None: the family's `pcn.transform_epoch`, 1 for VGG, 5 for ResNets
  (vgg16.py / resnet/cifar10.py EPOCHS_BEFORE_COMPRESSION). Calibration: 5,000 images
  (NUM_SAMPLES_FOR_COMPRESSION).
- The transformed convs carry a bias (absorbing `W mu`) even before a BN, as in the code.
- Timings: `summary()["timing_s"]` has our own sub-steps; `transform_to_epoch_ratio` divides
  their total by the training seconds of the epoch just completed (`ctx.last_epoch_s`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, Union

import torch
import torch_pruning as tp
from torch import nn

from bench.config import ConfigError, opt
from bench.activations import PCA, CovarianceAccumulator, collect_covariances
from bench.metrics import Clock, param_counts
from bench.models import RESIDUAL, model_defaults, structure_of
from bench.surgery import get_module, set_module, substitute_inputs
from bench.targets import TOL_FRAC, TargetError, bisect_fraction
from methods.base import Method, TargetConfig, register

CALIBRATION_IMAGES = 5000          # NUM_SAMPLES_FOR_COMPRESSION in vgg16.py and resnet/cifar10.py
TRANSFORM_EPOCH = 1                # a family's "pcn.transform_epoch" default where it sets none
LATE_STAGES = 1                    # a family's "pcn.late_stages" default where it sets none
ENERGY_DEFAULT = 0.99              # the usual 99% of the variance, when neither dims nor target_params is set


# --------------------------------------------------------------------------- PCN layers
class PCNConv(nn.Module):
    """Zero-pad, frozen 1x1 projection `z = V^T (x - mu)`, then the k x k conv `W V`, unpadded."""

    def __init__(self, pad: nn.Module, proj: nn.Conv2d, conv: nn.Conv2d):
        super().__init__()
        self.pad, self.proj, self.conv = pad, proj, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.proj(self.pad(x)))


class PCNLinear(nn.Module):
    """Frozen projection `z = V^T (x - mu)`, then the Linear `W V`."""

    def __init__(self, proj: nn.Linear, linear: nn.Linear):
        super().__init__()
        self.proj, self.linear = proj, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.proj(x))


@torch.no_grad()
def make_projection(v: torch.Tensor, mu: torch.Tensor, conv: bool, like: torch.Tensor) -> nn.Module:
    """Frozen `z = V^T (x - mu)`: weight `V^T` (k x d), bias `-V^T mu`; 1x1 conv or Linear."""
    d, k = v.shape
    proj = nn.Conv2d(d, k, 1, bias=True) if conv else nn.Linear(d, k, bias=True)
    proj = proj.to(device=like.device, dtype=like.dtype)
    v64, mu64 = v.to(torch.float64), mu.to(device=v.device, dtype=torch.float64)
    proj.weight.copy_(v64.T.reshape(proj.weight.shape).to(like.dtype))
    proj.bias.copy_((-(v64.T @ mu64)).to(like.dtype))
    proj.requires_grad_(False)
    return proj


@torch.no_grad()
def pcn_layer(layer: nn.Conv2d | nn.Linear, v: torch.Tensor, mu: torch.Tensor,
              proj: Optional[nn.Module] = None) -> nn.Module:
    """The PCN replacement of `layer` reading `z = V^T (x - mu)` (`v`: [d, k], `mu`: [d]).
    `proj` lets layers reading the same tensor share one frozen projection."""
    if proj is None:
        proj = make_projection(v, mu, isinstance(layer, nn.Conv2d), layer.weight)
    inner = substitute_inputs(layer, v, mu)          # W V at every kernel position, b + sum W mu
    if isinstance(layer, nn.Linear):
        return PCNLinear(proj, inner)
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ConfigError(f"pcn: conv padding {layer.padding!r} ({layer.padding_mode}) is not supported; "
                          f"leave this layer out of method.layers")
    ph, pw = layer.padding
    pad = nn.ZeroPad2d((pw, pw, ph, ph)) if (ph or pw) else nn.Identity()
    inner.padding = (0, 0)                           # the padding now happens before the projection
    return PCNConv(pad, proj, inner)


# --------------------------------------------------------------------------- model graph
@dataclass
class Stream:
    """A set of channels written by one or more producers (conv, its BN) and read by sites."""
    name: str
    producers: list[tuple[str, Optional[str]]]
    width: int
    residual: bool = False
    stage: int = 0
    sites: list[str] = field(default_factory=list)


@dataclass
class Site:
    """One tensor some layers read: one PCA. `consumers[0]` carries the hook and the name."""
    name: str
    consumers: list[str]
    stream: str
    late: bool
    classifier: bool = False      # the final Linear's input: only when named, k >= num_classes


@dataclass
class Graph:
    sites: dict[str, Site]        # in forward order: the order `dims` follows
    streams: dict[str, Stream]

    def add_site(self, site: Site) -> None:
        self.sites[site.name] = site
        self.streams[site.stream].sites.append(site.name)


def analyse(model: nn.Module) -> Graph:
    """Sites (transformable inputs) and streams (prunable channel sets) from the model's
    published structure: its channel sets are the streams, its reads the sites
    (`Structure.channel_sets`, `Structure.reads`).

    A stream is written by the stem or a block's last conv (with the shortcut, where there is
    a projection; a residual block without one adds into the stream it read) and by each conv
    inside a block. A block's input site is read by its first conv and its shortcut; the
    classifier reads the last stream. `late`: inputs read inside the last `pcn.late_stages`
    stages (a family default; 1 if unset), a residual stream only if written inside them."""
    st = structure_of(model)
    if not st.stages:
        raise ConfigError(f"pcn: the {st.family} model has no conv besides its classifier; nothing to transform")
    first_late = len(st.stages) - st.defaults.get("pcn.late_stages", LATE_STAGES)
    g = Graph({}, {})
    sets = {c.name: c for c in st.channel_sets()}
    for c in sets.values():
        g.streams[c.name] = Stream(c.name, [(p.conv, p.bn) for p in c.producers],
                                   _width(get_module(model, c.producers[0].conv), "out"), c.role == RESIDUAL, c.stage)
    for r in st.reads():                               # forward order: the order `dims` follows
        current = g.streams[r.channels]
        for c in r.layers:
            d = _width(get_module(model, c), "in")
            if d != current.width:
                raise ConfigError(f"pcn: {c} reads {d} features, not the {current.width} channels of {current.name} "
                                  f"(a flatten over space?); this model is not supported")
        # a residual stream is read, never rotated in itself; late if read (and, for a residual
        # stream, written) inside the last stages
        late = not r.classifier and r.stage >= first_late and (not current.residual or current.stage >= first_late)
        g.add_site(Site(r.layers[0], list(r.layers), current.name, late=late, classifier=r.classifier))
    return g


def _width(layer: nn.Module, side: str) -> int:
    """Input or output channels of a Conv2d or Linear."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if side == "in" else layer.out_channels
    return layer.in_features if side == "in" else layer.out_features


def select_sites(graph: Graph, layers: Union[str, list[str]]) -> list[str]:
    """Sites in forward order: `all` and `late` leave the classifier out, a list takes it if named."""
    if layers == "all":
        chosen = [s for s, site in graph.sites.items() if not site.classifier]
    elif layers == "late":
        chosen = [s for s, site in graph.sites.items() if site.late and not site.classifier]
    else:
        by_consumer = {c: s for s, site in graph.sites.items() for c in site.consumers}
        unknown = [n for n in layers if n not in by_consumer]
        if unknown:
            raise ConfigError(f"method.layers: unknown layer '{unknown[0]}'; transformable inputs of this model: "
                              f"{', '.join(graph.sites)}")
        wanted = {by_consumer[n] for n in layers}
        chosen = [s for s in graph.sites if s in wanted]
    if not chosen:
        raise ConfigError(f"method.layers={layers!r} selects no layer of this model; use all, late or names from: "
                          f"{', '.join(graph.sites)}")
    return chosen


# --------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class SiteCost:
    """Parameters of one site's consumers against its k, at the unpruned shapes."""
    d: int                # channels the site reads
    per_input: int        # sum_c out_c kh_c kw_c: one more input channel of every consumer
    bias: int             # sum_c out_c: a rotated consumer always has a bias (absorbing W mu)
    original: int         # the consumers' parameters as they are
    min_k: int            # 1, or num_classes for the classifier

    @property
    def unit(self) -> int:
        """Parameters one more component costs: its consumer inputs, its projection row and bias."""
        return self.per_input + self.d + 1

    def rotated(self, k: int) -> int:
        return k * self.unit + self.bias

    @property
    def break_even(self) -> int:
        """Smallest k whose rotated form is not smaller than the original: `rotated(k) >= original`."""
        return max(0, -(-(self.original - self.bias) // self.unit))

    def rotates(self, k: int) -> bool:
        return k < self.break_even


def site_costs(model: nn.Module, graph: Graph, sites: Iterable[str]) -> dict[str, SiteCost]:
    costs = {}
    for s in sites:
        mods = [get_module(model, c) for c in graph.sites[s].consumers]
        outs = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in mods]
        kk = [math.prod(m.kernel_size) if isinstance(m, nn.Conv2d) else 1 for m in mods]
        d = mods[0].in_channels if isinstance(mods[0], nn.Conv2d) else mods[0].in_features
        costs[s] = SiteCost(d=d, per_input=sum(o * k for o, k in zip(outs, kk)), bias=sum(outs),
                            original=sum(p.numel() for m in mods for p in m.parameters(recurse=False)),
                            min_k=min(d, outs[0]) if graph.sites[s].classifier else 1)
    return costs


# --------------------------------------------------------------------------- plan
@dataclass
class Plan:
    dims: dict[str, int]                  # rotated site -> kept components k
    keep: dict[str, torch.Tensor]         # stream -> kept channel indices (sorted); pruned streams only
    skipped: dict[str, int] = field(default_factory=dict)   # site -> its k, at or above break-even


def channel_scores(pca: PCA, k: int, weighted: bool) -> torch.Tensor:
    """Loadings of each channel on the kept components: `sum_j |V[c, j]|` (times `lambda_j`)."""
    v = pca.eigenvectors[:, :k].abs()
    return v @ pca.eigenvalues[:k] if weighted else v.sum(1)


def make_plan(graph: Graph, pcas: dict[str, PCA], costs: dict[str, SiteCost], dims: dict[str, int],
              out_channels_ratio: Optional[float], residual_channels: str = "joint",
              score: str = "loadings") -> Plan:
    """Rotate the sites below their break-even, skip the others, then select channels of the
    streams whose every reader is rotated."""
    rotated = {s: k for s, k in dims.items() if costs[s].rotates(k)}
    skipped = {s: k for s, k in dims.items() if s not in rotated}
    keep = {}
    if out_channels_ratio is not None:
        for st in graph.streams.values():
            if (st.residual and residual_channels == "keep") or not st.sites \
                    or any(s not in rotated for s in st.sites):
                continue
            m = min(st.width, math.ceil(out_channels_ratio * max(rotated[s] for s in st.sites)))
            if m >= st.width:
                continue
            scores = torch.stack([channel_scores(pcas[s], rotated[s], score == "weighted") for s in st.sites]).mean(0)
            keep[st.name] = torch.sort(torch.topk(scores, m).indices).values.cpu()
    return Plan(rotated, keep, skipped)


def planned_params(model: nn.Module, graph: Graph, plan: Plan) -> int:
    """Parameter count of `build_pcn(model, ..., plan)`, frozen projections included, without building it."""
    out_w: dict[str, int] = {}
    for name, idx in plan.keep.items():
        for conv, bn in graph.streams[name].producers:
            out_w[conv] = len(idx)
            if bn is not None:
                out_w[bn] = len(idx)
    in_w: dict[str, tuple[int, Optional[int]]] = {}
    total = 0
    for s, site in graph.sites.items():
        st = graph.streams[site.stream]
        d = len(plan.keep[st.name]) if st.name in plan.keep else st.width
        k = plan.dims.get(s)
        for c in site.consumers:
            in_w[c] = (d, k)
        if k is not None:
            total += k * d + k                    # one shared frozen projection per site: V^T and -V^T mu
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and (name in out_w or name in in_w):
            conv = isinstance(mod, nn.Conv2d)
            o = out_w.get(name, mod.out_channels if conv else mod.out_features)
            d, k = in_w.get(name, (mod.in_channels if conv else mod.in_features, None))
            kk = math.prod(mod.kernel_size) if conv else 1
            total += o * (k if k is not None else d) * kk + (o if (k is not None or mod.bias is not None) else 0)
        elif isinstance(mod, nn.BatchNorm2d) and name in out_w:
            total += out_w[name] * sum(1 for _ in mod.parameters(recurse=False))
        else:
            total += sum(p.numel() for p in mod.parameters(recurse=False))
    return total


def threshold_dims(pcas: dict[str, PCA], costs: dict[str, SiteCost], tau: float) -> dict[str, int]:
    """k per site: the fewest components explaining `tau` of its variance (at least `min_k`)."""
    return {s: max(costs[s].min_k, p.components_for(tau)) for s, p in pcas.items()}


def greedy_ranks(pcas: dict[str, PCA], costs: dict[str, SiteCost]) -> dict[str, torch.Tensor]:
    """Rank of every component among all sites' components, best first, by eigenvalue share per
    parameter, `(lambda_j / sum_i lambda_i) / unit`. Within a site the ranks increase with j
    (eigenvalues descend; ties keep forward order), so any prefix keeps each site's top k."""
    scores = [p.eigenvalues / p.eigenvalues.sum().clamp_min(1e-300) / costs[s].unit for s, p in pcas.items()]
    order = torch.argsort(-torch.cat(scores), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return dict(zip(pcas, torch.split(rank, [len(x) for x in scores])))


def greedy_dims(ranks: dict[str, torch.Tensor], costs: dict[str, SiteCost], n: int) -> dict[str, int]:
    """k per site when the `n` best-ranked components are kept (at least `min_k`)."""
    return {s: max(costs[s].min_k, int((r < n).sum())) for s, r in ranks.items()}


def retained_share(pcas: dict[str, PCA], dims: dict[str, int], costs: dict[str, SiteCost]) -> float:
    """Sum over sites of the explained-variance fraction the site keeps (1 where left as it is)."""
    return sum(1.0 if not costs[s].rotates(k) else float(pcas[s].explained()[k - 1]) for s, k in dims.items())


def fit_target(pcas: dict[str, PCA], costs: dict[str, SiteCost], target: int, count,
               allocation: str = "threshold", tol_frac: float = TOL_FRAC
               ) -> tuple[Optional[float], dict[str, int], int]:
    """Dims whose parameter count `count(dims)` is within `tol_frac` of `target` (relative).
    Bisects x in [0, 1], along which every site's count only grows: the shared explained-variance
    threshold (`threshold`), or the fraction of the global component ranking kept (`greedy`).
    Returns (threshold or None, dims, count)."""
    if allocation == "greedy":
        ranks = greedy_ranks(pcas, costs)
        total = sum(len(r) for r in ranks.values())
        dims_at = lambda x: greedy_dims(ranks, costs, round(x * total))
    else:
        dims_at = lambda x: threshold_dims(pcas, costs, x)

    def at(x: float) -> tuple[dict[str, int], int]:
        dims = dims_at(x)
        return dims, count(dims)

    (d_lo, n_lo), (d_hi, n_hi) = at(0.0), at(1.0)
    if n_lo > target * (1 + tol_frac):
        raise TargetError(f"method.target_params: even one component per layer leaves {n_lo:,} parameters "
                          f"(target {target:,}); transform more layers (method.layers=all) or raise the target")
    if n_hi < target * (1 - tol_frac):
        raise TargetError(f"method.target_params: keeping every component gives {n_hi:,} parameters, below the "
                          f"target {target:,}; lower the target")
    (lo, (d_lo, n_lo)), (hi, (d_hi, n_hi)) = bisect_fraction(at, lambda dn: dn[1] <= target, (d_lo, n_lo),
                                                             (d_hi, n_hi))
    x, dims, n = min(((lo, d_lo, n_lo), (hi, d_hi, n_hi)), key=lambda t: abs(t[2] - target))
    if abs(n - target) > tol_frac * target:
        raise TargetError(f"method.target_params: the closest count method.allocation={allocation} reaches is "
                          f"{n:,} (target {target:,}, tolerance {tol_frac:.0%}); use method.dims instead")
    return (x if allocation == "threshold" else None), dims, n


# --------------------------------------------------------------------------- build
def prune_streams(model: nn.Module, graph: Graph, plan: Plan, example_inputs: torch.Tensor) -> None:
    """Remove the channels the plan drops, in place, with torch-pruning's DependencyGraph (it slices
    the producers' filters, biases and BN entries and every coupled consumer's inputs)."""
    if not plan.keep:
        return
    was_training = model.training
    model.eval()                                   # the tracing forward must not touch BN statistics
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    for name, keep in plan.keep.items():
        st = graph.streams[name]
        drop = sorted(set(range(st.width)) - set(keep.tolist()))
        dg.get_pruning_group(get_module(model, st.producers[0][0]), tp.prune_conv_out_channels, idxs=drop).prune()
        for conv, _ in st.producers:               # the coupling torch-pruning found is the one planned
            assert get_module(model, conv).out_channels == len(keep), (name, conv)
        for s in st.sites:
            for c in graph.sites[s].consumers:
                m = get_module(model, c)
                assert (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) == len(keep), (name, c)
    model.train(was_training)


@torch.no_grad()
def rotate_sites(model: nn.Module, graph: Graph, pcas: dict[str, PCA], plan: Plan) -> None:
    """Replace every consumer of a transformed site by its PCN layer, in place."""
    for s, k in plan.dims.items():
        site = graph.sites[s]
        rows = plan.keep.get(site.stream)
        v, mu = pcas[s].eigenvectors[:, :k], pcas[s].mean
        if rows is not None:                       # dropped channels: read as their calibration mean
            v, mu = v[rows.to(v.device)], mu[rows.to(mu.device)]
        first = get_module(model, site.consumers[0])
        proj = make_projection(v, mu, isinstance(first, nn.Conv2d), first.weight)
        for c in site.consumers:
            set_module(model, c, pcn_layer(get_module(model, c), v, mu, proj))


def build_pcn(model: nn.Module, graph: Graph, pcas: dict[str, PCA], plan: Plan,
              example_inputs: torch.Tensor) -> tuple[nn.Module, dict[str, float]]:
    """A transformed copy of `model` (the original is left as it was) and the sub-step timings
    (read after waiting for the device, so each sub-step's device work is its own)."""
    new = copy.deepcopy(model)
    clock = Clock(example_inputs.device)
    t0 = clock()
    prune_streams(new, graph, plan, example_inputs)
    t1 = clock()
    rotate_sites(new, graph, pcas, plan)
    return new, {"prune": t1 - t0, "rotate": clock() - t1}


def kept_variance(pca: PCA, k: int, rows: Optional[torch.Tensor]) -> float:
    """Fraction of the input's variance the PCN layer still sees: 1 - tr(A S A^T) / tr(S) with
    `A = I - V_k V_k[rows]^T E_rows` (`x - mu` -> reconstruction error). Without channel selection
    it is the explained-variance fraction of the k components."""
    if rows is None:
        return float(pca.explained()[k - 1])
    vals, vecs = pca.eigenvalues, pca.eigenvectors
    s = vecs @ torch.diag(vals) @ vecs.T
    d, v = s.shape[0], vecs[:, :k]
    sel = torch.zeros(k, d, dtype=v.dtype, device=v.device)
    sel[:, rows.to(v.device)] = v[rows.to(v.device)].T
    a = torch.eye(d, dtype=v.dtype, device=v.device) - v @ sel
    return float(1 - torch.trace(a @ s @ a.T) / torch.trace(s).clamp_min(1e-300))


# --------------------------------------------------------------------------- the whole transform
def calibrate(model: nn.Module, graph: Graph, sites: list[str], batches: Iterable[torch.Tensor]
              ) -> dict[str, CovarianceAccumulator]:
    """Float64 statistics of each site's input from a float32 forward outside autocast (a bf16
    activation would round the covariance); batches may be channels_last or low precision."""
    device = next(model.parameters()).device
    low = (torch.bfloat16, torch.float16)
    with torch.autocast(device_type=device.type, enabled=False):
        return collect_covariances(model, {s: get_module(model, graph.sites[s].consumers[0]) for s in sites},
                                   (x.float() if x.dtype in low else x for x in batches), inputs=True)


def choose_dims(cfg: "PCN.Config", sites: list[str], pcas: dict[str, PCA], costs: dict[str, SiteCost],
                target: int, count) -> tuple[str, Optional[float], dict[str, int]]:
    """(selection, threshold, k per site) from `dims`, `target_params` or `energy`."""
    if cfg.dims:
        for s, k in zip(sites, cfg.dims):
            c = costs[s]
            if not c.min_k <= k <= c.d:
                what = f"; {s} is the classifier's input: keep >= num_classes" if c.min_k > 1 else ""
                raise ConfigError(f"method.dims: {k} components for {s}, which reads {c.d} channels; use "
                                  f"{c.min_k}..{c.d}{what}")
        return "dims", None, dict(zip(sites, cfg.dims))
    if cfg.target_params is not None:
        threshold, dims, _ = fit_target(pcas, costs, target, count, cfg.allocation, cfg.target_tol_frac)
        return "target_params", threshold, dims
    energy = ENERGY_DEFAULT if cfg.energy is None else cfg.energy
    return "energy", energy, threshold_dims(pcas, costs, energy)


def pcn_transform(model: nn.Module, cfg: "PCN.Config", batches: Iterable[torch.Tensor], example_inputs: torch.Tensor,
                  dense_params: int) -> tuple[nn.Module, dict[str, Any]]:
    """Calibrate, decompose, choose dims (and channels), build. Returns the PCN and its report;
    its sub-step timings wait for the device before each clock read (a GPU runs behind the
    host: calibration's kernels would otherwise be timed as the eigendecomposition's)."""
    clock = Clock(example_inputs.device)
    t_start = clock()
    graph = analyse(model)
    sites = select_sites(graph, cfg.layers)
    if cfg.dims and len(cfg.dims) != len(sites):
        raise ConfigError(f"method.dims has {len(cfg.dims)} entries but method.layers={cfg.layers!r} selects "
                          f"{len(sites)}: {', '.join(sites)}")
    costs = site_costs(model, graph, sites)
    t0 = clock()
    accs = calibrate(model, graph, sites, batches)
    t1 = clock()
    pcas = {s: PCA.from_accumulator(accs[s]) for s in sites}
    t2 = clock()

    def plan_for(dims: dict[str, int]) -> Plan:
        return make_plan(graph, pcas, costs, dims, cfg.out_channels_ratio, cfg.residual_channels, cfg.score)

    selection, threshold, dims = choose_dims(cfg, sites, pcas, costs, round((cfg.target_params or 0) * dense_params),
                                             lambda d: planned_params(model, graph, plan_for(d)))
    plan = plan_for(dims)
    planned = planned_params(model, graph, plan)
    t3 = clock()
    new, build_s = build_pcn(model, graph, pcas, plan, example_inputs)
    report = {
        "selection": selection, "allocation": cfg.allocation if selection == "target_params" else None,
        "threshold": threshold, "layers_option": cfg.layers,
        "layers": [{"layer": s, "consumers": graph.sites[s].consumers, "reads": graph.sites[s].stream,
                    "in_dims_before": len(pcas[s].eigenvalues),
                    "in_channels_kept": len(plan.keep[graph.sites[s].stream])
                    if graph.sites[s].stream in plan.keep else len(pcas[s].eigenvalues),
                    "in_dims_after": k, "explained_var": float(pcas[s].explained()[k - 1]),
                    "kept_var": kept_variance(pcas[s], k, plan.keep.get(graph.sites[s].stream))}
                   for s, k in plan.dims.items()],
        "skipped_sites": [{"layer": s, "consumers": graph.sites[s].consumers, "in_dims": costs[s].d, "k": k,
                           "break_even": costs[s].break_even, "reason": "k at or above break-even"}
                          for s, k in plan.skipped.items()],
        "streams": [{"stream": n, "residual": graph.streams[n].residual,
                     "producers": [c for c, _ in graph.streams[n].producers],
                     "channels_before": graph.streams[n].width, "channels_after": len(idx)}
                    for n, idx in plan.keep.items()],
        "retained_share": retained_share(pcas, dims, costs),
        "planned_params": planned, "dense_params": dense_params,
        "calibration_samples": {s: accs[s].count for s in sites},
        "timing_s": {"calibration": t1 - t0, "eigendecomposition": t2 - t1, "plan": t3 - t2, **build_s,
                     "total": clock() - t_start},
    }
    return new, report


# --------------------------------------------------------------------------- the method
def default_transform_epoch(model_name: str) -> int:
    """The model family's "pcn.transform_epoch" (bench.models.model_defaults: VGG 1, ResNets 5)."""
    return model_defaults(model_name).get("pcn.transform_epoch", TRANSFORM_EPOCH)


@register("pcn")
class PCN(Method):
    """Principal Component Networks: train, transform once by PCA of layer inputs, keep training."""

    @dataclass
    class Config(TargetConfig):
        target_kinds: ClassVar[tuple[str, ...]] = ("params",)
        transform_epoch: Optional[int] = opt(None, "transform after this many epochs; null: 1 for VGG, 5 for "
                                             "ResNets (authors' vgg16.py, resnet/cifar10.py)")
        calibration_images: int = opt(CALIBRATION_IMAGES, "unaugmented training images for the PCA "
                                      "(authors: 5000)")
        calibration_batch_size: int = opt(500, "images per calibration forward pass (memory only)")
        layers: Union[str, list[str]] = opt("all", "inputs to transform: all, late (authors' choice: VGG last two "
                                            "conv blocks, ResNet last stage but its first block's input) or a list of layer names; the "
                                            "classifier only when named (then k >= num_classes)")
        energy: Optional[float] = opt(None, "per-layer explained-variance fraction to keep, without dims or "
                                      "target_params; null: 0.99")
        dims: list[int] = opt([], "explicit components per selected layer, in forward order of the layers "
                              "`layers` selects (the summary lists them); authors' VGG-16: late + "
                              "[64, 64, 64, 32, 32, 32]")
        allocation: str = opt("threshold", "how target_params is spent: threshold = one explained-variance "
                              "threshold shared by all layers, bisected (the authors' per-layer energy rule with "
                              "one global value); greedy = our variant: components of all layers ranked by "
                              "eigenvalue share per parameter, best kept", choices=("greedy", "threshold"))
        out_channels_ratio: Optional[float] = opt(None, "output-side selection: producer channels kept per kept "
                                                  "component of the next layer, m = ceil(ratio k) (authors' one "
                                                  "channel-selecting config: 1); null keeps all channels (their "
                                                  "CIFAR configs; more accurate here, results/pcn-notes.md)")
        residual_channels: str = opt("joint", "ResNet residual-stream channels when out_channels_ratio is set: "
                                     "removed jointly per stage, or kept", choices=("joint", "keep"))
        score: str = opt("loadings", "channel score: sum |V| over kept components, or weighted by eigenvalues "
                         "(code: weighted_row_sum)", choices=("loadings", "weighted"))

        def validate(self) -> None:
            super().validate()
            if self.transform_epoch is not None and self.transform_epoch < 1:
                raise ConfigError("method.transform_epoch must be >= 1 (or null for the per-family default)")
            if self.calibration_images < 2 or self.calibration_batch_size < 1:
                raise ConfigError("method.calibration_images must be >= 2 and calibration_batch_size >= 1")
            if isinstance(self.layers, str) and self.layers not in ("all", "late"):
                raise ConfigError(f"method.layers: '{self.layers}' is not all, late or a list of layer names")
            if self.energy is not None and not 0 < self.energy <= 1:
                raise ConfigError(f"method.energy must be in (0, 1], got {self.energy}")
            if self.dims and self.target_params is not None:
                raise ConfigError("method.dims and method.target_params both set; keep one of them")
            if self.energy is not None and (self.dims or self.target_params is not None):
                raise ConfigError(f"method.energy does nothing with method.{'dims' if self.dims else 'target_params'}; "
                                  f"remove method.energy")
            if self.allocation == "greedy" and self.target_params is None:
                raise ConfigError(f"method.allocation={self.allocation} only spends method.target_params; set "
                                  f"method.target_params or remove method.allocation")
            for key, default in (("score", "loadings"), ("residual_channels", "joint")):
                if getattr(self, key) != default and self.out_channels_ratio is None:
                    raise ConfigError(f"method.{key}={getattr(self, key)} only acts on channel selection, which "
                                      f"method.out_channels_ratio=null turns off; set a ratio or remove method.{key}")
            if any(k < 1 for k in self.dims):
                raise ConfigError("method.dims entries must be >= 1")
            if self.out_channels_ratio is not None and self.out_channels_ratio <= 0:
                raise ConfigError("method.out_channels_ratio must be > 0 (or null to keep all channels)")

    def __init__(self, cfg: Config, ctx):
        super().__init__(cfg, ctx)
        self.transform_epoch = cfg.transform_epoch or default_transform_epoch(ctx.model_name)
        if self.transform_epoch > ctx.epochs:
            raise ConfigError(f"method.transform_epoch={self.transform_epoch} is past the budget of "
                              f"{ctx.epochs} epochs; set method.transform_epoch <= train.epochs")
        self.report: dict[str, Any] = {}

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        if epoch != self.transform_epoch or self.report:
            return None
        batches = self.ctx.calibration(self.cfg.calibration_images, self.cfg.calibration_batch_size)
        new, report = pcn_transform(model, self.cfg, batches, self.ctx.example_inputs, self.ctx.dense_params)
        epoch_s = self.ctx.last_epoch_s
        report.update({"transform_epoch": epoch, "epoch_train_s": epoch_s,
                       "transform_to_epoch_ratio": report["timing_s"]["total"] / epoch_s if epoch_s else None})
        self.report = report
        return new

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        if not self.report:
            return {"pcn/transformed": 0}
        dims = [(l["in_dims_after"], l["in_dims_before"]) for l in self.report["layers"]]
        dims += [(l["in_dims"], l["in_dims"]) for l in self.report.get("skipped_sites", [])]   # left as they are
        return {"pcn/transformed": 1, "pcn/dims_frac": sum(a for a, _ in dims) / sum(b for _, b in dims)}

    def summary(self, model: nn.Module) -> dict[str, Any]:
        counts = param_counts(model)
        params = {"trainable": counts["params_trainable"], "frozen": counts["params_total"] - counts["params_trainable"],
                  "total": counts["params_total"], "dense": self.ctx.dense_params,
                  "fraction_of_dense": counts["params_total"] / self.ctx.dense_params}
        return {"transform_epoch": self.transform_epoch, "transformed": bool(self.report), **self.report,
                "params": params}

    def state_dict(self) -> dict[str, Any]:
        return {"report": self.report}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.report = state.get("report", {})
