"""Structured-pruning glue shared by `l1_filter` and `snp` (not a method: the name starts
with an underscore, so the registry skips it).

- `PruningConfig`: the options both methods share (when to prune, what to reach).
- `prune_schedule`: the epochs at which pruning happens (pure function).
- Torch-Pruning's `DependencyGraph` for the suite's timm models: built in eval mode
  (tracing runs a forward pass, which in train mode would move the BatchNorm running
  statistics), classifier never pruned; `prune_out_channels` removes given output
  channels of a layer together with everything that depends on them (BN entries,
  the consumers' input channels, residual partners).
- Measurements: parameters or MACs (bench.metrics, the harness's own counters) as a
  fraction of dense, a target check, per-layer channel tables.
- `SeededRandomImportance`: Torch-Pruning's `RandomImportance` drawing from the method's
  own generator, for the random structured-pruning control.
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from bench.config import ConfigError, opt
from bench.metrics import count_macs
from bench.models import structure_of
from methods.base import Method, TargetConfig

# Share of the budget spent before pruning when `transform_epoch` is not given:
# torch-pruning's ResNet-56 CIFAR-10 reproduction without sparse learning (benchmarks/main.py,
# e.g. its global L1 run, docs/methods/l1_filter.md) pretrains 200 epochs, prunes and
# fine-tunes 100 (--total-epochs 100), i.e. prunes after 2/3 of 300 epochs. Its group_sl
# (DepGraph) run puts 100 sparse-learning epochs (--sl-total-epochs 100) between the two:
# 200 + 100 + 100, pruned after 3/4 of 400 epochs.
DEFAULT_PRUNE_AT_FRAC = 2 / 3


@dataclass
class PruningConfig(TargetConfig):
    """Options shared by the structured-pruning methods."""
    transform_epoch: Optional[int] = opt(
        None, "prune after this many completed epochs (0: before training) and fine-tune for the rest "
              "of train.epochs; null: round(2/3 of train.epochs), torch-pruning's ResNet-56 CIFAR-10 "
              "recipe without sparse learning (200 pretraining + 100 fine-tuning epochs; its group_sl "
              "run adds 100 sparse-learning epochs in between, pruning after 300 of 400)")
    target_params: Optional[float] = opt(
        0.5, "kept parameters as a fraction of the dense model (the suites' operating points "
             "0.5/0.25/0.1); null to use target_macs or a fixed setting (l1_filter: pruning_ratio, snp: tau)")

    def validate(self) -> None:
        super().validate()
        if self.transform_epoch is not None and self.transform_epoch < 0:
            raise ConfigError(f"method.transform_epoch must be >= 0 (0: prune before training), got {self.transform_epoch}")


def prune_schedule(transform_epoch: Optional[int], total_epochs: int, steps: int = 1,
                   every_epochs: int = 1) -> list[int]:
    """Epochs (completed, 0 = before training) at which the pruning events happen:
    `transform_epoch`, then every `every_epochs` until `steps` events."""
    first = round(DEFAULT_PRUNE_AT_FRAC * total_epochs) if transform_epoch is None else transform_epoch
    epochs = [first + k * every_epochs for k in range(steps)]
    if epochs[-1] > total_epochs:
        raise ConfigError(f"method: pruning events at epochs {epochs} do not fit in train.epochs={total_epochs}; "
                          f"lower method.transform_epoch or the number of steps, or raise train.epochs")
    return epochs


def event_fraction(target: float, k: int, n: int) -> float:
    """Target of the k-th of n pruning events (1-based): the removed share grows linearly."""
    return 1.0 - (1.0 - target) * k / n


# --------------------------------------------------------------------------- model structure
def classifier_of(model: nn.Module) -> nn.Module:
    """The classifier layer (never pruned: its outputs are the classes), as the model's
    structure names it (bench.models.structure_of)."""
    return model.get_submodule(structure_of(model).classifier)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d in registration order, which is forward order for the suite's VGG and
    ResNet; `prune_layers` options index this list from 1 (Li et al.'s conv_1 ... conv_13)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def block_internal_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Convs whose output channels stay inside a residual block: every body conv but the
    last of each residual block in the model's structure (conv1 of a BasicBlock, conv1 and
    conv2 of a Bottleneck; Li et al. 2017 sec. 4.2 prune only these in ResNets). A network
    without residual blocks (VGG): every conv."""
    blocks = [b for b in structure_of(model).blocks() if b.residual]
    if not blocks:
        return [m for _, m in conv_layers(model)]
    return [model.get_submodule(u.conv) for b in blocks for u in b.body[:-1]]


def channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv, by name."""
    return {n: m.out_channels for n, m in conv_layers(model)}


def channel_table(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int]]:
    """{conv name: [channels before, channels after]} for the layers that changed."""
    return {n: [c, after.get(n, 0)] for n, c in before.items() if after.get(n, 0) != c}


# --------------------------------------------------------------------------- torch-pruning
@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of `model`, traced in eval mode."""
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)


def prune_out_channels(graph: tp.DependencyGraph, layer: nn.Module, idxs: Sequence[int]) -> None:
    """Remove output channels `idxs` of `layer` and everything coupled to them (BN entries,
    consumers' input channels, residual partners). Kept channels keep their order."""
    idxs = sorted(int(i) for i in idxs)
    if not idxs:
        return
    fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    group = graph.get_pruning_group(layer, fn, idxs=idxs)
    if not graph.check_pruning_group(group):
        raise ValueError(f"cannot remove {len(idxs)} of {graph.get_out_channels(layer)} channels of {layer}")
    group.prune()


class SeededRandomImportance(tp.importance.RandomImportance):
    """Torch-Pruning's `RandomImportance` (uniform scores, so the channels removed are a
    uniformly random subset) drawn from `generator`, not the global stream: the same run
    seed removes the same channels, and the harness's own random stream is untouched."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.generator = generator

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        _, idxs = group[0]
        return torch.rand(len(idxs), generator=self.generator)


def is_out_pruning(graph: tp.DependencyGraph, dep) -> bool:
    return graph.is_out_channel_pruning_fn(dep.handler)


# --------------------------------------------------------------------------- measurement
def measure(model: nn.Module, example_inputs: torch.Tensor, kind: str) -> int:
    """Parameters or MACs per image, with the harness's own counters."""
    if kind == "params":
        return sum(p.numel() for p in model.parameters())      # = param_counts()["params_total"]
    if kind == "macs":
        return count_macs(model, example_inputs)[0]
    raise ValueError(f"unknown measure '{kind}'")


def dense_value(ctx, kind: str) -> int:
    return ctx.dense_params if kind == "params" else ctx.dense_macs


def sizes(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    return {"params": measure(model, example_inputs, "params"), "macs": measure(model, example_inputs, "macs")}


def detached_copy(model: nn.Module, grads: bool = False) -> nn.Module:
    """A deep copy to prune (the harness's model is left as it was if pruning fails); with
    `grads`, the parameters' `.grad` are copied too (deepcopy drops them; gradient-based
    scores read them)."""
    new = copy.deepcopy(model)
    if grads:
        for p, q in zip(model.parameters(), new.parameters()):
            if p.grad is not None:
                q.grad = p.grad.detach().clone()
    return new


class ScheduledPruning(Method):
    """What the structured-pruning methods share: prune at the scheduled epochs (0 = before
    training), log each event, and report channels, parameter and MAC fractions. A subclass
    sets `self.events` and implements `prune(model, k, n) -> (pruned model, info)` for event
    k of n; `check(model)` fails before training on a model it cannot prune."""

    events: list[int]

    def __init__(self, cfg: PruningConfig, ctx):
        super().__init__(cfg, ctx)
        self.log: list[dict[str, Any]] = []
        self.dense_channels: dict[str, int] = {}

    def check(self, model: nn.Module) -> None:
        pass

    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        self.check(model)
        self.dense_channels = channels(model)
        return self._maybe_prune(model, 0)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        return self._maybe_prune(model, epoch)

    def _maybe_prune(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        if epoch not in self.events:
            return None
        k, n = self.events.index(epoch) + 1, len(self.events)
        t0 = time.perf_counter()
        pruned, info = self.prune(model, k, n)
        info.update({"epoch": epoch, "event": k, "seconds": time.perf_counter() - t0})
        self.log.append(info)
        return pruned

    def summary(self, model: nn.Module) -> dict[str, Any]:
        now = sizes(model, self.ctx.example_inputs)
        return {"events": self.log, "prune_epochs": self.events,
                "channels": channel_table(self.dense_channels, channels(model)),
                "params_frac": now["params"] / self.ctx.dense_params, "macs_frac": now["macs"] / self.ctx.dense_macs}

    def state_dict(self) -> dict[str, Any]:
        return {"log": self.log, "dense_channels": self.dense_channels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log = list(state.get("log", []))
        self.dense_channels = dict(state.get("dense_channels", {}))
