"""Static sparse training: random masks fixed for the whole run (the family's control).

The mask engine (methods/_sparse.py) alone: the sparse layers get their share of the
non-zero budget (`allocation`: uniform, or ERK as in Evci et al. 2020's static-ERK
baseline), a uniformly random mask drawn from the method's generator, and the masks
never move. With `allocation: uniform` its masks and training are those of `dsr` with
`reallocate: false` (the suites' `dsr_static`: the same draws from the same generator),
which is the control the sparse rows of the suites are compared with.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods._sparse import SparseConfig, SparseTraining
from methods.base import register


@register("static")
class Static(SparseTraining):
    """Static sparse masks: random, allocated uniformly or by ERK, never moved."""

    @dataclass
    class Config(SparseConfig):
        pass
