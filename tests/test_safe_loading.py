"""Files a run or a data folder holds are read without running code: a resume state or
checkpoint that names anything but tensors and plain data, and a CIFAR pickle that names
anything but numpy arrays and plain data, are refused in one line and create nothing.
RNG states load on the CPU whatever device the rest of the state goes to."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import ConfigError, DataConfig
from bench.configure import load_config
from bench.data import load_data
from bench.runs import RunDir, load_checkpoint, run_name
from bench.train import cpu_bytes, train

quiet = dict(log=lambda s: None)


class Planted:
    """A pickle payload that creates `path` when unpickled by a plain unpickler."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_the_planted_payload_would_create_its_file_under_a_plain_unpickler(tmp_path):
    # The control: without the restrictions the payload does what the tests below forbid.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker))).close()
    assert marker.exists()


def write_cifar10(root: Path, protocol: int, planted: Path | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3],
             "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"], "batch_label": "batch", "count": np.int64(4)}
        if planted is not None and name == "data_batch_3":
            d["payload"] = Planted(planted)
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=protocol)
    return folder


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_are_read(tmp_path, protocol):
    write_cifar10(tmp_path, protocol)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    assert len(data.train_x) == 20 and len(data.test_x) == 4


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_planted_cifar10_pickle_is_refused_in_one_line_and_creates_nothing(tmp_path, protocol):
    marker = tmp_path / "ran"
    write_cifar10(tmp_path, protocol, planted=marker)
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg and "data_batch_3" in msg and "names" in msg and "refusing" in msg
    assert not marker.exists()


def test_a_planted_cifar100_pickle_is_refused_in_one_line_and_creates_nothing(tmp_path):
    from tests.test_datasets import write_fake_cifar100
    folder = write_fake_cifar100(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "train", "rb") as f:
        d = pickle.load(f)
    d["payload"] = Planted(marker)
    with open(folder / "train", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(ConfigError) as e:
        load_data(DataConfig(name="cifar100", root=str(tmp_path)), torch.device("cpu"))
    assert "\n" not in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()


@pytest.fixture
def interrupted(tiny_overrides):
    """A dsr run (masks as buffers, the method's generator in use) stopped after one epoch."""
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=2", "method.name=dsr",
                                                              "method.target_params=0.5"])
    assert train(cfg, max_epochs=1, **quiet) is None
    return cfg, RunDir(Path(cfg.output_dir) / run_name(cfg))


def test_a_resume_state_is_plain_data_and_loads_with_weights_only(interrupted):
    cfg, rd = interrupted
    state = torch.load(rd.state_path, weights_only=True)
    assert state["format"] == 2 and "model" not in state
    assert any(k.endswith("dsr_mask") or "mask" in k for k in state["model_state"])
    assert isinstance(state["architecture"], dict) and isinstance(state["method"], dict)


def test_a_planted_resume_state_is_refused_in_one_line_and_the_run_starts_again(interrupted, tmp_path):
    cfg, rd = interrupted
    marker = tmp_path / "ran"
    state = torch.load(rd.state_path, weights_only=True)
    state["payload"] = Planted(marker)
    torch.save(state, rd.state_path)
    lines: list[str] = []
    assert rd.load_state("cpu", lines.append) is None
    assert len(lines) == 1 and "\n" not in lines[0] and "refused" in lines[0] and not marker.exists()
    summary = train(cfg, log=lines.append)                  # starts again from epoch 0 and finishes
    assert summary["status"] == "finished" and not marker.exists()
    assert not any("resuming" in line for line in lines)


def test_a_planted_or_old_checkpoint_is_refused_in_one_line_and_creates_nothing(tiny_overrides, tmp_path):
    cfg = load_config("configs/smoke.yaml", tiny_overrides + ["train.epochs=1"])
    train(cfg, **quiet)
    path = Path(cfg.output_dir) / run_name(cfg) / "checkpoint.pt"
    model = load_checkpoint(path)                             # the real one loads
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.pt"
    torch.save({**torch.load(path, weights_only=True), "payload": Planted(marker)}, planted)
    old = tmp_path / "old.pt"
    torch.save(model, old)                                   # the old format: the model pickled whole
    for bad in (planted, old):
        with pytest.raises(ConfigError) as e:
            load_checkpoint(bad)
        assert "\n" not in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_rng_states_load_on_the_cpu_whatever_the_device_of_the_rest(interrupted):
    # A CUDA run loads its state with the model's tensors on the GPU; `meta` stands in for it
    # here. Generator.set_state needs a CPU ByteTensor: the RNG states must not follow.
    cfg, rd = interrupted
    state = rd.load_state(torch.device("meta"), **quiet)
    assert state is not None
    assert all(t.device.type == "meta" for t in state["model_state"].values())
    for key in ("torch_rng", "method_generator"):
        assert state[key].device.type == "cpu" and state[key].dtype == torch.uint8
    torch.Generator().set_state(state["method_generator"])
    before = torch.get_rng_state()
    torch.set_rng_state(state["torch_rng"])
    torch.set_rng_state(before)


def test_cpu_bytes_brings_an_rng_state_back_from_another_device():
    state = torch.get_rng_state()
    moved = state.to(torch.int64)                     # as if mapped and cast elsewhere
    torch.Generator().set_state(cpu_bytes(moved))
    assert torch.equal(cpu_bytes(moved), state)


def test_no_loader_in_the_harness_unpickles_code():
    # Every torch.load of a run's files reads with weights_only=True.
    root = Path(__file__).resolve().parents[1] / "bench"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load(" not in text, path


def test_numpy_values_in_a_resume_state_become_plain_numbers_that_load(tmp_path):
    from bench.runs import plain_data
    state = {"history": [{"acc": np.float64(0.5), "n": np.int64(3)}], "spread": (np.float32(1.5), np.zeros(2)),
             "t": torch.ones(2)}
    torch.save(plain_data(state), tmp_path / "s.pt")
    back = torch.load(tmp_path / "s.pt", weights_only=True)
    assert back["history"] == [{"acc": 0.5, "n": 3}] and back["spread"] == (1.5, [0.0, 0.0])
    assert type(back["history"][0]["acc"]) is float and torch.equal(back["t"], torch.ones(2))


# --------------------------------------------------------------------------- results files
# A summary.json, run folder or suite record that no run writes is refused by `report` and
# `compare` in one line naming the file and the key (bench.records), before anything is written.
def results_folder(root: Path) -> Path:
    """A small finished suite (tests/test_report.py's planted runs, with their method and
    budget) with its suite.json."""
    import json
    from tests.test_report import planted, write_suite_folder
    runs, hists = planted()
    write_suite_folder(root, runs.assign(method=runs["label"], epochs=2), hists)
    (root / "suite.json").write_text(json.dumps({"suite": "t"}))
    return root


def edit_summary(folder: Path, run_id: str, change) -> Path:
    import json
    path = folder / "runs" / run_id / "summary.json"
    s = json.loads(path.read_text())
    change(s)
    path.write_text(json.dumps(s))
    return path


def refused_by_report_and_compare(folder: Path, tmp_path: Path, capsys, *says: str) -> None:
    """`report` exits 2 and `compare` 1, each with one line naming every part of `says`,
    and neither writes its output folder."""
    from bench.__main__ import main
    other = results_folder(tmp_path / "other")
    for argv, code, prefix in ((["report", str(folder), "--out", str(tmp_path / "rep")], 2, "error: "),
                               (["compare", str(folder), str(other), "--out", str(tmp_path / "cmp")], 1, "compare: ")):
        assert main(argv) == code, argv
        err = [line for line in capsys.readouterr().err.splitlines() if "CUDA" not in line]
        assert len(err) == 1 and err[0].startswith(prefix), err
        assert all(s in err[0] for s in says), (says, err[0])
    assert not (tmp_path / "rep").exists() and not (tmp_path / "cmp").exists()


def drop(*keys):
    return lambda s: [s.pop(k, None) for k in keys]


def put(**values):
    return lambda s: s.update(values)


BAD_RESULTS = {
    # identity: without them a run is a row of no model, or drops out of its row's seeds
    "no model": (drop("model"), "no model"),
    "no seed": (drop("seed"), "no seed"),
    "no label and no method": (drop("label", "method"), "no label and no method"),
    # a 401-digit integer is not a finite number (and no OverflowError in the checker)
    "huge int accuracy": (put(test_acc=10**400), "test_acc is 1000"),
    # ranges
    "negative accuracy": (put(test_acc=-3.0), "test_acc is -3.0, not in [0, 1]"),
    "huge accuracy": (put(test_acc=1e308), "test_acc is 1e+308, not in [0, 1]"),
    "best accuracy above 1": (put(best_test_acc=1.5), "best_test_acc is 1.5"),
    "target 1.5": (put(target=1.5), "target is 1.5, not in (0, 1]"),
    "target 0": (put(target=0), "target is 0, not in (0, 1]"),
    "negative target": (put(target=-0.5), "target is -0.5"),
    "negative seed": (put(seed=-1), "seed is -1, not in [0, 2147483648)"),
    "huge seed": (put(seed=10**30), "seed is 1000"),
    "zero epochs": (put(epochs=0), "epochs is 0, not >= 1"),
    "negative epochs": (put(epochs=-4), "epochs is -4"),
    "epochs as text in the config": (lambda s: (s.pop("epochs", None), s["config"].update(train={"epochs": "abc"})),
                                     'config.train.epochs is "abc", not an integer'),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_a_summary_no_run_writes_is_refused_in_one_line_by_report_and_compare(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    change, says = BAD_RESULTS[case]
    folder = results_folder(tmp_path / "bad")
    edit_summary(folder, "pcn-vgg11-s0", change)
    refused_by_report_and_compare(folder, tmp_path, capsys, "pcn-vgg11-s0/summary.json", "unreadable summary", says)


def test_a_run_without_a_target_is_a_row_without_one(tmp_path, monkeypatch):
    """No summary records `target` (runs of a suite without targets): each is a control-like
    row, not a KeyError."""
    import pandas as pd
    from bench.report import write_report
    monkeypatch.setenv("WANDB_MODE", "disabled")
    folder = results_folder(tmp_path / "s")
    for run in (folder / "runs").iterdir():
        edit_summary(folder, run.name, drop("target"))
    write_report(folder)
    table = pd.read_csv(folder / "table.csv")
    assert len(table) == 4 and table["target"].isna().all()


def test_a_run_labelled_only_by_its_method_is_the_methods_row(tmp_path, monkeypatch):
    from bench.report import load_runs
    folder = results_folder(tmp_path / "s")
    edit_summary(folder, "pcn-vgg11-s0", lambda s: (s.pop("label"), s.update(method="pcn")))
    runs, _ = load_runs(folder)
    assert "pcn" in set(runs["label"])


def test_the_record_checker_takes_an_int_of_any_size():
    from bench.records import ACCURACY, EPOCHS, NUMBER, SEED, problem
    assert problem(10**400, NUMBER).endswith("..., not a finite number")
    assert problem(10**400, ACCURACY).endswith("..., not a finite number")
    assert problem(2, ACCURACY) == "it is 2, not in [0, 1]" and problem(1, ACCURACY) is None
    assert problem(10**400, EPOCHS) is None and problem(2**31, SEED) == "it is 2147483648, not in [0, 2147483648)"


def test_a_run_folder_linked_from_outside_the_results_folder_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    folder = results_folder(tmp_path / "bad")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "runs" / "pcn-vgg11-s0").rename(elsewhere / "pcn-vgg11-s0")
    (folder / "runs" / "pcn-vgg11-s0").symlink_to(elsewhere / "pcn-vgg11-s0")
    refused_by_report_and_compare(folder, tmp_path, capsys, "runs/pcn-vgg11-s0", "unreadable run folder",
                                  f"a link to {elsewhere / 'pcn-vgg11-s0'}, outside")


def test_a_run_folder_linked_within_the_results_folder_is_read(tmp_path):
    from bench.report import load_runs
    folder = results_folder(tmp_path / "s")
    (folder / "runs" / "pcn-vgg11-s0").rename(folder / "kept")
    (folder / "runs" / "pcn-vgg11-s0").symlink_to(folder / "kept")
    assert "pcn-vgg11-s0" in set(load_runs(folder)[0]["run_id"])


@pytest.mark.parametrize("record, says", [
    ({"suite": "t", "file": "/etc/passwd"}, 'file "/etc/passwd" is not a suite file under'),
    ({"suite": "t", "file": "configs/suites/../../../x.yaml"}, "is not a suite file under"),
    ({"suite": "../../../x"}, 'suite "../../../x" is not a suite name'),
    ({"suite": "../../../x", "comparators": ["dense"]}, 'suite "../../../x" is not a suite name'),
])
def test_a_suite_record_pointing_outside_the_suite_files_is_refused(tmp_path, capsys, monkeypatch, record, says):
    """suite.json may come from anyone: the suite file it names is read only from the
    repository's configs/suites/, and its suite name only when it is one."""
    import json
    monkeypatch.setenv("WANDB_MODE", "disabled")
    folder = results_folder(tmp_path / "bad")
    (folder / "suite.json").write_text(json.dumps(record))
    refused_by_report_and_compare(folder, tmp_path, capsys, "bad/suite.json", "unreadable suite record", says)


@pytest.mark.parametrize("comparators, says", [("3", "comparators is 3, not a list"),
                                               ("dense_small", 'comparators is "dense_small", not a list'),
                                               ("{a: 1}", "comparators is a mapping, not a list"),
                                               ("[1, 2]", "comparators[0] is 1, not text")])
def test_a_suite_files_comparators_must_be_a_list_of_labels(tmp_path, capsys, monkeypatch, comparators, says):
    import json
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr("bench.report.aggregation.REPO", tmp_path / "repo")
    suites = tmp_path / "repo" / "configs" / "suites"
    suites.mkdir(parents=True)
    (suites / "t.yaml").write_text(f"name: t\ncomparators: {comparators}\n")
    folder = results_folder(tmp_path / "bad")
    (folder / "suite.json").write_text(json.dumps({"suite": "t", "file": "configs/suites/t.yaml"}))
    refused_by_report_and_compare(folder, tmp_path, capsys, str(suites / "t.yaml"), "unreadable suite file", says)


def test_a_diverged_summary_without_its_epoch_and_step_still_gives_a_progress_line(tmp_path):
    import json
    from bench.suite import expand, load_suite
    from tests.test_suite import write_suite
    suite, folder = load_suite(str(write_suite(tmp_path)))
    suite.results_dir = str(tmp_path / "o")
    cell = expand(suite, folder, [])[0]
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "summary.json").write_text(json.dumps({"status": "diverged", "run_id": cell.run_dir.name}))
    assert cell.outcome() == "DIVERGED at epoch ?, step ?"
