"""The published column: configs/published.yaml is well formed and
sourced, and the report sets an entry beside our row only where model, method and kept
fraction match, with the source's delta against its own baseline."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.report import PUBLISHED_FILE, aggregate, load_published, published_matches, published_section, write_report

DENSE_MACS, DENSE_PARAMS = 1.25e8, 8.5e5


def run(label: str, target, seed: int, acc: float, kept_macs: float = 1.0, model: str = "resnet56") -> dict:
    return {"run_id": f"{model}-{label}-{target}-s{seed}", "label": label, "model": model, "dataset": "cifar10",
            "seed": seed, "target": target, "test_acc": acc, "control": "dense",
            "params_total": (target or 1.0) * DENSE_PARAMS, "params_nonzero": (target or 1.0) * DENSE_PARAMS,
            "macs": kept_macs * DENSE_MACS, "macs_nonzero": kept_macs * DENSE_MACS, "dense_params": DENSE_PARAMS,
            "dense_macs": DENSE_MACS, "train_wall_s": 100.0, "train_macs": 1e12, "throughput_train_img_s": 100.0,
            "throughput_infer_img_s": 400.0, "transform_s": 0.0}


def planted() -> pd.DataFrame:
    rows = []
    for s, base in enumerate([0.930, 0.934, 0.932]):
        rows += [run("dense", None, s, base),
                 run("l1_filter", 0.5, s, base - 0.006, kept_macs=0.48),       # 0.48 / 0.4717: within 10%
                 run("l1_filter", 0.25, s, base - 0.020, kept_macs=0.25),
                 run("random_filter", 0.5, s, base - 0.010, kept_macs=0.48),   # same fractions, other method
                 run("l1_filter", 0.5, s, base - 0.006, kept_macs=0.48, model="vgg11")]
    return pd.DataFrame(rows)


ENTRIES = [
    {"label": "l1_filter", "name": "TP group-L1", "model": "resnet56", "dataset": "cifar10", "baseline_acc": 93.53,
     "acc": 92.93, "kept": {"macs": 0.4717}, "budget": "200 + 100 ep", "source": "torch-pruning"},
    {"label": "l1_filter", "name": "pruned-B", "model": "resnet56", "dataset": "cifar10", "baseline_acc": 93.04,
     "acc": 93.06, "kept": {"params": 0.863, "macs": 0.724}, "budget": "retrain 40 ep", "source": "Li et al."},
    {"label": "l1_filter", "name": "other data", "model": "resnet56", "dataset": "cifar100", "baseline_acc": 70.0,
     "acc": 69.0, "kept": {"macs": 0.48}, "budget": "-", "source": "elsewhere"},
]


def test_an_entry_matches_only_rows_of_its_model_method_dataset_and_kept_fraction():
    agg = aggregate(planted(), {})
    matches = published_matches(agg, ENTRIES)
    assert [(r["model"], r["label"], r["target"], e["name"], kind) for r, e, kind, _ in matches] == [
        ("resnet56", "l1_filter", 0.5, "TP group-L1", "macs")]
    assert matches[0][3] == pytest.approx(0.48)


def test_the_section_gives_each_source_its_own_baseline_delta_and_ours_against_our_dense():
    agg = aggregate(planted(), {})
    section = "\n".join(published_section(agg, "resnet56", ENTRIES))
    row = next(line for line in section.splitlines() if line.startswith("| l1_filter 50%"))
    assert "| TP group-L1 | 93.53 → 92.93 | -0.60 | 47.2% / 48.0% (macs) | 200 + 100 ep | torch-pruning |" in row
    assert "| -0.60 (dense) |" in row                     # ours: against the row's control, a constant 0.6 points
    assert "No matching row" in section and "pruned-B" in section.split("No matching row")[1]
    assert published_section(agg, "vgg11", ENTRIES) == []                     # no entry for this model


def test_the_published_file_is_sourced_and_well_formed():
    entries = load_published(PUBLISHED_FILE)
    assert {(e["model"], e["name"]) for e in entries} >= {("vgg16", "VGG-16-pruned-A"),
                                                          ("resnet56", "ResNet-56-pruned-B"),
                                                          ("resnet56", "ResNet-56 Group-L1 (torch-pruning)")}
    for e in entries:
        assert e["source"] and e["budget"] and 80 < e["acc"] < 100 and 80 < e["baseline_acc"] < 100
        assert all(0 < v <= 1 for v in e["kept"].values())
    li_vgg = next(e for e in entries if e["name"] == "VGG-16-pruned-A")       # Li et al. Table 1
    assert (li_vgg["baseline_acc"], li_vgg["acc"], li_vgg["kept"]) == (93.25, 93.40, {"params": 0.36, "macs": 0.658})


def test_a_malformed_entry_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("entries:\n  - {label: l1_filter, name: x, model: m, dataset: cifar10, baseline_acc: 1, acc: 1, "
                    "kept: {flops: 0.5}, budget: b, source: s}\n")
    with pytest.raises(ValueError, match="unknown kept kinds"):
        load_published(path)


def test_the_report_shows_the_published_figures_beside_the_matching_row(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for _, r in planted().iterrows():
        folder = tmp_path / "runs" / r["run_id"]
        folder.mkdir(parents=True)
        summary = {k: v for k, v in r.items() if k != "control" and v == v}
        summary["target"] = r["target"] if r["target"] == r["target"] else None
        (folder / "summary.json").write_text(json.dumps({**summary, "env": {"device": "cpu"},
                                                         "config": {"wandb": {"mode": "disabled"}}}))
    write_report(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    resnet = readme.split("## resnet56")[1].split("## vgg11")[0]
    assert "### Published figures" in resnet and "| ResNet-56 Group-L1 (torch-pruning) | 93.53 → 92.93 | -0.60 |" in resnet
    assert "### Published figures" not in readme.split("## vgg11")[1]
