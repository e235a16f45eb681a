"""Which verdicts of one setting hold in another (`python -m bench compare`'s verdict table).

A suite's report gives every row corrected verdicts: against its control, against each of
the suite's comparators at its target, and against the scratch curve at its own training
MACs (docs/statistics.md, docs/compute-matched.md). A ranking can keep its order while
a verdict flips (a row that was *worse* than random filters becomes *not distinguishable*)
and the other way round, so `bench compare` also lays the verdicts of the settings side
by side, per target:

- each verdict is a symbol: `>` better, `<` worse, `=` not distinguishable (the report's
  Holm-corrected tests, unchanged), `?` no verdict yet (a row beyond the reach of the
  scratch curve, or a row of one seed that its report does not resolve: a report with
  some rows at two seeds tests one-seed rows against its pooled σ, and not resolving a
  single run says nothing, so its `=` is shown as `?`; a one-seed row it does resolve
  keeps its `<` or `>`), `·` not compared (the row is that comparator, is its own
  control, or the comparator did not run at this target);
- a row *holds* when every comparison that has a verdict in two or more settings has the
  same one in all of them; it *reverses* when a comparison is resolved in opposite
  directions (`<` in one setting, `>` in another: the effect changed sign); it *moves*
  when a comparison is resolved in one setting and not in another (`<` and `=`: a change
  of the effect or only of the tests' power; both are named); and it is *open* when some
  setting has no verdict yet for a comparison the others resolve.

The verdicts are recomputed from each suite's runs with the report's own code
(`bench.report.build.analyse`), so they are those of an up-to-date report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

SYMBOLS = {"better": ">", "worse": "<", "not distinguishable": "="}
NO_VERDICT = "?"
NOT_COMPARED = "·"
CONTROL, CURVE = "control", "scratch curve"


def _symbol(verdict) -> str:
    """A report verdict as its symbol: NaN, empty and 'not run at this target' are not
    compared; any other text without a better/worse/equal verdict has none yet."""
    if verdict is None or verdict != verdict or verdict == "" or verdict == "not run at this target":
        return NOT_COMPARED
    return SYMBOLS.get(str(verdict), NO_VERDICT)


def _one_seed(symbol: str, seeds: int) -> str:
    """A one-seed row's `=` is no verdict (`?`); its resolved verdicts stand."""
    return NO_VERDICT if seeds < 2 and symbol == SYMBOLS["not distinguishable"] else symbol


def setting_verdicts(name: str, path: str | Path) -> pd.DataFrame:
    """One row per (target, label) of the suite folder's report table: `setting`,
    `model`, `target` (NaN: full size), `label`, `seeds`, and one column per comparison
    (`control`, each comparator, `scratch curve` where the suite has one) holding its symbol."""
    from bench.report.build import analyse
    a = analyse(path)
    if a is None or a.agg is None:
        return pd.DataFrame(columns=["setting", "model", "target", "label", "seeds", CONTROL])
    agg = a.agg
    comparators = list(dict.fromkeys(c for cs in agg["comparators"].dropna() for c in str(cs).split(",") if c))
    rows = []
    for _, r in agg.iterrows():
        own = r["label"] == r.get("control")
        seeds = int(r.get("seeds", 0) or 0)
        row = {"setting": name, "model": r["model"], "target": r.get("target"), "label": r["label"],
               "seeds": seeds, CONTROL: NOT_COMPARED if own else _one_seed(_symbol(r.get("vs_control")), seeds)}
        for c in comparators:
            row[c] = NOT_COMPARED if r["label"] == c else _one_seed(_symbol(r.get(f"vs_{c}_verdict")), seeds)
        if "cm_verdict" in agg:
            row[CURVE] = _one_seed(_symbol(r.get("cm_verdict")), seeds)
        rows.append(row)
    # A row run on two data fingerprints has two report rows: the better-seeded one speaks.
    return (pd.DataFrame(rows).sort_values("seeds", ascending=False, kind="stable")
            .drop_duplicates(["model", "target", "label"]).sort_index())


def comparisons(verdicts: pd.DataFrame) -> list[str]:
    """The comparison columns, in a fixed order: control, comparators, scratch curve."""
    fixed = {"setting", "model", "target", "label", "seeds", "target_key"}
    cols = [c for c in verdicts.columns if c not in fixed]
    return [CONTROL] + [c for c in cols if c not in (CONTROL, CURVE)] + ([CURVE] if CURVE in cols else [])


def holds(by_setting: dict[str, dict[str, str]], order: Sequence[str]) -> str:
    """`holds`, `reverses: <comparison> > (A) -> < (B); ...`, `moves: <comparison> < (A) -> = (B);
    ...` or `open: ...` for one row, from its symbols per setting ({setting: {comparison:
    symbol}}); `one setting` where it ran in one. A reversal is named before a move."""
    if len(by_setting) < 2:
        return "one setting"
    reversed_, moved, open_, shared = [], [], [], 0
    for comp in order:
        seen = {s: v[comp] for s, v in by_setting.items() if v.get(comp, NOT_COMPARED) != NOT_COMPARED}
        resolved = {s: v for s, v in seen.items() if v != NO_VERDICT}
        change = f"{comp} " + " -> ".join(f"{v} ({s})" for s, v in resolved.items())
        if {SYMBOLS["better"], SYMBOLS["worse"]} <= set(resolved.values()):
            reversed_.append(change)
        elif len(set(resolved.values())) > 1:
            moved.append(change)
        elif len(seen) >= 2 and len(resolved) < len(seen):
            open_.append(comp)
        elif len(resolved) >= 2:
            shared += 1
    if reversed_:
        return "reverses: " + "; ".join(reversed_ + moved)
    if moved:
        return "moves: " + "; ".join(moved)
    if open_:
        return "open: no verdict yet in some setting for " + ", ".join(open_)
    return "holds" if shared else "no comparison in two settings"


def section(settings: Sequence[tuple[str, str | Path]]) -> list[str]:
    """The markdown lines of the verdict table: per target that two or more settings share,
    a row per label with its symbols in each setting and whether they hold."""
    frames = [setting_verdicts(name, path) for name, path in settings]
    frames = [f for f in frames if not f.empty]
    lines = ["### Verdicts in each setting", ""]
    if len(frames) < 2:
        return lines + ["Fewer than two settings have rows with verdicts: nothing to set side by side.", ""]
    v = pd.concat(frames, ignore_index=True)
    v["target_key"] = v["target"].fillna(-1.0)
    order = comparisons(v)
    v[order] = v[order].fillna(NOT_COMPARED)
    # A column per (setting, model); a setting of one model is named by the setting alone.
    models = v.groupby("setting")["model"].nunique()
    v["column"] = [s if models[s] == 1 else f"{s} ({m})" for s, m in zip(v["setting"], v["model"])]
    setting_order = [name for name, _ in settings]
    names = sorted(set(v["column"]), key=lambda col: (setting_order.index(v.loc[v["column"] == col, "setting"].iloc[0]),
                                                       col))
    curve = " (the scratch curve at the row's training MACs)" if CURVE in order else ""
    lines += [f"Each cell: the row's verdicts, in this order, against {', '.join(order)}{curve}, as each "
              "suite's report draws them (Holm-corrected): `>` better, `<` "
              "worse, `=` not distinguishable, `?` no verdict yet (one seed, or beyond the curve's reach), "
              "`·` not compared (the row is that comparator, or it did not run at this target); then the "
              "row's seeds. A one-seed row's *not distinguishable* is shown as `?`: one run not resolved "
              "says nothing. *holds*: each comparison resolved in two or more settings has one verdict in "
              "all of them; *reverses*: resolved in opposite directions; *moves*: resolved in one setting, "
              "not in another (a change of the effect or only of the power: read both reports' Δ and "
              "resolvable difference); *open*: some setting has no verdict yet.", ""]
    any_shared = False
    for key in sorted(set(v["target_key"]), reverse=True):
        at = v[v["target_key"] == key]
        present = [n for n in names if n in set(at["column"])]
        if len(present) < 2:
            continue
        any_shared = True
        title = "full size" if key < 0 else f"target {key:g}"
        lines += [f"**{title}**", "", "| row | " + " | ".join(present) + " | holds? |",
                  "|---|" + "---|" * (len(present) + 1)]
        counts: dict[str, int] = {}
        for label in sorted(set(at["label"])):
            mine = at[at["label"] == label].set_index("column")
            cells, by_setting = [], {}
            for n in present:
                if n not in mine.index:
                    cells.append("-")
                    continue
                r = mine.loc[n]
                by_setting[n] = {c: r[c] for c in order}
                cells.append(f"`{' '.join(r[c] for c in order)}` ({int(r['seeds'])})")
            verdict = holds(by_setting, order)
            kind = verdict.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {verdict} |")
        lines += ["", f"At {title}: {counts.get('holds', 0)} row(s) hold, {counts.get('reverses', 0)} reverse, "
                      f"{counts.get('moves', 0)} move, {counts.get('open', 0)} open (the rest ran in one setting "
                      "or share no comparison).", ""]
    if not any_shared:
        lines += ["No target is shared by two settings.", ""]
    return lines
