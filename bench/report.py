"""The report of a suite: runs.csv, a README with one table per model, PNG plots,
and a W&B summary run in the suite's group.

`python -m bench report RESULTS_DIR` reads every finished run under
`RESULTS_DIR/runs/*/summary.json` (and its history.csv) and writes:

- `runs.csv`: one row per run, every scalar summary field (nested ones flattened);
- `README.md`: per model, one row per (method, target): top-1 mean +- std over
  seeds, parameters, MACs, training wall-clock, training MACs and measured
  throughput, each also relative to the row's control; and time to the control's
  accuracy (epochs and training seconds until the run first reaches its control's
  mean final accuracy);
- plots: accuracy vs parameters, vs MACs, vs training wall-clock (one line per
  method across targets, dense as a reference point), and accuracy over
  training time per method.

A row's control is another label of the suite (`control:` in the suite file,
`dense` by default): the run's own record (`control` in its summary or config),
else the suite's plan (`controls` in suite.json), else `dense`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.config import flatten
from bench.runs import write_text

DENSE_LABEL = "dense"


def load_runs(results_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rows, histories = [], {}
    for path in sorted(Path(results_dir).glob("runs/*/summary.json")):
        s = json.loads(path.read_text())
        histories.setdefault("__wandb__", s.get("config", {}).get("wandb", {}))
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in flatten({k: v for k, v in s.items() if k not in ("env", "config")}).items()}
        row.setdefault("control", s.get("config", {}).get("control") or None)
        row["run_dir"] = str(path.parent)
        row["device"] = s.get("env", {}).get("device")
        rows.append(row)
        hist = path.parent / "history.csv"
        if hist.is_file():
            histories[s["run_id"]] = pd.read_csv(hist)
    return pd.DataFrame(rows), histories


def assign_controls(runs: pd.DataFrame, plan: Optional[dict[str, str]] = None) -> pd.DataFrame:
    """`runs` with a `control` column: each run's recorded control, else the suite plan's
    for its label, else `dense`."""
    plan = plan or {}
    recorded = runs["control"] if "control" in runs else pd.Series(None, index=runs.index, dtype=object)
    fallback = runs["label"].map(lambda lab: plan.get(lab, DENSE_LABEL))
    return runs.assign(control=recorded.where(recorded.notna() & (recorded != ""), fallback))


def time_to_accuracy(hist: pd.DataFrame, target_acc: float) -> tuple[Optional[int], Optional[float]]:
    """First epoch (and cumulative training seconds) at which the run's model reached
    `target_acc` (after a transform, the transformed model's accuracy counts)."""
    acc = hist["test_acc"]
    if "acc_after_transform" in hist:
        acc = hist["acc_after_transform"].fillna(hist["test_acc"])
    hit = hist[acc >= target_acc]
    if hit.empty:
        return None, None
    first = hit.iloc[0]
    return int(first["epoch"]), float(first["train_wall_s_cum"])


REL_METRICS = ["test_acc", "params_total", "params_nonzero", "macs", "macs_nonzero", "train_wall_s", "train_macs",
               "throughput_train_img_s", "throughput_infer_img_s"]


def aggregate(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, label, target): means over seeds, and each row against its
    control (the mean over the control label's runs of the same model)."""
    runs = assign_controls(runs)
    runs["target"] = runs["target"].astype(object).where(runs["target"].notna(), None)
    runs["target_key"] = runs["target"].map(lambda t: -1.0 if t is None else float(t))
    reference = runs.groupby(["model", "label"])[REL_METRICS].mean()
    control_acc = reference["test_acc"].to_dict()
    tta_epoch, tta_s = [], []
    for _, r in runs.iterrows():
        ref = control_acc.get((r["model"], r["control"]))
        e, s = (None, None) if ref is None or r["run_id"] not in histories else time_to_accuracy(
            histories[r["run_id"]], ref)
        tta_epoch.append(e)
        tta_s.append(s)
    runs["tta_epoch"], runs["tta_s"] = tta_epoch, tta_s
    metrics = ["test_acc", "params_total", "params_nonzero", "macs", "macs_nonzero", "train_wall_s", "train_macs",
               "throughput_train_img_s", "throughput_infer_img_s", "transform_s", "tta_s", "tta_epoch"]
    g = runs.groupby(["model", "label", "target_key"], dropna=False)
    agg = g[metrics].mean()
    agg["control"] = g["control"].first()
    agg["test_acc_std"] = g["test_acc"].std(ddof=1).fillna(0.0)
    agg["seeds"] = g["seed"].nunique()
    agg["reached"] = g["tta_epoch"].apply(lambda s: int(s.notna().sum()))
    agg = agg.reset_index()
    keys = list(zip(agg["model"], agg["control"]))
    for m in REL_METRICS:
        ref = pd.Series([reference[m].get(k, float("nan")) for k in keys], index=agg.index, dtype=float)
        agg[m + "_rel"] = (agg[m] / ref).where(ref != 0)
    agg["test_acc_delta"] = agg["test_acc"] - pd.Series(
        [reference["test_acc"].get(k, float("nan")) for k in keys], index=agg.index, dtype=float)
    agg["target"] = agg["target_key"].map(lambda t: None if t < 0 else t)
    controls = set(agg["control"])
    agg["_o"] = agg["label"].map(lambda lab: 0 if lab == DENSE_LABEL else 1 if lab in controls else 2)
    return agg.sort_values(["model", "_o", "label", "target_key"], ascending=[True, True, True, False]).drop(columns="_o")


def _fmt_count(v: float) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def _rel(v: float) -> str:
    return "" if v != v else f" ({v:.2f}x)"


def _si(v: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def _seconds(v: float) -> str:
    return f"{v:.0f}s" if v >= 10 else f"{v:.1f}s"


def _has_target(t: Any) -> bool:
    return t is not None and t == t   # None, or NaN after a CSV round trip, mean "no target"


def markdown_table(agg: pd.DataFrame, model: str) -> str:
    rows = agg[agg["model"] == model]
    head = ("| method | target | top-1 % (mean ± std) | control | Δ top-1 vs control | params | non-zero params | "
            "MACs/img | train wall-clock | train MACs | train img/s | infer img/s | to control acc |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for _, r in rows.iterrows():
        target = f"{r['target']:.0%}" if _has_target(r["target"]) else "-"
        acc = f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f}" if r["seeds"] > 1 else f"{100 * r['test_acc']:.2f}"
        delta = "" if r["test_acc_delta"] != r["test_acc_delta"] else f"{100 * r['test_acc_delta']:+.2f}"
        tta = "never" if r["reached"] == 0 else f"ep {r['tta_epoch']:.0f}, {_seconds(r['tta_s'])}"
        lines.append(
            f"| {r['label']} | {target} | {acc} | {r['control']} | {delta} "
            f"| {_fmt_count(r['params_total'])}{_rel(r['params_total_rel'])} "
            f"| {_fmt_count(r['params_nonzero'])}{_rel(r['params_nonzero_rel'])} "
            f"| {_fmt_count(r['macs'])}{_rel(r['macs_rel'])} "
            f"| {_seconds(r['train_wall_s'])}{_rel(r['train_wall_s_rel'])} | {_si(r['train_macs'])}{_rel(r['train_macs_rel'])} "
            f"| {r['throughput_train_img_s']:.0f}{_rel(r['throughput_train_img_s_rel'])} "
            f"| {r['throughput_infer_img_s']:.0f}{_rel(r['throughput_infer_img_s_rel'])} | {tta} |")
    return head + "\n".join(lines) + "\n"


def highlights(agg: pd.DataFrame, model: str) -> list[str]:
    """One line per target (the most accurate method there) and the fastest run to its
    control's accuracy: what a reader should not have to dig out of the table."""
    rows = agg[agg["model"] == model]
    lines = []
    for target in sorted({t for t in rows["target"] if _has_target(t)}, reverse=True):
        at = rows[rows["target"] == target].sort_values("test_acc", ascending=False)
        best = at.iloc[0]
        others = ", ".join(f"{r['label']} {100 * r['test_acc']:.2f}" for _, r in at.iloc[1:].iterrows())
        lines.append(f"- At {target:.0%} of the parameters, " + (
            f"**{best['label']}** keeps the most accuracy: {100 * best['test_acc']:.2f}% ({others})." if others else
            f"only **{best['label']}** was run: {100 * best['test_acc']:.2f}%."))
    # Controls (dense, dense_leaky, any row's control) are references, not candidates.
    controls = rows["control"] if "control" in rows else pd.Series(DENSE_LABEL, index=rows.index)
    methods = rows[~rows["label"].str.startswith(DENSE_LABEL) & ~rows["label"].isin(set(controls))]
    shared = set(controls[methods.index])
    # One control for every method row: name it once; several: name each winner's own.
    whose, it = (f"the {min(shared)} control's", "it") if len(shared) == 1 else ("its control's", "theirs")
    reached = methods[methods["reached"] > 0].sort_values("tta_s")
    if not len(reached):
        lines.append(f"- No method row reaches {whose} final accuracy within the budget.")
    else:
        r = reached.iloc[0]
        target = f" at {r['target']:.0%}" if _has_target(r["target"]) else ""
        vs = "" if len(shared) == 1 else f" (control: {controls[r.name]})"
        lines.append(f"- Fastest to {whose} accuracy: **{r['label']}**{target}{vs}, epoch "
                     f"{r['tta_epoch']:.0f} after {_seconds(r['tta_s'])} of training; "
                     f"{len(reached)} of {len(methods)} method rows reach {it} at all.")
    return lines


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
            for label, g in sub.groupby("label", sort=False):
                g = g.sort_values(x)
                style = dict(marker="*", markersize=14, linestyle="none", color="black") if label == DENSE_LABEL \
                    else dict(marker="o")
                ax.errorbar(g[x], 100 * g["test_acc"], yerr=100 * g["test_acc_std"], label=label, capsize=3, **style)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 test accuracy (%)")
            ax.set_title(model)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for _, r in runs[(runs["model"] == model) & (runs["seed"] == runs["seed"].min())].iterrows():
            h = histories.get(r["run_id"])
            if h is None:
                continue
            target = f" @{float(r['target']):.0%}" if _has_target(r["target"]) else ""
            ax.plot(h["train_wall_s_cum"], 100 * h["test_acc"], marker=".", label=f"{r['label']}{target}",
                    **({"color": "black", "linewidth": 2.5} if r["label"] == DENSE_LABEL else {}))
        ax.set_xlabel("training wall-clock (s)")
        ax.set_ylabel("top-1 test accuracy (%)")
        ax.set_title(f"{model}: accuracy over training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "acc_over_time.png", dpi=110)
    plt.close(fig)
    paths.append(out / "acc_over_time.png")
    return paths


def all_histories(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every run's per-epoch rows in one table, keyed by run, so the curves (and per-method
    series such as DSR's per-layer active counts) survive without the run folders."""
    keys = ["run_id", "label", "model", "target", "seed"]
    frames = [h.assign(**{k: r[k] for k in keys if k in r}) for _, r in runs.iterrows()
              if (h := histories.get(r["run_id"])) is not None]
    if not frames:
        return pd.DataFrame(columns=keys)
    table = pd.concat(frames, ignore_index=True)
    return table[[k for k in keys if k in table] + [c for c in table if c not in keys]]


def write_report(results_dir: str | Path, suite_name: Optional[str] = None) -> Optional[Path]:
    out = Path(results_dir)
    runs, histories = load_runs(out)
    wandb_cfg = histories.pop("__wandb__", {})
    if runs.empty:
        print(f"report: no finished runs under {out}/runs")
        return None
    meta: dict[str, Any] = {}
    if (out / "suite.json").is_file():
        meta = json.loads((out / "suite.json").read_text())
    runs = assign_controls(runs, meta.get("controls"))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    write_text(out / "histories.csv", all_histories(runs, histories).to_csv(index=False))
    agg = aggregate(runs, histories)
    write_text(out / "table.csv", agg.to_csv(index=False))
    plots = plot(agg, runs, histories, out)
    name = suite_name or meta.get("suite") or out.name
    lines = [f"# Results: {name}", ""]
    if meta:
        lines += [f"Produced by `{meta.get('command', '')}` on {meta.get('machine', '')} "
                  f"(devices: {', '.join(sorted(set(map(str, runs['device']))))}), last invoked {meta.get('started', '')} (finished runs are reused, not re-run).", ""]
    lines += ["Each figure is measured by the harness, the same way for every method. Relative figures "
              "(in parentheses) and Δ are against the row's *control* (another row of the suite, `dense` "
              "unless the suite names one) of the same model. *to control acc*: the first epoch at which a "
              "run reached its control's mean final accuracy, with its training wall-clock until then. MACs "
              "and params of sparse (DSR) models count non-zero weights in the *non-zero* columns only; their MACs are theoretical (dense kernels still run).", ""]
    for model in dict.fromkeys(agg["model"]):
        lines += [f"## {model}", "", *highlights(agg, model), "", markdown_table(agg, model)]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_text(out / "README.md", "\n".join(lines))
    log_to_wandb(name, runs, plots, out, wandb_cfg)
    print(f"report: {len(runs)} runs -> {out / 'README.md'}")
    return out / "README.md"


def log_to_wandb(group: str, runs: pd.DataFrame, plots: list[Path], out: Path, wandb_cfg: dict) -> None:
    """A summary run in the suite's group (same project and mode as its runs): the runs
    table and the plots, so the W&B project shows the comparison next to the runs."""
    import os
    mode = os.environ.get("WANDB_MODE") or wandb_cfg.get("mode", "offline")
    if mode == "disabled":
        return
    try:
        import wandb
        run = wandb.init(project=wandb_cfg.get("project", "compress-bench"), entity=wandb_cfg.get("entity") or None,
                         group=group, job_type="report", name=f"{group}-report",
                         dir=str(out), mode=mode, reinit="finish_previous",
                         settings=wandb.Settings(console="off", silent=True))
        run.log({"runs": wandb.Table(dataframe=runs), **{p.stem: wandb.Image(str(p)) for p in plots}})
        run.finish()
    except Exception as e:  # noqa: BLE001 - the report files are already written
        print(f"warning: W&B summary run failed ({type(e).__name__}: {e})")
