"""The published column: figures from configs/published.yaml beside the report's rows
of the same model and method whose measured kept fraction matches the source's."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.config import read_yaml
from bench.metrics.base import fmt_points
from bench.report.aggregation import _has_target
from bench.report.rendering import _ci, _delta

PUBLISHED_FILE = Path(__file__).resolve().parents[2] / "configs" / "published.yaml"
# Published figures sit beside a row of the same model and method label whose measured kept
# fraction of what the source counts is within this (relative).
PUBLISHED_MATCH_TOL = 0.10
NAN = float("nan")


# What a published reduction counts -> (our column, the dense figure it is a fraction of).
KEPT_FRACTIONS = {"params": ("params_total", "dense_params"), "params_nonzero": ("params_nonzero", "dense_params"),
                  "macs": ("macs", "dense_macs")}
PUBLISHED_KEYS = ("label", "name", "model", "dataset", "baseline_acc", "acc", "kept", "budget", "source")


def load_published(path: str | Path = PUBLISHED_FILE) -> list[dict]:
    """The entries of configs/published.yaml (none if the file is absent), checked."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = list((read_yaml(str(path)) or {}).get("entries", []))
    for i, e in enumerate(entries):
        missing = [k for k in PUBLISHED_KEYS if k not in e]
        unknown = set(e.get("kept", {})) - set(KEPT_FRACTIONS)
        if missing or unknown or not e.get("kept"):
            raise ValueError(f"{path}: entry {i} ({e.get('name', '?')}): missing {missing}, unknown kept kinds "
                             f"{sorted(unknown)} (kinds: {', '.join(KEPT_FRACTIONS)})")
    return entries


def _frac(r: pd.Series, kind: str) -> float:
    num, den = KEPT_FRACTIONS[kind]
    n, d = r.get(num, NAN), r.get(den, NAN)
    return NAN if n is None or d is None or not d or d != d else float(n) / float(d)


def published_matches(agg: pd.DataFrame, entries: list[dict], tol: float = PUBLISHED_MATCH_TOL
                      ) -> list[tuple[pd.Series, dict, str, float]]:
    """(our row, entry, what it counts, our kept fraction of it) for every row of the entry's
    model, dataset and method label whose measured kept fraction of what the entry counts is
    within `tol` (relative) of the entry's."""
    out = []
    for e in entries:
        rows = agg[(agg["model"] == e["model"]) & (agg["label"] == e["label"]) & agg["target"].map(_has_target)]
        for _, r in rows.iterrows():
            if isinstance(r.get("dataset"), str) and r["dataset"] != e["dataset"]:
                continue
            for kind, kept in e["kept"].items():
                ours = _frac(r, kind)
                if ours == ours and abs(ours / kept - 1) <= tol:
                    out.append((r, e, kind, ours))
                    break
    return out


def published_section(agg: pd.DataFrame, model: str, entries: list[dict]) -> list[str]:
    """Published figures beside our rows where model, method and kept fraction match; each
    source's delta is against its own dense baseline, ours against the row's control."""
    mine = [e for e in entries if e["model"] == model]
    if not mine:
        return []
    matches = published_matches(agg[agg["model"] == model], mine)
    lines = ["### Published figures", "",
             f"Beside a row of the same model and method whose measured kept fraction of what the source counts "
             f"is within {PUBLISHED_MATCH_TOL:.0%} of the source's. Each source's Δ is against its own dense "
             f"baseline (they differ between sources), ours is the estimated difference to the row's control. Recipes, "
             f"budgets and model details differ: read it as context, not as a test.", ""]
    if matches:
        lines += ["| our row | ours: top-1 % | ours: Δ vs control | source's model | source: baseline → top-1 % "
                  "| source: Δ | kept (counts): source / ours | source's budget | source |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r, e, kind, ours in matches:
            lines.append(
                f"| {r['label']} {r['target']:.0%} | {_ci(fmt_points(r['test_acc']), r.get('test_acc_ci', NAN), fmt_points)} "
                f"| {_delta(r.get('test_acc_diff', NAN))} ({r['control']}) | {e['name']} | {e['baseline_acc']:.2f} → {e['acc']:.2f} "
                f"| {e['acc'] - e['baseline_acc']:+.2f} | {e['kept'][kind]:.1%} / {ours:.1%} ({kind}) "
                f"| {e['budget']} | {e['source']} |")
    shown = {id(e) for _, e, _, _ in matches}
    rest = [e for e in mine if id(e) not in shown]
    if rest:
        lines += ["", "No matching row (method or kept fraction differ): " + "; ".join(
            f"{e['name']} ({e['label']}, keeps " + ", ".join(f"{v:.1%} {k}" for k, v in e["kept"].items())
            + f"; {e['source']})" for e in rest) + "."]
    return lines + [""]


