"""The method interface: one class per method, hooks called by the one training loop.

A method is a subclass of `Method` in its own file under `methods/`, decorated with
`@register("name")`, with a nested dataclass `Config` (subclass of `MethodConfig`)
holding its options, their defaults and the source of each default. The harness
never branches on a method's name: it calls these hooks at fixed points.

    on_train_start(model)        before the first step (make sparse, swap layers)
    before_step(model)           after backward, before every optimizer step (regularisers
                                 that add to the gradients: sparse learning of the pruners)
    after_step(model)            after every optimizer step (DSR, decorrelation)
    on_epoch_end(model, epoch)   after `epoch` completed epochs (PCN transform, pruning)

`on_train_start` and `on_epoch_end` may return a *new* model; the harness then
moves it to the device, rebuilds the optimizer (fresh momentum) and keeps the
learning-rate schedule where it was, evaluates it (accuracy right after the
change) and times the hook. A hook that instead changes the model *in place*
(swaps submodules, registers buffers or parameters) and returns None must be named
in `in_place_hooks`: the harness then rebuilds what wraps the model (DDP,
torch.compile), whose view of the modules and buffers was taken before the change,
and keeps the optimizer. An undeclared in-place change is an error. After every
hook the harness checks that the optimizer holds exactly the model's trainable
parameters (a hook that adds, swaps or freezes parameters in place without a new
model would otherwise train a stale set): a mismatch is an error.

`before_step` sees the gradients of the step's loss as the optimizer will apply them
(under torchrun: after DDP's all-reduce, so identical on every rank) and may add to
them in place (`p.grad += ...`); like `after_step` it may change values only, and it
must do so identically on every rank. The harness calls it only for methods that
override it, so the other methods' steps gain no call and no device sync. `after_step`
may only change values (weights, buffers) in place, never the structure, and under
torchrun it must change them identically on every rank (from all-reduced
statistics or rank-identical state and random streams): the harness checks that
the ranks end with identical parameters and buffers (summary.json's
`rank_weight_checksums`, `rank_buffer_checksums`). Everything a method reports goes through
`epoch_metrics` (one row per epoch in history.csv and W&B) and `summary` (the
run's summary.json). `state_dict`/`load_state_dict` carry whatever the method
needs to resume after an interruption (the model itself is checkpointed whole).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Optional

import torch
from torch import nn

from bench.config import opt
from bench.registry import add, lookup
from bench.targets import TOL_FRAC, Target, parse_target


@dataclass
class MethodConfig:
    """Options every method has. Subclass it in the method's file."""
    name: str = opt("dense", "registered method name; `python -m bench methods` lists them")


@dataclass
class TargetConfig(MethodConfig):
    """Options of a method that meets a size target (docs/protocol.md, "Matched targets"), with the same names,
    range and tolerance meaning in every such method (bench.targets). A method narrows
    `target_kinds` to what it can meet and may redeclare a field to change its default."""
    target_kinds: ClassVar[tuple[str, ...]] = ("params", "macs")
    target_params: Optional[float] = opt(None, "kept parameters as a fraction of the dense model's, in (0, 1] "
                                               "(the suites' operating points: 0.5, 0.25, 0.1)")
    target_macs: Optional[float] = opt(None, "kept MACs per image as a fraction of the dense model's, in (0, 1] "
                                             "(set target_params: null)")
    target_tol_frac: float = opt(TOL_FRAC, "a target is met within this distance relative to the target "
                                           "(0.02: 'within 2%')")

    def validate(self) -> None:
        self.target()

    def target(self) -> Optional[Target]:
        """The size target asked for, validated; None when none is set."""
        return parse_target(self.target_params, self.target_macs, self.target_tol_frac, self.target_kinds)

    def targets_set(self) -> list[str]:
        return [k for k in ("target_params", "target_macs") if getattr(self, k) is not None]


@dataclass
class Context:
    """Read-only view of the run that the harness hands to a method.

    The harness updates `epoch`, `step` and `optimizer` as training goes; methods
    read them and never assign to them.
    """
    device: torch.device
    seed: int
    model_name: str                  # model.name, e.g. "vgg16" (for per-family defaults)
    num_train_images: int            # size of the training set as loaded (after train_subset)
    epochs: int                      # total epoch budget
    steps_per_epoch: int
    example_inputs: torch.Tensor     # one normalised batch of shape [1, C, H, W] on the device
    dense_params: int                # parameter count of the model as built (targets are fractions of it)
    dense_macs: int                  # MACs per image of the model as built
    generator: torch.Generator       # the method's own random stream (seeded from the run seed)
    # calibration(n_images, batch_size, heldout=False, labels=False): unaugmented training images,
    # a fixed subset per seed; labels=True yields (images, labels) pairs (for gradients of the loss).
    # Under torchrun each rank gets its shard of every batch: sum statistics and all-reduce them.
    calibration: Callable[..., Iterator[Any]]
    evaluate: Callable[[nn.Module], float]              # test accuracy of a model
    # The training loss, criterion(logits, labels) -> mean over the batch (cross-entropy with
    # the run's label smoothing): what gradient-based criteria (Taylor) differentiate.
    criterion: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    epoch: int = 0                   # completed epochs
    step: int = 0                    # completed optimizer steps
    last_epoch_s: float = 0.0        # training seconds of the last completed epoch (for cost ratios)
    optimizer: Optional[torch.optim.Optimizer] = None


class Method:
    """Base class: every hook is a no-op, so `dense` is just this class."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = MethodConfig
    # Hooks among IN_PLACE_HOOKABLE that may change the model's structure in place (see the module docstring).
    in_place_hooks: ClassVar[frozenset[str]] = frozenset()
    # Overrides the smallest run of the method needs besides `method.name` (e.g. a model setting it
    # requires), printed by `python -m bench methods NAME` in its "run it" command.
    run_overrides: ClassVar[str] = ""

    def __init__(self, cfg: MethodConfig, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx

    # ---- hooks -----------------------------------------------------------------------
    def on_train_start(self, model: nn.Module) -> Optional[nn.Module]:
        """Before the first optimizer step. Return a new model or None."""
        return None

    def before_step(self, model: nn.Module) -> None:
        """After backward, before every optimizer step (ctx.step counts the steps before
        this one): add to the gradients in place. Called only if a method overrides it."""

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step (ctx.step already counts it)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> Optional[nn.Module]:
        """After `epoch` completed epochs (1-based). Return a new model or None."""
        return None

    def deploy(self, model: nn.Module) -> nn.Module:
        """The trained model as it would be deployed for inference: what the measured batch-1
        latency and inference throughput time (the training step times `model` itself). The
        default is the model; a method whose training-only structure folds into plain layers
        returns a new module that computes the same function (never changing `model`)."""
        return model

    # ---- reporting -------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Scalars for this epoch's history row and W&B (prefix them with the method name)."""
        return {}

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """JSON-serialisable statistics for summary.json (kept dims, sparsity, ...)."""
        return {}

    def take_extra_train_macs(self) -> float:
        """Multiply-adds the method has spent since the last call beyond the model's own
        forward and backward passes (which the harness counts as 3 x forward MACs per
        training image), e.g. decorrelated BP's merges and updates of R. The harness adds
        them to the run's training MACs at every epoch's end, so a row sits at the compute it
        ran. Default: none."""
        return 0.0

    # ---- resume ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ---- config time -----------------------------------------------------------------
    @classmethod
    def resolve_run(cls, cfg: Any, image_shape: tuple[int, ...]) -> None:
        """When the run config is built (before hashing): derive run-level settings from the
        method's options, in place (dense_small's Scratch-B sets train.epochs). The result
        must be a fixed point: building the stored config again changes nothing."""

    # ---- what the suite reads --------------------------------------------------------
    def target(self) -> Optional[float]:
        """The parameter target this run aims at (fraction of dense), if the method takes one."""
        return getattr(self.cfg, "target_params", None)


REGISTRY: dict[str, type[Method]] = {}
IN_PLACE_HOOKABLE = frozenset({"on_train_start", "on_epoch_end"})


def last_epoch_metrics(prefix: str, epochs_log: list[dict[str, Any]], per_layer: str) -> dict[str, Any]:
    """A method's `epoch_metrics` from its per-epoch records: the last record's scalars
    as `<prefix>/<key>` (None and the epoch left out) and its per-layer dict `per_layer`
    as `<prefix>/<per_layer>/<layer>`; empty before the first record."""
    if not epochs_log:
        return {}
    rec = epochs_log[-1]
    out = {f"{prefix}/{k}": v for k, v in rec.items() if k not in (per_layer, "epoch") and v is not None}
    out.update({f"{prefix}/{per_layer}/{n}": v for n, v in rec[per_layer].items()})
    return out


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: `@register("pcn")` makes the method available as method.name=pcn."""
    def deco(cls: type[Method]) -> type[Method]:
        if not set(cls.in_place_hooks) <= IN_PLACE_HOOKABLE:
            raise TypeError(f"{cls.__name__}.in_place_hooks may name only {sorted(IN_PLACE_HOOKABLE)}, "
                            f"got {sorted(cls.in_place_hooks)}")
        return add(REGISTRY, name, cls, MethodConfig, "method")
    return deco


def get_method(name: str) -> type[Method]:
    return lookup(REGISTRY, name, "method")


@register("dense")
class Dense(Method):
    """The dense baseline: trains the model as built, changes nothing."""
