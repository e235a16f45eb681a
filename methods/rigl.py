"""RigL: rigging the lottery (Evci et al., ICML 2020; authors' code google-research/rigl, TF).

Starts from random sparse masks (the engine, methods/_sparse.py) and every Delta T
steps until T_end drops in each sparse layer the fraction f_t of its active weights
with the smallest |w| and grows as many at the inactive positions with the largest
|dL/dw| (the dense gradient of the current batch), the grown weights starting at 0
with zero momentum (the engine's DropGrow; the paper's Algorithm 1):
    f_t = alpha/2 (1 + cos(pi t / T_end))                       (eq. 1, cosine decay)
    drop:  ArgTopK(-|theta_l|, n)  among the active weights     (n = floor(f_t active_l))
    grow:  ArgTopK(|grad_l|, n)    among the inactive positions
The number of active weights of every layer never changes.

The dense gradient: masked weights are kept at exactly 0 rather than removed, so the
backward pass already computes the gradient at every position; `after_step` reads
`weight.grad` of the step just taken. Under DDP that gradient is the one DDP all-reduced
(averaged over the ranks), so every rank grows the same positions; no extra pass and
no extra all-reduce. An update step reads counts and sorts on the host side of the
device (a synchronisation); steps between updates read nothing.

Defaults (the paper; CIFAR-10 WRN-22-2 in the authors' code: batch 128, 390.6 steps
an epoch, 97,656 steps): alpha = 0.3 (`drop_fraction`), cosine decay
(`drop_schedule`), Delta T = 100 steps (`update_every_epochs` = 100 / 390.625 =
0.256 epoch), no updates after 75% of training (`stop_frac`). Scaled to a budget:
Delta T keeps the paper's updates per epoch (2.56), so grown weights get the same
share of an epoch to train before the next update; T_end stays 75% of the budget.
In the quick suite (195 steps an epoch, 4 epochs = 780 steps) that is Delta T = 50
and T_end = 585: 11 updates (after steps 50, ..., 550), f from 0.295 down to 0.003.

Choices where the sources are silent or differ:
  - allocation: the paper reports uniform (first layer dense) and ERK; the family's
    default is `uniform` (the comparison with DSR, SET and the static control holds
    the allocation fixed); `allocation: erk` is the paper's ERK;
  - the update happens after the optimizer step of an update iteration (the authors'
    code skips that step's weight update); the gradient is that step's, at the
    weights before the step, the magnitudes are those after it;
  - ties in |w| or |grad| go to the lower flat index (the authors add 1e-5 noise to
    the drop scores); a just-dropped position among the top gradients is grown again
    and keeps its weight, as in the authors' code (`reinit_when_same=False`);
  - the first conv and 1x1 shortcuts are dense (the family's layer rule), as is the
    classifier unless `sparse_classifier`. The authors keep only the first layer dense:
    they prune the classifier (`sparse_classifier: true` does too) and, in their CIFAR
    ResNet (cifar_resnet/resnet_model.py), the 1x1 shortcut convs, which no option here
    makes sparse; so on a model with shortcuts no option reproduces their layer set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import opt
from methods._sparse import DropGrow, DropGrowConfig, top_positions
from methods.base import register

PAPER_STEPS_PER_EPOCH = 50_000 / 128     # CIFAR-10 at batch 128 (authors' code: 97,656 steps = 250 epochs)
PAPER_DELTA_T = 100


@register("rigl")
class RigL(DropGrow):
    """RigL (Evci et al. 2020): drop by magnitude, grow where the dense gradient is largest."""

    @dataclass
    class Config(DropGrowConfig):
        drop_fraction: float = opt(0.3, "alpha, the initial drop fraction (paper: 0.3)")
        drop_schedule: str = opt("cosine", "cosine: alpha/2 (1 + cos(pi t / T_end)) (paper, eq. 1); constant",
                                 choices=("constant", "cosine"))
        update_every_epochs: float = opt(PAPER_DELTA_T / PAPER_STEPS_PER_EPOCH,
                                         "Delta T as a fraction of an epoch (paper: 100 steps at batch 128 on "
                                         "CIFAR-10, 390.6 steps an epoch: 0.256)")
        stop_frac: float = opt(0.75, "T_end: no update from this fraction of the step budget on (paper: 75%)")

    def grow(self, layer: nn.Module, candidates: torch.Tensor, n: int) -> torch.Tensor:
        if layer.weight.grad is None:
            raise RuntimeError("rigl: the weight gradient of the step is gone at a mask update (after_step needs "
                               "it; the harness must not clear gradients before after_step)")
        return top_positions(layer.weight.grad.abs(), candidates, n)
