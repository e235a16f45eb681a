"""Suites: a grid of models x methods x targets x seeds over one shared recipe.

A suite file (configs/suites/*.yaml) is validated like a run config:

    name: cifar10-quick              # W&B group and results/<name>/
    base: ../quick-vgg.yaml          # the shared training recipe (relative to this file)
    overrides: {train: {epochs: 8}}  # applied to every run
    models:                          # label -> run-config overrides
      vgg11: {model: {name: vgg11, width: 0.5}}
    methods:                         # label -> method options; `name` defaults to the label,
      dense: {}                      # `run` holds overrides of other sections,
      dense_leaky: {name: dense, run: {model: {act: leaky_relu}}}
      pcn: {calibration_images: 5000}
      pcns: {control: dense_leaky, run: {model: {act: leaky_relu}}}   # compared with dense_leaky
      dsr: {targets: [0.5, 0.25, 0.1]}   # `targets` replaces the suite's for this method
    targets: [0.5, 0.25]             # method.target_params, for methods that take one
    seeds: [0]
    control: dense                   # the methods' default control (the default: dense)
    comparators: [dense_small, random_filter]   # every row is also compared with these at its target

Each method row of the report is compared with its control, another label of the
suite: `control:` of its entry, else the suite's `control`, else `dense`. Every
row is also compared with the suite's `comparators` (labels of the suite that run at
the same targets, such as a small dense model trained from scratch and random
pruning). Both go to results/<name>/suite.json and into each run's config
(`control`, `comparators`, left out of the run's hash), so the report can be rebuilt
from the runs alone.

Every cell is expanded and validated before anything runs (a typo fails at
once), the data is fetched if it has to be, and the suite prints its cell count
and estimated time before the first run, then one line per finished cell with
the elapsed time and an ETA. Finished cells are skipped, so an interrupted suite
picks up where it stopped; a cell whose loss diverged is recorded as such (its
summary.json says `status: diverged`), the others go on, and a plain re-invocation
keeps it as diverged (`--retry-failed` runs it again). The report is written at
the end. A dry run (`--dry-run`) runs, writes and fetches nothing: where the data is
not on the machine, finished runs cannot be matched (a run's identity holds its data's
fingerprint), so it lists every run as to do and says why.

The scratch curve (e.g. `scratch_curve: {epochs: [m1, m2, ...]}`, multiples of the budget E,
the dense_small row's train.epochs) adds, per model, target and seed, the suite's
`dense_small` row trained for m x E epochs (the learning-rate schedule is a function of
the step and the step count, so it stretches), labelled `scratch_<m>x`: the points the
report's compute-matched comparison (bench/scratch_curve.py) interpolates between. A
multiple whose run is already a cell of the suite is not added again: 1x is dense_small
itself, and a Scratch-B row whose rule gives m x E epochs is the same run (same config
but for its label, which is not hashed), so it is trained once, under that row's label.
Existing cells are untouched: adding the entry changes no other cell's run hash.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import platform
import re
import shutil
import statistics
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import (DEFAULT_CONTROL, SEED_RANGE, ConfigError, RunConfig, _suggest, build_dataclass, check_range,
                          config_hash, merge, opt, raw_from_sources, read_yaml)
from bench.configure import build_config, check_output_dir
from bench.datasets import dataset_for
from bench.datasets.base import TorchvisionArchive, given_root, resolve_root
from bench.metrics.base import fmt_si
from bench.progress import SuiteProgress, hms
from bench.records import SUITE_NAME_PATTERN   # a suite's name is a folder name (results/<name>/) and a W&B group
from bench.runs import RunDir, RunningElsewhere, locked_elsewhere, run_name, run_path, write_json
from methods import get_method


CURVE_BASE = "dense_small"     # the suite row the scratch curve stretches


EXECUTORS = ("local", "slurm", "debug")


@dataclass
class SlurmConfig:
    partition: str = opt("", "SLURM partition (empty: the cluster's default)")
    gpus_per_job: int = opt(1, "GPUs per run; more than 1 trains that run with DDP across them", range="[1, inf)")
    cpus_per_task: int = opt(8, "CPUs per GPU task", range="[1, inf)")
    timeout_min: int = opt(24 * 60, "time limit per run in minutes (an interrupted run resumes when resubmitted)",
                           range="[1, inf)")
    array_parallelism: int = opt(32, "at most this many runs of the suite at once", range="[1, inf)")
    mem_gb: int = opt(32, "memory per job in GB", range="[1, inf)")


@dataclass
class SuiteConfig:
    name: str = opt("", "suite name: W&B group and the folder results/<name>/ (letters, digits, '.', '_', '-')")
    base: str = opt("", "run config holding the shared recipe, relative to the suite file")
    results_dir: str = opt("", "where runs and the report go (default: results/<name>)")
    overrides: dict[str, Any] = opt({}, "run-config overrides applied to every cell")
    models: dict[str, Any] = opt({}, "model label -> run-config overrides")
    methods: dict[str, Any] = opt({}, "method label -> options (name, targets, method options, run: overrides)")
    targets: list[float] = opt([], "parameter targets (fractions of dense) for methods with target_params")
    seeds: list[int] = opt([0], "seeds, each listed once; every cell runs once per seed")
    control: str = opt("", f"label of the method the others are compared with in the report, unless their entry "
                           f"names its own (`control:`); default: {DEFAULT_CONTROL}")
    comparators: list[str] = opt([], "labels of this suite every row is also compared with in the report, at its "
                                     "target (e.g. the small dense model and random pruning)")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    scratch_curve: dict[str, Any] = opt({}, f"{{epochs: [1, 2, 4]}}: the {CURVE_BASE} row also trained for these "
                                            f"multiples of its epochs (labels scratch_<m>x), the report's scratch "
                                            f"curve; runs already in the suite are reused")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("suite: 'name' is required (it names the W&B group and results/<name>/)")
        if not re.fullmatch(SUITE_NAME_PATTERN, self.name):
            raise ConfigError(f"suite.name: {self.name!r} is not a folder name (it names results/<name>/): use "
                              f"letters, digits, '.', '_' and '-', not starting with '.'")
        if not self.models or not self.methods:
            raise ConfigError("suite: 'models' and 'methods' must each list at least one entry")
        self.check_entries()
        if not self.seeds:
            raise ConfigError("suite.seeds: list at least one seed, e.g. [0]")
        for i, seed in enumerate(self.seeds):
            check_range(seed, SEED_RANGE, f"suite.seeds[{i}]")
        repeated = [seed for seed, n in Counter(self.seeds).items() if n > 1]
        if repeated:
            raise ConfigError(f"suite.seeds: {repeated[0]} is listed twice; list each seed once (every cell runs "
                              f"once per seed)")
        curve_multiples(self)                       # a malformed scratch_curve fails when the suite is loaded
        declared = {"suite.control": self.control} if self.control else {}
        declared.update({f"suite.methods.{label}.control": (entry or {})["control"]
                         for label, entry in self.methods.items() if "control" in (entry or {})})
        declared.update({f"suite.comparators[{i}]": c for i, c in enumerate(self.comparators)})
        for key, control in declared.items():
            if not isinstance(control, str) or control not in self.methods:
                raise ConfigError(f"{key}: '{control}' is not a method label of this suite"
                                  f"{_suggest(str(control), self.methods)}; labels: {', '.join(self.methods)}")

    def check_entries(self) -> None:
        """Every entry of `models` and `methods` is a mapping (or empty), as are a method's
        `run:` overrides, and a method's `name` is a string: anything else fails here, with
        the key, rather than deep in the grid's expansion."""
        for label, entry in self.models.items():
            if entry is not None and not isinstance(entry, dict):
                raise ConfigError(f"suite.models.{label}: expected a mapping of run-config overrides or nothing, "
                                  f"got {entry!r}")
        for label, entry in self.methods.items():
            if entry is None:
                continue
            if not isinstance(entry, dict):
                raise ConfigError(f"suite.methods.{label}: expected a mapping of options or nothing, got {entry!r}")
            if entry.get("run") is not None and not isinstance(entry["run"], dict):
                raise ConfigError(f"suite.methods.{label}.run: expected a mapping of run-config overrides or "
                                  f"nothing, got {entry['run']!r}")
            if "name" in entry and not isinstance(entry["name"], str):
                raise ConfigError(f"suite.methods.{label}.name: expected a method name, got {entry['name']!r}")

    def controls(self) -> dict[str, str]:
        """Method label -> the label of its control: what the report compares its row with."""
        return {label: (entry or {}).get("control") or self.control or DEFAULT_CONTROL
                for label, entry in self.methods.items()}



def curve_label(multiple: int) -> str:
    return f"scratch_{multiple}x"


def curve_multiples(suite: SuiteConfig) -> dict[str, int]:
    """Label -> epoch multiple of the scratch curve's added rows (1x is dense_small's own
    row, so it adds none); empty without `scratch_curve`. A malformed entry is a ConfigError."""
    entry = suite.scratch_curve
    if not entry:
        return {}
    if not isinstance(entry, dict) or set(entry) != {"epochs"}:
        raise ConfigError(f"suite.scratch_curve: expected {{epochs: [1, 2, 4]}} (multiples of the budget), got {entry!r}")
    multiples = entry["epochs"]
    if (not isinstance(multiples, list) or not multiples
            or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in multiples)):
        raise ConfigError(f"suite.scratch_curve.epochs: expected a list of whole multiples >= 1 of the suite's "
                          f"epochs, e.g. [1, 2, 4]; got {multiples!r}")
    if CURVE_BASE not in suite.methods:
        raise ConfigError(f"suite.scratch_curve: the curve stretches the suite's '{CURVE_BASE}' row, which this "
                          f"suite does not have; methods: {', '.join(suite.methods)}")
    return {curve_label(m): m for m in dict.fromkeys(multiples) if m != 1}


def run_identity(cfg: RunConfig) -> str:
    """What a run computes, as far as the config tells (its hash without the data's
    fingerprint, which every cell of one suite shares): two cells with the same identity
    are one run."""
    return config_hash(cfg, "")


def add_scratch_curve(suite: SuiteConfig, cells: list[Cell]) -> list[Cell]:
    """`cells` with the scratch curve's cells inserted after each dense_small cell: the
    same cell at m x its train.epochs for every multiple m of `scratch_curve`, labelled
    scratch_<m>x, unless a cell of the suite already is that run (dense_small itself at
    1x; a Scratch-B row whose rule gives m x E), which then stands for the point."""
    multiples = curve_multiples(suite)
    if not multiples:
        return cells
    have = {run_identity(c.cfg) for c in cells}
    out = []
    for c in cells:
        out.append(c)
        if c.label != CURVE_BASE:
            continue
        for label, m in multiples.items():
            raw = merge(c.raw, {"train": {"epochs": m * c.cfg.train.epochs}, "label": label})
            try:
                cfg = build_config(raw)
            except ConfigError as e:
                raise ConfigError(f"suite cell {label}/{c.model}/target={c.target}/seed={c.seed}: {e}") from None
            if (ident := run_identity(cfg)) not in have:
                have.add(ident)
                out.append(Cell(label, c.model, c.target, c.seed, cfg, raw))
    return out


def run_order(cells: list[Cell]) -> list[Cell]:
    """The order in which cells train: seed-major, and within a seed every cell at its
    shortest budget before the longer ones (the scratch curve's 2x and 4x, Scratch-B), so
    that a suite stopped part-way already holds every row once. Grid order otherwise."""
    return sorted(cells, key=lambda c: (c.seed, c.cfg.train.epochs))


@dataclass
class Cell:
    label: str
    model: str
    target: float | None
    seed: int
    cfg: RunConfig
    raw: dict          # the merged raw config: what a worker process rebuilds `cfg` from

    @property
    def run_dir(self) -> Path:
        return run_path(self.cfg)

    @property
    def name(self) -> str:
        return f"{self.label} {self.model} target={self.target} seed={self.seed}"

    def status(self) -> str:
        """todo (no summary.json yet), running (another process holds its lock), or the
        summary's status: finished or diverged."""
        rd = RunDir(self.run_dir)
        if rd.finished():
            return rd.read_summary().get("status", "finished")
        return "running" if locked_elsewhere(rd.path) else "todo"

    def outcome(self) -> str:
        """What a progress line says about this cell once it has run."""
        rd = RunDir(self.run_dir)
        if not rd.finished():
            if locked_elsewhere(rd.path):
                return "running elsewhere (another process holds its lock): skipped here"
            return "FAILED (see error.txt in its run directory)"
        s = rd.read_summary()
        if s.get("status") == "diverged":
            return f"DIVERGED at epoch {s.get('diverged_epoch', '?')}, step {s.get('diverged_step', '?')}"
        return f"finished, test acc {s['test_acc']:.4f}"


def load_suite(path: str) -> tuple[SuiteConfig, Path]:
    raw = read_yaml(path)
    suite = build_dataclass(SuiteConfig, raw, "suite.")
    return suite, Path(path).resolve().parent


def expand(suite: SuiteConfig, folder: Path, cli_overrides: list[str]) -> list[Cell]:
    """Every cell of the grid as a validated RunConfig, in run order (seed-major so a
    partial suite already covers every method once)."""
    base = raw_from_sources([str(folder / suite.base)] if suite.base else [], [])
    results = suite.results_dir or f"results/{suite.name}"
    controls = suite.controls()
    cells = []
    for seed in suite.seeds:
        for model_label, model_raw in suite.models.items():
            for label, entry in suite.methods.items():
                entry = dict(entry or {})
                name = entry.pop("name", label)
                entry.pop("control", None)                  # the report's business, see controls()
                run_raw = entry.pop("run", {}) or {}
                own_targets = entry.pop("targets", None)
                method_cls = get_method(name)
                fields = {f.name for f in dataclasses.fields(method_cls.Config)}
                if own_targets is not None and ("target_params" not in fields or not isinstance(own_targets, list)):
                    raise ConfigError(f"suite.methods.{label}.targets: must be a list of fractions, for a method "
                                      f"with target_params ({name} has {'one' if 'target_params' in fields else 'none'})")
                targets = own_targets if own_targets is not None else suite.targets
                targets = targets if ("target_params" in fields and targets) else [None]
                for target in targets:
                    method_raw = {**entry, "name": name}
                    if target is not None:
                        method_raw["target_params"] = target
                    raw = merge(base, suite.overrides)
                    raw = merge(raw, model_raw or {})
                    raw = merge(raw, run_raw)
                    raw = merge(raw, {"method": method_raw, "seed": seed, "label": label,
                                      "output_dir": f"{results}/runs", "wandb": {"group": suite.name},
                                      "control": controls[label], "comparators": list(suite.comparators)})
                    raw = merge(raw, raw_from_sources([], cli_overrides))
                    try:
                        cfg = build_config(raw)
                    except ConfigError as e:
                        raise ConfigError(f"suite cell {label}/{model_label}/target={target}/seed={seed}: {e}") from None
                    cells.append(Cell(label, model_label, target, seed, cfg, raw))
    return add_scratch_curve(suite, cells)


def estimate(cell: Cell) -> tuple[float, float]:
    """(training MACs, seconds) of a cell as if it trained the dense model all along (an
    upper bound for methods that shrink it): MACs are 3 x forward MACs x images seen, at the
    image shape and training-set size the dataset states; seconds come from the median of
    five training steps of the dense model at the run's batch size on this machine (a median,
    since one step is short and a busy machine makes single steps spike)."""
    import torch
    from bench.device import Runtime, resolve_device
    from bench.metrics import Clock, count_macs
    from bench.models import build_model
    from bench.optim import make_optimizer
    from bench.train import make_step
    data = dataset_for(cell.cfg.data)
    device = resolve_device(cell.cfg.device)
    rt = Runtime(device, cell.cfg.train)
    model = rt.place(build_model(cell.cfg.model))
    macs, _ = count_macs(model, torch.zeros(1, *data.image_shape, device=device))
    bs = cell.cfg.train.batch_size
    x = rt.prepare(torch.randn(bs, *data.image_shape, device=device))
    y = torch.zeros(bs, dtype=torch.long, device=device)
    step = make_step(model, make_optimizer(model, cell.cfg.train), torch.nn.CrossEntropyLoss(), rt)
    for _ in range(2):      # warm-up: the first steps pay for kernel selection
        step(x, y)
    clock = Clock(device)
    times = []
    for _ in range(5):
        t0 = clock()
        step(x, y)
        times.append(clock() - t0)
    img_s = bs / statistics.median(times)
    subset = cell.cfg.data.train_subset
    n = min(subset, data.train_size) if subset else data.train_size
    images = n * cell.cfg.train.epochs
    return 3.0 * macs * images, images / img_s


def cell_costs(cells: list[Cell]) -> list[tuple[float, float]]:
    """estimate() of every cell, timed once per distinct model, data and step (cells that
    differ only in their epochs scale one timing, so that their estimates are consistent)."""
    per_epoch: dict[tuple, tuple[float, float]] = {}
    out = []
    for c in cells:
        key = (c.cfg.model.name, c.cfg.model.width, c.cfg.model.act, c.cfg.model.num_classes, repr(c.cfg.data),
               c.cfg.train.batch_size, c.cfg.train.precision, c.cfg.train.memory_format, c.cfg.train.auto_resolves_to)
        if key not in per_epoch:
            macs, seconds = estimate(c)
            per_epoch[key] = (macs / c.cfg.train.epochs, seconds / c.cfg.train.epochs)
        macs, seconds = per_epoch[key]
        out.append((macs * c.cfg.train.epochs, seconds * c.cfg.train.epochs))
    return out


def missing_data(cells: list[Cell]) -> list[str]:
    """What the cells read that is not on this machine, one phrase per data set, found
    without fetching anything (empty when every data set is there). A dataset that
    torchvision fetches is there when its folder is; the others (synthetic) always are."""
    missing = []
    for data_cfg in {repr(c.cfg.data): c.cfg.data for c in cells}.values():
        ds = dataset_for(data_cfg)
        if not isinstance(ds, TorchvisionArchive):
            continue
        folder = resolve_root(ds.cfg) / ds.folder
        if folder.is_dir():
            continue
        if given_root(ds.cfg) and not ds.cfg.download:
            missing.append(f"no {ds.title} at '{folder}' (a run would stop there: set data.root or "
                           f"$BENCH_DATA_ROOT to the folder holding {ds.folder}/)")
        else:
            missing.append(f"{ds.title} is not in '{resolve_root(ds.cfg)}' (a run would fetch it, "
                           f"{ds.archive_mb} MB)")
    return missing


def check_executor(executor: str, dry_run: bool) -> None:
    """ConfigError, before anything is written, for an executor that cannot work here:
    an unknown one, submitit missing, or (for SLURM, unless this is a dry run, which
    submits nothing) no SLURM commands on this machine."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'{_suggest(executor, EXECUTORS)}; use {', '.join(EXECUTORS)}")
    if executor == "local" or dry_run:
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(f"--executor {executor} needs submitit, which is not installed here: "
                          f"pip install submitit, or use --executor local") from None
    if executor == "slurm":
        absent = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
        if absent:
            raise ConfigError(f"no SLURM here ({' and '.join(absent)} not found on PATH): use --executor local, "
                              f"or submit from a machine of the SLURM cluster")


def ensure_data(cells: list[Cell]) -> None:
    """Fetch (or fail on) every data set the cells read, before the first run starts
    (and once, not in each of several worker processes)."""
    for data_cfg in {repr(c.cfg.data): c.cfg.data for c in cells}.values():
        dataset_for(data_cfg).prepare()


def run_cell(raw: dict) -> str:
    """Run one cell in this process (a worker, a SLURM task or the suite itself).

    Under submitit with several tasks (gpus_per_job > 1), the tasks form one DDP run."""
    from bench.train import train
    try:
        import submitit
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()
    except (ImportError, RuntimeError):
        pass  # not inside a submitit job
    cfg = build_config(raw)
    train(cfg)
    return run_name(cfg)


def _report_done(progress: SuiteProgress, cells: list[Cell], i: int) -> None:
    """The progress line of a finished cell: its outcome, the elapsed time and the ETA."""
    timing = progress.finish(i)
    print(f"[done {progress.done}/{len(cells)}] {cells[i].name}: {cells[i].outcome()} | {timing}", flush=True)


def _worker_init(threads: int) -> None:
    """Worker-process initializer: several runs share one terminal, so no bars; and the
    parent's CPU threads are split between the workers. `jobs` processes that each take
    every core oversubscribe the CPU, and OpenMP's spinning threads then make every run
    several times slower (measured on 2 cores beside another 2-thread training process:
    a tiny VGG run took 27 s with 2 threads, 2.6 s with 1)."""
    import os
    os.environ["BENCH_PROGRESS"] = "plain"
    import torch
    torch.set_num_threads(threads)


def _run_local(cells: list[Cell], jobs: int, progress: SuiteProgress) -> list[tuple[Cell, str]]:
    """Cells in this process (jobs=1) or in `jobs` worker processes at once."""
    failed = []
    if jobs <= 1:
        for i, c in enumerate(cells):
            print(f"[{i + 1}/{len(cells)}] {c.name}", flush=True)
            try:
                run_cell(c.raw)
            except RunningElsewhere:
                pass          # another suite process took it after this one planned it
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - one failed cell must not stop the others
                failed.append((c, traceback.format_exc()))
            _report_done(progress, cells, i)
        return failed
    import torch
    threads = max(1, torch.get_num_threads() // jobs)
    print(f"{jobs} runs at once, {threads} CPU thread(s) each", flush=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell, c.raw): i for i, c in enumerate(cells)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                fut.result()
            except RunningElsewhere:
                pass
            except Exception:  # noqa: BLE001
                failed.append((cells[i], traceback.format_exc()))
            _report_done(progress, cells, i)
    return failed


def _run_submitit(cells: list[Cell], kind: str, slurm: SlurmConfig, folder: Path, wait: bool,
                  progress: SuiteProgress) -> list[tuple[Cell, str]]:
    """One job per cell through submitit: a SLURM job array, or submitit's in-process
    debug executor (kind="debug")."""
    import submitit
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "name": "bench"}
    if kind == "slurm":
        params.update(slurm_partition=slurm.partition or None, gpus_per_node=slurm.gpus_per_job,
                      tasks_per_node=slurm.gpus_per_job, cpus_per_task=slurm.cpus_per_task, nodes=1,
                      mem_gb=slurm.mem_gb, slurm_array_parallelism=slurm.array_parallelism)
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    jobs = executor.map_array(run_cell, [c.raw for c in cells])
    print(f"submitted {len(jobs)} job(s) to {kind}" + (f": {jobs[0].job_id.split('_')[0]}" if jobs else ""))
    if not wait:
        return []
    failed = []
    for i, (c, job) in enumerate(zip(cells, jobs)):
        try:
            job.result()
        except Exception:  # noqa: BLE001
            failed.append((c, traceback.format_exc()))
        _report_done(progress, cells, i)
    return failed


def run_suite(path: str, cli_overrides: list[str], dry_run: bool = False, results_dir: str | None = None,
              executor: str = "local", jobs: int = 1, slurm_overrides: dict | None = None, wait: bool = True,
              retry_failed: bool = False, seeds: list[int] | None = None, rows: list[str] | None = None) -> int:
    suite, folder = load_suite(path)
    check_executor(executor, dry_run)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1 (runs at once), got {jobs}")
    if results_dir:
        suite.results_dir = results_dir
    if seeds is not None:        # a part of the grid: e.g. every row at seed 0 of several suites first
        unknown = sorted(set(seeds) - set(suite.seeds))
        if unknown:
            raise ConfigError(f"--seeds {','.join(map(str, unknown))}: not among this suite's seeds "
                              f"({', '.join(map(str, suite.seeds))})")
    given = {key: value for key, value in (slurm_overrides or {}).items() if value is not None}
    if given:                  # checked as the suite file's slurm: section is
        suite.slurm = build_dataclass(SlurmConfig, {**dataclasses.asdict(suite.slurm), **given}, "suite.slurm.")
    grid = expand(suite, folder, cli_overrides)   # the whole suite: the report's "partial" line counts it
    cells = select_rows([c for c in grid if seeds is None or c.seed in seeds], rows)
    results = Path(cells[0].cfg.output_dir).parent
    where = "--results-dir" if results_dir else "suite.results_dir" if suite.results_dir else "the results folder"
    for out in dict.fromkeys([results, *(Path(c.cfg.output_dir) for c in cells)]):
        check_output_dir(out, where, writable=not dry_run)
    # A run's identity holds its data's fingerprint, so finding the finished runs reads the
    # data. A dry run fetches nothing: without the data it lists every run as to do.
    absent = missing_data(cells) if dry_run else []
    status = ["todo"] * len(cells) if absent else [c.status() for c in cells]
    if retry_failed and not dry_run:
        for c, st in zip(cells, status):
            if st == "diverged":     # kept beside the run, out of the way of a fresh attempt
                RunDir(c.run_dir).summary_path.replace(c.run_dir / "summary.diverged.json")
        status = ["todo" if st == "diverged" else st for st in status]
    todo = run_order([c for c, st in zip(cells, status) if st == "todo"])
    n_diverged, n_running = status.count("diverged"), status.count("running")
    if absent:
        print(f"suite {suite.name}: {len(cells)} runs (finished ones unknown: the data is not here) -> {results}\n"
              f"note: {'; '.join(absent)}; a run's identity holds its data's fingerprint, so without the data "
              f"finished runs cannot be matched: every run is listed as todo", flush=True)
    else:
        print(f"suite {suite.name}: {len(cells)} runs ({status.count('finished')} finished"
              + (f", {n_running} running elsewhere" if n_running else "")
              + (f", {n_diverged} diverged: --retry-failed re-runs them" if n_diverged else "") + f") -> {results}",
              flush=True)
    # The pin reads the whole suite's finished runs: a selection (--seeds, --rows) with
    # none finished of its own still trains at the precision of those outside it.
    pin_auto_precision([c for c, st in zip(cells, status) if st == "todo"],
                       [] if absent else [c for c in grid if c.status() == "finished"])
    if dry_run:
        return _dry_run(cells, status)

    from bench.report import write_report
    ensure_data(todo)
    estimates = _announce(todo, executor)
    write_json(results / "suite.json", {
        "suite": suite.name, "file": str(path), "command": "python -m bench " + " ".join(sys.argv[1:]),
        "overrides": cli_overrides, "machine": platform.platform(), "executor": executor,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cells": len(grid), "controls": suite.controls(),
        "comparators": list(suite.comparators)})
    progress = SuiteProgress(estimates)
    if not todo:
        failed = []
    elif executor == "local":
        failed = _run_local(todo, jobs, progress)
    else:                      # slurm or debug (check_executor)
        failed = _run_submitit(todo, executor, suite.slurm, results / "submitit", wait, progress)
        if not wait:
            print(f"not waiting: build the report when the jobs are done with `python -m bench report {results}`")
            return 0
    for c, tb in failed:
        c.run_dir.mkdir(parents=True, exist_ok=True)
        (c.run_dir / "error.txt").write_text(tb)
        print(tb, file=sys.stderr)
    write_report(results, suite_name=suite.name)
    diverged = [c for c in cells if c.status() == "diverged"]
    if diverged:
        print(f"{len(diverged)} run(s) diverged (non-finite loss; listed as diverged in the report): "
              + ", ".join(c.name for c in diverged)
              + "; lower train.lr, or re-run them as they are with --retry-failed", file=sys.stderr)
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{c.label}/{c.model}/{c.target}/s{c.seed}" for c, _ in failed)
              + " (see error.txt in their run directories)", file=sys.stderr)
    return 1 if failed or diverged else 0


def select_rows(cells: list[Cell], rows: list[str] | None) -> list[Cell]:
    """The cells of these row labels only (all when rows is None). Cells are selected after
    the grid is built, so a selected run is the same run, with the same identity, controls
    and comparators, as in the whole suite: finished ones are reused either way."""
    if rows is None:
        return cells
    labels = list(dict.fromkeys(c.label for c in cells))
    unknown = [r for r in rows if r not in labels]
    if unknown:
        raise ConfigError(f"--rows {','.join(unknown)}: not a row label of this suite; labels: {', '.join(labels)}")
    return [c for c in cells if c.label in rows]


def pin_auto_precision(todo: list[Cell], finished: list[Cell]) -> None:
    """A suite keeps one precision. Where its cells leave precision and memory format to
    the machine (`auto`) and the suite's `finished` runs (the whole grid's, whatever part
    of it this call runs) agree on what that gave, the cells in `todo` are pinned to it
    (train.auto_resolves_to), so that a suite finished on another machine (say one with
    native bf16), or a part of it run with --seeds or --rows, still compares like with like."""
    def leaves_to_machine(c: Cell) -> bool:
        return "auto" in (c.cfg.train.precision, c.cfg.train.memory_format) and not c.cfg.train.auto_resolves_to
    summaries = [RunDir(c.run_dir).read_summary() for c in finished if leaves_to_machine(c)]
    seen = Counter(f"{s['precision']}/{s.get('memory_format', 'contiguous')}" for s in summaries if "precision" in s)
    if len(seen) > 1:
        print(f"warning: this suite's finished runs mix precisions ({', '.join(f'{n} in {k}' for k, n in seen.items())}); "
              f"their timings and accuracies are not like for like: pin the runs to do with "
              f"train.auto_resolves_to=PRECISION/FORMAT", file=sys.stderr, flush=True)
    if len(seen) != 1:
        return
    (pin, n), = seen.items()
    todo = [c for c in todo if leaves_to_machine(c)]
    for c in todo:
        c.raw = merge(c.raw, {"train": {"auto_resolves_to": pin}})
        c.cfg.train.auto_resolves_to = pin
    if todo:
        print(f"precision {pin} for the {len(todo)} run(s) to do, as in this suite's {n} finished run(s) "
              f"(train.auto_resolves_to={pin}; give it yourself to choose otherwise)", flush=True)


def _announce(todo: list[Cell], executor: str) -> list[float]:
    """Print the number of runs to do and their estimated time here; return the
    per-cell estimates (seconds) the progress lines scale their ETA with."""
    if not todo:
        return []
    if executor == "slurm":
        print(f"{len(todo)} run(s) to submit (for their estimated time, run --dry-run on a compute node)", flush=True)
        return [1.0] * len(todo)
    print(f"estimating the time of {len(todo)} run(s) from a few timed training steps ...", flush=True)
    seconds = [s for _, s in cell_costs(todo)]
    print(f"{len(todo)} run(s) to do, estimated ~{hms(sum(seconds))} here (dense-equivalent upper bound; "
          f"methods' own overheads not included; --dry-run lists them)", flush=True)
    return seconds


def _dry_run(cells: list[Cell], statuses: list[str]) -> int:
    """List the cells in run order with their status (`statuses`, in the order of `cells`)
    and estimated cost; run and write nothing."""
    status_of = {id(c): st for c, st in zip(cells, statuses)}
    cells = run_order(cells)
    total_macs = total_s = 0.0
    for c, (macs, seconds) in zip(cells, cell_costs(cells)):
        status = status_of[id(c)]
        if status == "todo":
            total_macs, total_s = total_macs + macs, total_s + seconds
        target = "-" if c.target is None else f"{c.target:g}"
        print(f"  {'done' if status == 'finished' else status:8s}  {c.label:16s} {c.model:12s} target {target:5s} "
              f"seed {c.seed}  {c.cfg.train.epochs} ep  {fmt_si(macs)}MAC  ~{seconds / 60:.1f} min")
    print(f"estimated cost of the remaining runs: {fmt_si(total_macs)}MAC of training, ~{total_s / 60:.0f} min "
          f"here (dense-equivalent upper bound from timed steps; methods' own overheads not included)")
    return 0
