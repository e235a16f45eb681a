"""Size targets (docs/protocol.md, "Matched targets"): one vocabulary, range, tolerance and error for every method.

A target is a kept fraction of the dense model's parameters (`target_params`) or MACs per
image (`target_macs`), in (0, 1]. It is met when the achieved fraction is within
`target_tol_frac` of it, *relative to the target* ("within 2%": 0.02 at a target
of 0.25 accepts 0.245-0.255). A method that cannot meet it raises `TargetError`, one line
saying what was reached and what to change.

Each method turns its own knob; the searches over a knob along which the size is
monotone are here: `first_at_most` over a discrete candidate list (snp's share of
units removed) and `bisect_fraction` over a [0, 1] knob (pcn's kept share of the
component ranking or its shared variance threshold, pcns's threshold). l1_filter steps
torch-pruning's iterative pruner instead (its state advances with every step, so it is
not bisected) and dense_small takes the closest of its discrete widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from bench.config import ConfigError

KINDS = ("params", "macs")
TOL_FRAC = 0.02
BISECTION_STEPS = 60        # halvings of a [0, 1] knob: far below any count's granularity
V = TypeVar("V")


class TargetError(ConfigError):
    """A target the method cannot meet (a configuration error: the run does not start or stops)."""


def check_fraction(key: str, value: float) -> None:
    """The one valid range of a kept fraction: (0, 1]."""
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"method.{key} must be in (0, 1] (a kept fraction of the dense model), got {value}")


@dataclass(frozen=True)
class Target:
    kind: str              # "params" or "macs"
    frac: float            # kept fraction of the dense model's count
    tol_frac: float = TOL_FRAC

    @property
    def key(self) -> str:
        return f"target_{self.kind}"

    def goal(self, dense: int) -> float:
        """The absolute count aimed at, given the dense model's count."""
        return self.frac * dense

    def within(self, achieved_frac: float) -> bool:
        """|achieved / target - 1| <= tol."""
        return abs(achieved_frac - self.frac) <= self.tol_frac * self.frac * (1 + 1e-12)

    def check(self, achieved_frac: float, hint: str) -> None:
        """Raise TargetError unless the achieved fraction is within the tolerance."""
        if not self.within(achieved_frac):
            raise TargetError(f"method.{self.key}={self.frac:g} not met within {self.tol_frac:.0%}: reached "
                              f"{achieved_frac:.4f} of dense; {hint}")


def parse_target(target_params: Optional[float], target_macs: Optional[float], tol_frac: float,
                 kinds: tuple[str, ...] = KINDS) -> Optional[Target]:
    """The Target the options ask for (None when neither is set), validated."""
    given = [(k, v) for k, v in (("params", target_params), ("macs", target_macs)) if v is not None]
    if len(given) > 1:
        raise ConfigError("method: set only one of target_params and target_macs (e.g. method.target_macs=null)")
    if not 0.0 <= tol_frac < 1.0:
        raise ConfigError(f"method.target_tol_frac must be in [0, 1), got {tol_frac}")
    if not given:
        return None
    kind, frac = given[0]
    if kind not in kinds:
        raise ConfigError(f"method.target_{kind} is not supported by this method; use "
                          + " or ".join(f"method.target_{k}" for k in kinds))
    check_fraction(f"target_{kind}", frac)
    return Target(kind, frac, tol_frac)


def first_at_most(n: int, cost: Callable[[int], float], limit: float) -> int:
    """The smallest index i in [0, n) with cost(i) <= limit, for a cost nonincreasing in i
    (bisection: about log2(n) evaluations); n - 1 when none is."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return lo


def bisect_fraction(value: Callable[[float], V], ok: Callable[[V], bool], at_0: V, at_1: V,
                    steps: int = BISECTION_STEPS) -> tuple[tuple[float, V], tuple[float, V]]:
    """Bisect a knob x in [0, 1] along which the size only grows (a shared variance threshold,
    the kept share of a component ranking) for the boundary of `ok` (true at 0, false at 1).
    Returns ((x_lo, value), (x_hi, value)): the last point where `ok` held and the first where
    it failed; `at_0`/`at_1` are the values at the ends (already computed by the caller for
    its range checks, or None when it does not need them)."""
    lo, hi = (0.0, at_0), (1.0, at_1)
    for _ in range(steps):
        mid = 0.5 * (lo[0] + hi[0])
        v = value(mid)
        if ok(v):
            lo = (mid, v)
        else:
            hi = (mid, v)
    return lo, hi
