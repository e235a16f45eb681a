"""SET: sparse evolutionary training (Mocanu et al., Nature Communications 2018).

Starts from random sparse masks (the engine, methods/_sparse.py) and, after every
epoch, drops in each sparse layer the fraction zeta of its active weights closest to
zero and grows as many new ones at uniformly random inactive positions of the same
layer (the engine's DropGrow; Algorithm 1 of the paper: "remove a fraction zeta of the
smallest positive and largest negative weights, add as many random connections").
Grown weights start at 0 with zero optimizer state. That value is not taken from the
paper's Algorithm 1 or from Mocanu's numpy SET, which draws each new weight as
randn() / 10 (with zero momentum); it is what the authors' Keras proof of concept (a new
position keeps its masked weight, 0) and the RigL authors' SparseSETOptimizer
(grow_init='zeros') give. The number of active weights of every layer never changes.

Defaults (the paper): zeta = 0.3 (`drop_fraction`, constant), one update after every
epoch but the last (`update_every_epochs: 1`, `stop_frac: 1`: no update after the
final step, where grown weights would never train). The quick suite's 4 epochs of 195
steps therefore make 3 updates, after steps 195, 390 and 585.

Choices where the paper is silent or differs:
  - allocation: the paper draws each layer's mask at an Erdos-Renyi density; the
    family's default here is `uniform`, so that SET, RigL, DSR and the static control
    differ only in how they move the masks (`allocation: erk` is the paper's rule
    extended to kernels);
  - "smallest positive and largest negative" is read as smallest |w| (the two are the
    same set only when they are split evenly by sign; the RigL authors' SET and
    sparse_learning also drop by |w|); ties go to the lower flat index;
  - grown positions are drawn among all inactive positions after the drop, the ones
    just dropped included (as in the RigL authors' SET and Mocanu's numpy SET); one
    drawn again keeps its weight, every other grown weight starts at 0 with zero
    optimizer state (see above for the sources' values);
  - the draws come from the method's generator, identical on every rank under DDP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import opt
from methods._sparse import DropGrow, DropGrowConfig, random_positions
from methods.base import register


@register("set")
class SET(DropGrow):
    """Sparse evolutionary training (Mocanu et al. 2018): drop by magnitude, regrow at random."""

    @dataclass
    class Config(DropGrowConfig):
        drop_fraction: float = opt(0.3, "zeta, fraction of each layer's active weights dropped and regrown per "
                                        "update (paper: 0.3)")
        drop_schedule: str = opt("constant", "constant (paper) or cosine (RigL's decay)",
                                 choices=("constant", "cosine"))
        update_every_epochs: float = opt(1.0, "mask updates every this many epochs (paper: after every epoch)")
        stop_frac: float = opt(1.0, "no update from this fraction of the step budget on (paper: updates to the "
                                    "end; none after the final step)")

    def grow(self, layer: nn.Module, candidates: torch.Tensor, n: int) -> torch.Tensor:
        return random_positions(candidates, n, self.ctx.generator)
