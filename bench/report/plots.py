"""The report's PNG plots: accuracy against non-zero parameters, MACs and training
wall-clock (one line per method across targets, the Pareto front circled), and accuracy
over training time (one colour and marker per row, the mean over seeds, each seed faint).
Names from the runs' files are shown literally (`plain`) and enter file names as slugs
(`slug`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from bench.report.aggregation import ROW, _has_target, _with_keys, assign_controls, prefer_comparable_timings
from bench.report.statistics import pareto_front

MARKERS = "osD^vP*X<>hp"


def plain(text: object) -> str:
    """`text` (a label, model or data name from the runs' files) as matplotlib shows it
    literally: every `$` escaped, so that no pair of them starts math text, whose parser
    fails on what a label may hold (`l1$\\frac{$`) when the figure is saved."""
    return str(text).replace("$", r"\$")


def slug(name: object) -> str:
    """`name` (a model or data name from the runs' files) as part of a file name: letters,
    digits, '.', '_' and '-' only (`vgg11/x` -> `vgg11_x`), so that it names a file in
    the report's folder and nowhere else."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name))


def row_styles(keys: list) -> dict:
    """One (colour, marker) per row key, distinct for up to 20 x 12 rows: the tab20 colours
    and MARKERS advance together, so neighbours in the legend differ in both."""
    import matplotlib
    colours = matplotlib.colormaps["tab20"].colors
    return {k: (colours[i % len(colours)], MARKERS[i % len(MARKERS)]) for i, k in enumerate(keys)}


def plot(agg: pd.DataFrame, runs: pd.DataFrame, histories: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    models = list(dict.fromkeys(agg["model"]))
    for x, xlabel, fname in (("params_nonzero", "non-zero parameters", "acc_vs_params.png"),
                             ("macs_nonzero", "MACs per image (non-zero weights)", "acc_vs_macs.png"),
                             ("train_wall_s", "training wall-clock (s)", "acc_vs_train_time.png")):
        fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
        for ax, model in zip(axes[0], models):
            sub = agg[agg["model"] == model]
            styles = row_styles(list(dict.fromkeys(sub["label"])))
            for label, g in sub.groupby("label", sort=False):
                g = g.sort_values(x)
                own_control = (g["control"] == label).all() and not g["target"].map(_has_target).any()
                colour, marker = styles[label]
                style = dict(marker="*", markersize=14, linestyle="none", color="black") if own_control \
                    else dict(marker=marker, color=colour)
                # Error bars: the 95% t interval over seeds (none for one seed); wall-clock: min-max.
                xerr = None
                if x == "train_wall_s" and x + "_min" in g:
                    xerr = np.vstack([(g[x] - g[x + "_min"]).fillna(0.0), (g[x + "_max"] - g[x]).fillna(0.0)])
                ax.errorbar(g[x], 100 * g["test_acc"], yerr=100 * g["test_acc_ci"].fillna(0.0), xerr=xerr,
                            label=plain(label), capsize=3, **style)
            front = sub[pareto_front(sub[x], sub["test_acc"])].sort_values(x)
            ax.step(front[x], 100 * front["test_acc"], where="post", color="grey", linestyle="--", linewidth=1,
                    zorder=0, label="Pareto front")
            ax.scatter(front[x], 100 * front["test_acc"], s=180, facecolors="none", edgecolors="grey", zorder=0)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 test accuracy (%)")
            bars = "bars: 95% CI over seeds" + ("; x: min-max of timed runs" if x == "train_wall_s" else "")
            ax.set_title(plain(f"{model} ({bars}; circled: Pareto front)"), fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    paths.append(plot_over_time(runs, histories, out / "acc_over_time.png"))
    return paths


def mean_curve(curves: list[pd.DataFrame], timed: Optional[list[pd.DataFrame]] = None) -> pd.DataFrame:
    """Epoch by epoch, the mean over a row's runs of the test accuracy, and the mean of the
    cumulative training wall-clock over `timed` (the runs whose timings the report keeps,
    so that the curve ends where the table's wall-clock is; default: all of them). The
    epochs a run lacks are left out of that epoch's mean."""
    acc = pd.concat([h[["epoch", "test_acc"]] for h in curves]).groupby("epoch").mean()
    wall = pd.concat([h[["epoch", "train_wall_s_cum"]] for h in (timed or curves)]).groupby("epoch").mean()
    return wall.join(acc, how="inner")[["train_wall_s_cum", "test_acc"]]


def plot_over_time(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> Path:
    """Test accuracy against cumulative training wall-clock: per row (model, label, target,
    data) the mean over its seeds epoch by epoch (wall-clock over the runs whose timings the
    report keeps, see prefer_comparable_timings), one colour and marker per row (black
    stars: a row that is its own control, such as dense); every seed's accuracy faint in
    the row's colour, at the row's mean wall-clock."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = prefer_comparable_timings(_with_keys(assign_controls(runs)))
    models = list(dict.fromkeys(runs["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(10 * len(models), 5.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        sub = runs[runs["model"] == model].sort_values(["target_key", "label"], ascending=[False, True])
        keys = list(dict.fromkeys(tuple(r[k] for k in ROW) for _, r in sub.iterrows()))
        styles = row_styles(keys)
        several_data = sub["data"].nunique() > 1
        for key in keys:
            _, label, target_key, data = key
            colour, marker = styles[key]
            mine = [r for _, r in sub.iterrows() if tuple(r[k] for k in ROW) == key and r["run_id"] in histories]
            if not mine:
                continue
            if all(r["control"] == label for r in mine):     # the reference every row is measured against
                colour, marker = "black", "*"
            curves = [histories[r["run_id"]] for r in mine]
            timed = [histories[r["run_id"]] for r in mine if not r["timings_dropped"]]
            mean = mean_curve(curves, timed)
            for h in curves:
                own = h.set_index("epoch")["test_acc"].reindex(mean.index)
                ax.plot(mean["train_wall_s_cum"], 100 * own, color=colour, alpha=0.25, linewidth=0.8)
            target = f" @{target_key:.0%}" if target_key >= 0 else ""
            tag = f" [{data}]" if several_data else ""
            ax.plot(mean["train_wall_s_cum"], 100 * mean["test_acc"], color=colour, marker=marker, linewidth=1.8,
                    label=plain(f"{label}{target}{tag} (n={len(curves)})"))
        ax.set_xlabel("training wall-clock (s): mean over the runs the table's timings come from")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_title(plain(f"{model}: accuracy over training"), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:          # runs without per-epoch history draw nothing
            ax.legend(fontsize=7, ncol=1, title="mean over n seeds; faint: each seed", title_fontsize=7,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
