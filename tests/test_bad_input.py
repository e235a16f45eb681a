"""Bad input fails before any work: one line naming the problem and the fix, exit status 2,
nothing written (and, for a dry run, nothing fetched)."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bench.suite as suite_mod
from bench.__main__ import main
from bench.config import ConfigError, load_yaml_text, read_yaml, raw_from_sources
from bench.configure import load_config
from bench.device import resolve_device
from bench.runs import RunDir, write_json
from bench.suite import expand, load_suite, run_suite

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs/smoke.yaml")


def write_suite(tmp_path: Path, **changes) -> Path:
    """A two-row suite of tiny runs on synthetic data (`changes` replace its keys)."""
    suite = {
        "name": "t", "base": SMOKE,
        "overrides": {"data": {"synthetic_train_size": 256, "synthetic_test_size": 64},
                      "model": {"width": 0.125},
                      "train": {"epochs": 1, "batch_size": 16, "throughput_steps": 0}},
        "models": {"vgg11": {"model": {"name": "vgg11"}}},
        "methods": {"dense": {}, "dense_leaky": {"name": "dense", "run": {"model": {"act": "leaky_relu"}}}},
        "seeds": [0],
    }
    suite.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def write_cifar(root: Path) -> Path:
    """A CIFAR-10 folder in torchvision's layout, 4 random images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, 4).tolist()}, f)
    return root


def cli_error(capsys, argv: list[str]) -> str:
    """The one-line error of a command that fails on its input (exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def argparse_error(capsys, parse, argv: list[str]) -> str:
    """The error line of a command line argparse rejects (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- a dry run fetches nothing
def test_a_dry_run_without_the_data_fetches_nothing_and_lists_every_run_as_todo(tmp_path, fake_fetch, capsys):
    calls = fake_fetch(lambda root: pytest.fail("a dry run fetched the data"))
    path = write_suite(tmp_path, overrides={"data": {"name": "cifar10"}, "model": {"width": 0.125},
                                            "train": {"epochs": 1, "batch_size": 16}})
    assert run_suite(str(path), [], dry_run=True) == 0
    out = capsys.readouterr().out
    assert calls == [] and not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    assert "CIFAR-10 is not in 'data' (a run would fetch it" in out
    assert out.count("finished runs cannot be matched") == 1
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")] == ["todo", "todo"]


def test_a_dry_run_with_a_missing_data_root_says_so_and_creates_nothing(tmp_path, capsys):
    root = tmp_path / "nowhere"
    path = write_suite(tmp_path, overrides={"data": {"name": "cifar10", "root": str(root)}, "model": {"width": 0.125},
                                            "train": {"epochs": 1, "batch_size": 16}})
    assert run_suite(str(path), [], dry_run=True, results_dir=str(tmp_path / "out")) == 0
    assert f"no CIFAR-10 at '{root}/cifar-10-batches-py' (a run would stop there" in capsys.readouterr().out
    assert not root.exists() and not (tmp_path / "out").exists()


def test_a_dry_run_with_the_data_matches_the_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = write_cifar(tmp_path / "d")
    path = write_suite(tmp_path, overrides={"data": {"name": "cifar10", "root": str(root)}, "model": {"width": 0.125},
                                            "train": {"epochs": 1, "batch_size": 16}})
    cells = expand(*load_suite(str(path)), ["output_dir=" + str(tmp_path / "out/runs")])
    done = cells[0].run_dir                           # a finished run, found by its data's fingerprint
    done.mkdir(parents=True)
    write_json(RunDir(done).summary_path, {"status": "finished", "run_id": done.name, "test_acc": 0.5})
    assert run_suite(str(path), [], dry_run=True, results_dir=str(tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "2 runs (1 finished)" in out and "cannot be matched" not in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  ")] == ["done", "todo"]


# --------------------------------------------------------------------------- suite entries and names
@pytest.mark.parametrize("changes,message", [
    ({"methods": {"dense": 3}}, "suite.methods.dense: expected a mapping of options or nothing, got 3"),
    ({"models": {"vgg11": 3}}, "suite.models.vgg11: expected a mapping of run-config overrides or nothing, got 3"),
    ({"methods": {"dense": {"run": 3}}}, "suite.methods.dense.run: expected a mapping of run-config overrides"),
    ({"methods": {"dense": {"name": 3}}}, "suite.methods.dense.name: expected a method name, got 3"),
    ({"name": "../../../tmp/x"}, "suite.name: '../../../tmp/x' is not a folder name"),
    ({"name": ".hidden"}, "suite.name: '.hidden' is not a folder name"),
    ({"name": "a/b"}, "suite.name: 'a/b' is not a folder name"),
    ({"seeds": [0, 1, 0]}, "suite.seeds: 0 is listed twice"),
    ({"seeds": []}, "suite.seeds: list at least one seed"),
    ({"seeds": [-1]}, r"suite.seeds\[0\] must be in \[0, 2147483648\), got -1"),
    ({"slurm": {"gpus_per_job": -1}}, "suite.slurm.gpus_per_job must be >= 1, got -1"),
])
def test_a_malformed_suite_fails_when_loaded(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_suite(str(write_suite(tmp_path, **changes)))


def test_a_suite_name_is_a_plain_folder_name(tmp_path):
    for name in ("cifar10-quick", "pcn_v2.1", "A-b_c.d"):
        assert load_suite(str(write_suite(tmp_path, name=name)))[0].name == name


def test_a_bad_suite_entry_is_a_one_line_cli_error(tmp_path, capsys):
    err = cli_error(capsys, ["suite", str(write_suite(tmp_path, methods={"dense": 3})), "--dry-run"])
    assert err == "error: suite.methods.dense: expected a mapping of options or nothing, got 3"


# --------------------------------------------------------------------------- include: and duplicate keys
def test_a_config_that_includes_itself_is_an_error_naming_the_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    (tmp_path / "self.yaml").write_text("include: self.yaml\n")
    with pytest.raises(ConfigError, match=r"config file '.*a.yaml' includes itself via .*b.yaml; remove one"):
        raw_from_sources([str(tmp_path / "a.yaml")], [])
    with pytest.raises(ConfigError, match=r"config file '.*self.yaml' includes itself directly"):
        raw_from_sources([str(tmp_path / "self.yaml")], [])


def test_a_file_included_twice_without_a_loop_is_fine(tmp_path):
    (tmp_path / "common.yaml").write_text("train: {epochs: 3}\n")
    (tmp_path / "x.yaml").write_text("include: common.yaml\ntrain: {lr: 0.1}\n")
    (tmp_path / "top.yaml").write_text("include: [common.yaml, x.yaml]\nseed: 1\n")
    assert raw_from_sources([str(tmp_path / "top.yaml")], []) == {"train": {"epochs": 3, "lr": 0.1}, "seed": 1}


@pytest.mark.parametrize("include", ["3", "[a.yaml, 3]", "{a: 1}", "''"])
def test_include_takes_a_file_name_or_a_list_of_them(tmp_path, include):
    (tmp_path / "c.yaml").write_text(f"include: {include}\n")
    with pytest.raises(ConfigError, match=r"include: expected a file name or a list of file names"):
        raw_from_sources([str(tmp_path / "c.yaml")], [])


def test_a_missing_include_names_the_including_file(tmp_path):
    (tmp_path / "c.yaml").write_text("include: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"config file '.*c.yaml' includes 'nope.yaml', which does not exist"):
        raw_from_sources([str(tmp_path / "c.yaml")], [])


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("train: {epochs: 1}\nseed: 1\ntrain:\n  lr: 0.1\n")
    err = cli_error(capsys, ["run", str(path)])
    assert err == f"error: config file '{path}': key 'train' appears twice (lines 1 and 3); keep one of them"
    path.write_text("train:\n  epochs: 1\n  epochs: 2\n")              # nested, too
    with pytest.raises(ConfigError, match=r"key 'epochs' appears twice \(lines 2 and 3\)"):
        read_yaml(path)
    with pytest.raises(ConfigError, match=r"override 'train=\{a: 1, a: 2\}': key 'a' appears twice"):
        load_config(SMOKE, ["train={a: 1, a: 2}"])


def test_a_suite_file_with_a_key_given_twice_fails(tmp_path):
    path = write_suite(tmp_path)
    path.write_text(path.read_text() + "seeds: [1]\n")
    with pytest.raises(ConfigError, match=r"key 'seeds' appears twice"):
        load_suite(str(path))


def test_the_duplicate_key_loader_stays_a_safe_loader():
    assert load_yaml_text("base: &b {a: 1, b: 2}\nx: {<<: *b, a: 3}\n")["x"] == {"a": 3, "b": 2}   # merge keys
    with pytest.raises(yaml.YAMLError):
        load_yaml_text("x: !!python/object/apply:os.system ['true']\n")


def test_every_committed_config_and_run_config_loads_as_before():
    files = [*sorted((REPO / "configs").rglob("*.yaml")), *sorted((REPO / "results").rglob("*.yaml"))]
    assert len(files) > 20
    for path in files:
        text = path.read_text()
        assert load_yaml_text(text) == yaml.safe_load(text), path


# --------------------------------------------------------------------------- where outputs go
def test_an_output_dir_that_is_a_file_fails_before_the_run(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = cli_error(capsys, ["run", SMOKE, f"output_dir={blocker}"])
    assert err == f"error: output_dir '{blocker}' is a file, not a folder; give a folder (it is created if missing)"
    err = cli_error(capsys, ["run", SMOKE, f"output_dir={blocker}/runs"])
    assert f"error: output_dir '{blocker}/runs': '{blocker}' is a file, not a folder" in err


def test_a_results_dir_that_is_a_file_fails_before_the_estimate(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suite_mod, "cell_costs", lambda cells: pytest.fail("timed the estimate first"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    for extra in ([], ["--dry-run"]):
        err = cli_error(capsys, ["suite", str(write_suite(tmp_path)), "--results-dir", str(blocker), *extra])
        assert err.startswith(f"error: --results-dir '{blocker}' is a file, not a folder")
    assert blocker.read_text() == ""


# --------------------------------------------------------------------------- devices
def test_an_unknown_device_is_a_one_line_error(tmp_path, capsys):
    assert cli_error(capsys, ["run", SMOKE, "device=foo", f"output_dir={tmp_path}/o"]) == \
        "error: device 'foo': use auto, cpu, cuda or cuda:N"
    assert not (tmp_path / "o").exists()
    for name in ("foo", "cuda:x", "mps", ""):
        with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
    line = argparse_error(capsys, main, ["retime", str(tmp_path), "--device", "foo"])
    assert line.endswith("argument --device: 'foo': use auto, cpu, cuda or cuda:N")


def test_a_cuda_index_past_the_last_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def invalid(device):
        raise RuntimeError("CUDA error: invalid device ordinal")
    monkeypatch.setattr(torch.cuda, "set_device", invalid)
    with pytest.raises(ConfigError, match=r"device 'cuda:7': this machine has 2 CUDA device\(s\); "
                                          r"use cuda:0 to cuda:1 or device=auto"):
        resolve_device("cuda:7")


def test_overhead_rejects_an_unknown_device_and_zero_rounds(capsys):
    from bench.overhead import main as overhead
    assert overhead([SMOKE, "device=foo"]) == 2
    assert capsys.readouterr().err.strip() == "error: device 'foo': use auto, cpu, cuda or cuda:N"
    assert argparse_error(capsys, overhead, ["--rounds", "0"]).endswith("argument --rounds: must be >= 1, got 0")


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 63 - 1, 2 ** 31, -1])
def test_a_seed_out_of_range_fails_before_the_run_folder_exists(tmp_path, capsys, seed):
    err = cli_error(capsys, ["run", SMOKE, f"seed={seed}", f"output_dir={tmp_path}/o"])
    assert err == f"error: seed must be in [0, 2147483648), got {seed}"
    assert not (tmp_path / "o").exists()


def test_the_largest_seed_is_accepted():
    assert load_config(SMOKE, [f"seed={2 ** 31 - 1}"]).seed == 2 ** 31 - 1


# --------------------------------------------------------------------------- executors and numbers
def test_slurm_off_a_cluster_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_mod.shutil, "which", lambda cmd: None)
    monkeypatch.setattr(suite_mod, "cell_costs", lambda cells: pytest.fail("timed the estimate first"))
    with pytest.raises(ConfigError, match=r"^no SLURM here \(sbatch and srun not found on PATH\): "
                                          r"use --executor local"):
        run_suite(str(write_suite(tmp_path)), [], executor="slurm", results_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "submitit", None)           # not installed
    with pytest.raises(ConfigError, match=r"--executor debug needs submitit, which is not installed here"):
        run_suite(str(write_suite(tmp_path)), [], executor="debug", results_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"unknown executor 'slrum' \(did you mean 'slurm'\?\)"):
        run_suite(str(write_suite(tmp_path)), [], executor="slrum", results_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,message", [
    (["--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
    (["--jobs", "-3"], "argument --jobs: must be >= 1, got -3"),
    (["--jobs", "two"], "argument --jobs: expected a whole number >= 1, got 'two'"),
    (["--seeds", "abc"], "argument --seeds: expected seeds separated by commas, e.g. 0,1,2; got 'abc'"),
    (["--seeds", str(2 ** 40)], f"argument --seeds: a seed must be in [0, 2147483648), got {2 ** 40}"),
    (["--rows", "dense,"], "argument --rows: expected row labels separated by commas, e.g. dense,pcn; got 'dense,'"),
    (["--gpus-per-job", "-1"], "argument --gpus-per-job: must be >= 1, got -1"),
    (["--timeout-min", "0"], "argument --timeout-min: must be >= 1, got 0"),
    (["--array-parallelism", "0"], "argument --array-parallelism: must be >= 1, got 0"),
])
def test_numeric_suite_options_are_checked_by_the_command_line(tmp_path, capsys, argv, message):
    assert argparse_error(capsys, main, ["suite", str(write_suite(tmp_path)), "--dry-run", *argv]).endswith(message)


@pytest.mark.parametrize("argv,message", [
    (["retime", "x", "--rounds", "0"], "argument --rounds: must be >= 1, got 0"),
    (["retime", "x", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (["retime", "x", "--latency-reps", "0"], "argument --latency-reps: must be >= 1, got 0"),
    (["compare", "a", "b", "--alpha", "1.5"], "argument --alpha: must lie strictly between 0 and 1, got 1.5"),
])
def test_numeric_options_of_other_commands_are_checked(capsys, argv, message):
    assert argparse_error(capsys, main, argv).endswith(message)


def test_run_suite_checks_jobs_and_slurm_values_given_to_it(tmp_path):
    path = str(write_suite(tmp_path))
    with pytest.raises(ConfigError, match=r"--jobs must be >= 1 \(runs at once\), got 0"):
        run_suite(path, [], jobs=0, results_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"suite.slurm.gpus_per_job must be >= 1, got -1"):
        run_suite(path, [], dry_run=True, slurm_overrides={"gpus_per_job": -1}, results_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- damaged data and records
def damaged_cifar(root: Path, change) -> Path:
    """write_cifar's folder with its first training batch replaced by `change(batch)`."""
    write_cifar(root)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(change(batch)))
    return root


@pytest.mark.parametrize("change,problem", [
    (lambda b: [b["data"]], "is not a batch: it needs the keys 'data' and 'labels'"),
    (lambda b: {"data": b["data"]}, "is not a batch: it needs the keys 'data' and 'labels'"),
    (lambda b: {**b, "data": b["data"][:, :100]}, "holds images of shape (4, 100) (uint8), not integers of shape [N, 3072]"),
    (lambda b: {**b, "data": b["data"].astype(np.float64) * 1e9},
     "holds images of shape (4, 3072) (float64), not integers of shape [N, 3072]"),
    (lambda b: {**b, "data": b["data"].astype(np.int64) + 300}, "holds pixel values 300..555, outside 0..255"),
    (lambda b: {**b, "labels": b["labels"][:3]}, "holds 3 labels of type int64 for 4 images"),
    (lambda b: {**b, "labels": [0, 1, 2, 11]}, "holds labels 0..11, outside 0..9"),
    (lambda b: {**b, "labels": [-1, 1, 2, 3]}, "holds labels -1..3, outside 0..9"),
])
def test_a_damaged_cifar_batch_is_a_one_line_error_before_the_run(tmp_path, capsys, monkeypatch, change, problem):
    """Each of these would crash mid-epoch, train on wrapped pixels, or score a test label
    past the last class as a wrong answer."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = damaged_cifar(tmp_path / "d", change)
    err = cli_error(capsys, ["run", SMOKE, "data.name=cifar10", f"data.root={root}", f"output_dir={tmp_path}/o/runs"])
    assert f"data_batch_1' {problem}" in err and err.endswith("fetch the data again (remove the folder) or use "
                                                               "another data.root"), err
    assert not (tmp_path / "o").exists()          # nor the folders the run's lock made above it


def test_a_gpu_run_on_a_machine_without_one_leaves_no_folder(tmp_path, capsys):
    err = cli_error(capsys, ["run", SMOKE, "device=cuda", f"output_dir={tmp_path}/o/deep/runs"])
    assert "cuda" in err
    assert not (tmp_path / "o").exists()


def test_a_crafted_env_json_of_a_finished_run_is_not_read(tmp_path, tiny_overrides):
    """Skipping a finished run compares its recorded commit with this checkout's; its env.json
    is read as a checked record, so a FIFO (which a plain read would wait on forever) or a
    list gives no note instead of a hang or a traceback."""
    import os
    import signal

    from bench.train import train
    cfg = load_config(SMOKE, tiny_overrides + ["train.epochs=1", "save_checkpoint=false"])
    run = Path(cfg.output_dir) / train(cfg, log=lambda _: None)["run_id"]
    signal.alarm(60)                                  # a hang fails the test instead of stalling it
    try:
        for craft in (lambda p: p.write_text("[]"), lambda p: os.mkfifo(p)):
            (run / "env.json").unlink()
            craft(run / "env.json")
            lines = []
            assert train(cfg, log=lines.append)["status"] == "finished"
            assert lines[0].endswith("skipping (--rerun trains it again)"), lines
    finally:
        signal.alarm(0)


@pytest.mark.parametrize("text,problem", [
    ("train:\n  epochs: [1,\nmodel: x\n", "line 4, column 1: expected ',' or ']', but got '<stream end>'"),
    ("x: !!python/object/apply:os.system [\"true\"]\n",
     "line 1, column 4: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_a_config_that_is_not_yaml_is_one_line_naming_the_file_and_place(tmp_path, capsys, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli_error(capsys, ["run", str(path)]) == (
        f"error: config file '{path}' is not valid YAML: {problem}; fix it there (a config is plain data: "
        "mappings, lists, text and numbers; no !!python tags)")
