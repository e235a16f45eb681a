"""The one size-target vocabulary: range, tolerance relative to the target, one error."""
from __future__ import annotations

import pytest

from bench.config import ConfigError
from bench.targets import Target, TargetError, first_at_most, parse_target
from methods import get_method


def test_tolerance_is_relative_to_the_target():
    t = Target("params", 0.25, 0.02)
    assert t.within(0.255) and t.within(0.245)
    assert not t.within(0.2551) and not t.within(0.2449)     # 2% of 0.25, not 2% of dense
    with pytest.raises(TargetError, match=r"target_params=0.25 not met within 2%: reached 0.2600 of dense; hint"):
        t.check(0.26, "hint")


@pytest.mark.parametrize("value", [0.0, -0.1, 1.01])
def test_one_valid_range_for_every_target_taking_method(value):
    for method in ("pcn", "pcns", "dense_small", "l1_filter", "snp", "dsr"):
        cls = get_method(method).Config
        with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
            cls(name=method, target_params=value).validate()


def test_full_size_target_is_valid_wherever_it_means_something():
    for method in ("pcn", "pcns", "dense_small", "l1_filter", "snp"):   # dsr: nothing left to reallocate
        get_method(method).Config(name=method, target_params=1.0).validate()


def test_targets_a_method_cannot_meet_are_refused_by_name():
    with pytest.raises(ConfigError, match="target_macs is not supported by this method; use method.target_params"):
        get_method("pcn").Config(name="pcn", target_macs=0.5).validate()
    with pytest.raises(ConfigError, match="set only one of target_params and target_macs"):
        parse_target(0.5, 0.5, 0.02)
    assert parse_target(None, None, 0.02) is None
    assert parse_target(None, 0.3, 0.01) == Target("macs", 0.3, 0.01)


def test_first_at_most_finds_the_boundary_of_a_nonincreasing_cost():
    costs = [10, 9, 7, 7, 4, 2, 1]
    seen = []

    def cost(i):
        seen.append(i)
        return costs[i]
    assert first_at_most(len(costs), cost, 7) == 2
    assert len(seen) <= 3                       # bisection, not a scan
    assert first_at_most(len(costs), lambda i: costs[i], 0) == len(costs) - 1   # none: the last
    assert first_at_most(len(costs), lambda i: costs[i], 100) == 0


def test_bisect_fraction_brackets_the_boundary_of_a_growing_count():
    from bench.targets import bisect_fraction
    count = lambda x: int(1000 * x)              # the size grows with the knob
    (lo, n_lo), (hi, n_hi) = bisect_fraction(count, lambda n: n <= 250, count(0.0), count(1.0))
    assert n_lo == 250 and n_hi == 251 and lo < hi and hi - lo < 1e-12
    (lo, n_lo), (hi, n_hi) = bisect_fraction(count, lambda n: n <= -1, count(0.0), count(1.0))
    assert lo == 0.0 and n_lo == 0               # never ok: the lower end comes back as given
