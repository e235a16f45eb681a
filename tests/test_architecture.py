"""The architecture record: every method's trained and deployed model, recorded as plain
data and rebuilt without its weights, has the same modules, parameter shapes, frozen
parameters and buffers, and after load_state_dict computes the same outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import bench.train as train_mod
from bench.architecture import ArchitectureError, NotDerivable, deployed_record, record, rebuild, same_architecture
from bench.config import ModelConfig
from bench.configure import load_config
from bench.models import build_model
from bench.train import train
from tests.test_contract import TINY_METHOD_OVERRIDES

# The methods that change the model, each with a transform inside a 2-epoch run.
CHANGING = {
    "pcn": ["method.transform_epoch=1", "method.target_params=0.5"],
    "pcns": ["method.transform_epochs=[1]"],
    "l1_filter": ["method.transform_epoch=1", "method.target_params=0.5"],
    "snp": ["method.transform_epoch=1", "method.target_params=0.5"],
    "dsr": ["method.target_params=0.5"],
    "decorrelated_bp": [],
    "dense_small": ["method.target_params=0.5"],
    "dense": [],
}


def json_round_trip(rec: dict) -> dict:
    return json.loads(json.dumps(rec))


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    assert [(n, type(m)) for n, m in a.named_modules()] == [(n, type(m)) for n, m in b.named_modules()]
    assert [(n, p.shape, p.requires_grad) for n, p in a.named_parameters()] == \
           [(n, p.shape, p.requires_grad) for n, p in b.named_parameters()]
    assert [(n, t.shape, t.dtype) for n, t in a.named_buffers()] == [(n, t.shape, t.dtype) for n, t in b.named_buffers()]
    b.load_state_dict(a.state_dict())
    for m in (a, b):                       # one memory layout (a run may train channels_last)
        m.to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", sorted(CHANGING))
def test_every_method_trained_and_deployed_model_rebuilds_from_its_record(name, tiny_overrides, monkeypatch):
    captured: dict[str, nn.Module] = {}
    real = train_mod.checkpoint_dict

    def keep(model, arch):
        captured["model"] = model
        return real(model, arch)

    monkeypatch.setattr(train_mod, "checkpoint_dict", keep)
    cfg = load_config("configs/smoke.yaml", tiny_overrides + [f"method.name={name}", "train.epochs=2",
                                                              *TINY_METHOD_OVERRIDES.get(name, []), *CHANGING[name]])
    summary = train(cfg, log=lambda s: None)
    model = captured["model"]
    rec = json_round_trip(record(model, cfg.model))
    assert_same_model(model, rebuild(rec, cfg.model))
    assert_same_model(model, rebuild(rec))                   # the record's own model configuration
    # The summary's record is the deployed model's (decorrelated BP's merged layers: same counts).
    deployed = rebuild(summary["architecture"])
    assert sum(p.numel() for p in deployed.parameters()) == summary["params_total"]
    # A summary without the record (a run that predates it) derives the same architecture.
    derived = deployed_record({k: v for k, v in json_round_trip(summary).items() if k != "architecture"})
    assert same_architecture(json_round_trip(derived), summary["architecture"])
    base = json_round_trip(record(build_model(cfg.model), cfg.model))
    assert same_architecture(rec, base) == (name == "dense")


def test_a_record_is_plain_data_and_names_only_its_allow_listed_or_built_classes():
    model = build_model(ModelConfig(name="vgg11", width=0.125))
    rec = record(model, ModelConfig(name="vgg11", width=0.125))
    assert json_round_trip(rec) == rec
    built = {e["class"] for e in rec["modules"].values()}
    assert "torch.nn.Conv2d" in built and rec["root"] == "timm.models.vgg.VGG"


def test_a_record_that_asks_for_an_unknown_class_is_refused():
    cfg = ModelConfig(name="vgg11", width=0.125)
    rec = record(build_model(cfg), cfg)
    rec["modules"]["features.0"]["class"] = "os.system"
    with pytest.raises(ArchitectureError, match="not on the list"):
        rebuild(rec)


def test_a_record_whose_shapes_do_not_fit_is_refused():
    cfg = ModelConfig(name="vgg11", width=0.125)
    rec = record(build_model(cfg), cfg)
    rec["modules"]["features.0"]["params"]["weight"][0] += 1
    with pytest.raises(ArchitectureError, match="features.0"):
        rebuild(rec)


def test_rebuild_leaves_the_global_random_stream_alone():
    cfg = ModelConfig(name="vgg11", width=0.125)
    rec = record(build_model(cfg), cfg)
    before = torch.get_rng_state()
    rebuild(rec)
    assert torch.equal(before, torch.get_rng_state())


def test_a_narrowed_and_swapped_model_rebuilds(tmp_path):
    # Structure changes made by hand: a narrowed conv pair, a shared module, an extra buffer
    # and a frozen parameter, as the methods make them.
    cfg = ModelConfig(name="vgg11", width=0.125)
    model = build_model(cfg)
    model.features[0] = nn.Conv2d(3, 5, 3, padding=1)
    model.features[1] = nn.BatchNorm2d(5)
    model.features[4] = nn.Sequential(nn.ZeroPad2d((1, 1, 1, 1)), nn.Conv2d(5, 16, 3))
    model.features[4][1].weight.requires_grad_(False)
    model.features[4][1].register_buffer("dsr_mask", torch.ones(16, 5, 3, 3, dtype=torch.bool))
    model.pre_logits = model.features[2]                    # one module under two paths
    model.features[8] = nn.Sequential(model.features[6], model.features[8])   # ... one inside a new container
    assert_same_model(model, rebuild(json_round_trip(record(model, cfg))))


COMMITTED = Path(__file__).resolve().parents[1] / "results" / "cifar10-quick" / "runs"


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no committed quick-suite runs")
def test_every_committed_run_rebuilds_with_its_recorded_parameter_and_mac_counts():
    from bench.metrics import count_macs
    summaries = [json.loads(p.read_text()) for p in sorted(COMMITTED.glob("*/summary.json"))]
    assert len(summaries) >= 57
    for s in summaries:
        model = rebuild(json_round_trip(deployed_record(s)))
        macs, _ = count_macs(model, torch.zeros(1, 3, 32, 32))
        assert (sum(p.numel() for p in model.parameters()), macs) == (s["params_total"], s["macs"]), s["run_id"]


def test_a_summary_that_records_no_architecture_is_named_not_derivable():
    summary = {"run_id": "x", "method": "someone_elses", "method_summary": {},
               "config": {"model": {"name": "vgg11", "width": 0.125}}}
    with pytest.raises(NotDerivable, match="x: method 'someone_elses'"):
        deployed_record(summary)


def _dense_record() -> dict:
    cfg = ModelConfig(name="vgg11", width=0.125)
    return json_round_trip(record(build_model(cfg), cfg))


def _set(rec: dict, path: list, value) -> dict:
    d = rec
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return rec


# Each a record as a crafted results file may hold it: refused in one line before it is
# built, never a traceback from torch, never an allocation sized by the number in the file.
CRAFTED_RECORDS = {
    "huge out_channels": (["modules", "features.0", "args", "out_channels"], 10**12, "out_channels"),
    "huge conv within the per-layer bound": (["modules", "features.0", "args"],
                                             {"in_channels": 60000, "out_channels": 60000, "kernel_size": [3, 3],
                                              "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
                                              "bias": True, "padding_mode": "zeros"}, "built from its args holds"),
    "huge padding": (["modules", "features.0", "args", "padding"], [5000, 5000], "padding"),
    "dtype naming a torch function": (["modules", "features.1", "buffers", "x"], [[2], "load"], "dtype"),
    "unknown dtype": (["modules", "features.1", "buffers", "x"], [[2], "nosuch"], "dtype"),
    "huge buffer": (["modules", "features.1", "buffers", "x"], [[10**6, 10**6, 10**6], "float32"], "shape"),
    "many buffers": (["modules", "features.1", "buffers"],
                     {f"x{i}": [[65536, 4096], "float32"] for i in range(2)}, "numbers"),
    "unknown frozen parameter": (["modules", "features.0", "frozen"], ["nosuch"], "frozen"),
    "same_as nothing recorded": (["modules", "features.0"], {"same_as": "no.such"}, "same_as"),
    "args as a list": (["modules", "features.0", "args"], [1, 2], "args"),
    "a module as a list": (["modules", "features.0"], [1], "features.0"),
    "an unknown model key": (["model", "bogus"], 1, "bogus"),
    "a huge width": (["model", "width"], 1e9, "too large"),
    "a large width": (["model", "width"], 64.0, "over the"),
    "a child never recorded": (["modules", "features", "children"], ["0", "nosuch"], None),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_RECORDS))
def test_a_crafted_record_is_refused_in_one_line_before_anything_is_built(case):
    path, value, words = CRAFTED_RECORDS[case]
    rec = _set(_dense_record(), path, value)
    if case == "a child never recorded":
        rec["modules"]["features"]["class"] = "torch.nn.Sequential"
    with pytest.raises(ArchitectureError) as e:
        rebuild(rec)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith("architecture record: ")
    assert words is None or words in str(e.value)


def test_every_buffer_dtype_a_record_writes_is_on_the_allow_list():
    from bench.architecture import DTYPES, _dtype_name
    for dtype in DTYPES.values():
        assert DTYPES[_dtype_name(dtype)] is dtype


@pytest.mark.parametrize("method, ms, words", [
    ("dense_small", {"width": "abc"}, "expected a number"),
    ("dense_small", {"width": 1e9}, "too large"),
    ("l1_filter", {"channels": {"nosuch.layer": [1, 1]}}, "names no conv or linear layer"),
    ("l1_filter", {"channels": {"features.0": "ab"}}, "not [before, after]"),
    ("l1_filter", {"channels": {"features.0": [3]}}, "not [before, after]"),
    ("pcn", {"layers": [{"layer": "features.4", "reads": None, "in_channels_kept": 8, "in_dims_before": 8,
                         "in_dims_after": 10**9}]}, "in_dims_after"),
    ("pcns", {"shrinks": [{"layers": [{"layer": "features.0", "p_into": "features.3.mix (new)",
                                       "n_before": 10**6, "n_after": 4}]}]}, "n_before"),
    ("dsr", {"active_init": {"features.1": 1}}, "names no conv or linear layer"),
    ("dense", {}, "config.model"),
])
def test_a_summary_whose_method_summary_is_malformed_is_not_derivable(method, ms, words):
    summary = {"run_id": "x", "method": method, "method_summary": ms,
               "config": {"model": {"name": "vgg11", "width": 0.125}, "data": {"image_size": 32}}}
    if words == "config.model":
        summary["config"]["model"]["bogus"] = 1
    with pytest.raises(NotDerivable) as e:
        deployed_record(summary)
    assert str(e.value).startswith("x: ") and words in str(e.value) and len(str(e.value).splitlines()) == 1
