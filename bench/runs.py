"""Run directories: naming, atomic writes, resume state and the environment record.

A run lives in `<output_dir>/<method>-<model>-s<seed>-<hash>` where the hash covers
everything that changes what the run computes (see `config.NON_SEMANTIC_KEYS`) and the
fingerprint of its data's content (env.json's `data_fingerprint`), never the data's path.
A finished run is found by what it computed, not by its folder's name: `run_path` also
re-reads every finished run's config.yaml with today's option defaults and hashes it
again, so an option added later with a default that keeps the old behaviour leaves
finished runs found.
It holds `config.yaml`, `env.json`, `history.csv` (one row per epoch), `state.pt`
(everything needed to resume after the last completed epoch, removed when the
run finishes), `checkpoint.pt` (the final model) and `summary.json`, which is
written last and marks the run as finished.

`state.pt` and `checkpoint.pt` hold tensors and plain data only: the model's
architecture as a record (bench.architecture), its state dict, the optimizer's and
the method's state, RNG states as tensors. They are read with
`torch.load(weights_only=True)`, which builds nothing but those, so a results folder
shared by someone else cannot run their code here; the model is rebuilt from the
record and its weights loaded into it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import torch
import yaml

from bench.architecture import ArchitectureError, rebuild
from bench.config import ConfigError, RunConfig, config_hash, to_dict
from bench.datasets import data_fingerprint
from bench.device import cpu_capability, cpu_model
from bench.records import read_env, read_run_config, read_summary

PACKAGES = ("torch", "torchvision", "timm", "torch-pruning", "wandb", "pandas", "numpy")


def run_name(cfg: RunConfig, fingerprint: Optional[str] = None) -> str:
    """The folder name a new run of `cfg` gets (the data's fingerprint is computed, and
    cached, when not given)."""
    fp = fingerprint if fingerprint is not None else data_fingerprint(cfg.data, cfg.model.num_classes)
    return f"{cfg.method.name}-{cfg.model.name}-s{cfg.seed}-{config_hash(cfg, fp)}"


def run_path(cfg: RunConfig) -> Path:
    """Where the run of `cfg` is: its own folder if it exists, else the folder of a
    finished run that computed the same thing (same config under today's defaults, same
    data fingerprint), else the folder a new run gets."""
    out = Path(cfg.output_dir)
    name = run_name(cfg)
    if (out / name).exists():
        return out / name
    return finished_index(out).get(name, out / name)


_INDEX: dict[str, tuple[frozenset, dict[str, Path]]] = {}


def finished_index(out: Path) -> dict[str, Path]:
    """Run name under today's code -> folder, for the finished runs in `out` whose folder
    name differs (recomputed when the folder's listing changes). A run whose config no
    longer loads, or that records no data fingerprint, is left out with a warning."""
    from bench.configure import build_config   # the method registry: imported on first use
    try:
        names = frozenset(p.name for p in out.iterdir() if (p / "summary.json").is_file())
    except OSError:
        return {}
    key = str(out.resolve())
    if key in _INDEX and _INDEX[key][0] == names:
        return _INDEX[key][1]
    index: dict[str, Path] = {}
    for folder in sorted(names):
        path = out / folder
        try:
            fp = read_env(path / "env.json").get("data_fingerprint")
            raw = read_run_config(path / "config.yaml")
            if not fp:
                raise ValueError("its env.json records no data_fingerprint")
            name = run_name(build_config(raw), fp)
        except Exception as e:  # noqa: BLE001 - any unreadable run is skipped, never fatal
            print(f"warning: finished run {path} is not matched to today's configs "
                  f"({type(e).__name__}: {' '.join(str(e).split())[:200]})", file=sys.stderr)
            continue
        if name != folder:
            index[name] = path
    _INDEX[key] = (names, index)
    return index


_UMASK = os.umask(0)   # read the process umask (there is no getter) and put it back
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it over `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the file a plain file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def git_commit(here: Path = Path(__file__).resolve().parent) -> str:
    """The checkout's commit, `-dirty` where a tracked file outside `results/` has changed:
    a suite rewrites its own report under results/ as it goes, which is not a code change."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)results"], cwd=here, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "versions": versions,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env


class RunningElsewhere(ConfigError):
    """The run's lock is held by another process (another suite on the same folder); a
    ConfigError so that `python -m bench run` says so in one line and exits non-zero."""


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on a run while this process trains it, so that a second
    process working through the same results folder (another terminal, another machine
    on a shared disk, a SLURM array) skips it instead of training it twice. The lock is an
    `flock` on `<run>/.lock`: it dies with its process, so a lock file left by a killed
    run never blocks a resume. Raises RunningElsewhere when held."""
    if os.environ.get("RANK", "0") != "0":      # the ranks of one DDP run share rank 0's lock
        yield
        return
    try:
        import fcntl
    except ImportError:                           # no flock (Windows): no cross-process guard
        yield
        return
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunningElsewhere(f"{run.name} is being trained by another process (lock "
                                   f"{run / '.lock'}); skipped here") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{platform.node()} pid {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def locked_elsewhere(run: Path) -> bool:
    """Whether another process holds `run`'s lock right now (see run_lock); creates nothing."""
    if not (run / ".lock").is_file():
        return False
    try:
        with run_lock(run):
            return False
    except RunningElsewhere:
        return True


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    summary_path = property(lambda self: self.path / "summary.json")
    state_path = property(lambda self: self.path / "state.pt")
    history_path = property(lambda self: self.path / "history.csv")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")

    def finished(self) -> bool:
        return self.summary_path.is_file()

    def read_summary(self) -> dict:
        """summary.json, checked (bench.records.read_summary): a damaged or crafted one is a
        one-line error naming it, not a traceback."""
        return read_summary(self.summary_path)

    def retire_summary(self) -> Path:
        """Set a finished run's summary.json aside as summary.before-rerun[-N].json (the
        report reads summary.json only), so that the run trains again in its folder."""
        n = sum(1 for _ in self.path.glob("summary.before-rerun*.json"))
        kept = self.path / (f"summary.before-rerun-{n + 1}.json" if n else "summary.before-rerun.json")
        self.summary_path.replace(kept)
        return kept

    def remove_if_unused(self, made: Path) -> None:
        """Remove the run's folder if it holds nothing but its lock file (a run that stopped
        before it wrote anything), and then its parents up to `made` (the outermost folder the
        failed start created) while they are empty, so that a failed start leaves nothing behind."""
        if not (self.path.is_dir() and {p.name for p in self.path.iterdir()} <= {".lock"}):
            return
        (self.path / ".lock").unlink(missing_ok=True)
        folder = self.path
        while True:
            try:
                folder.rmdir()
            except OSError:                  # not empty (another run's folder appeared in it)
                return
            if folder == made:
                return
            folder = folder.parent

    def prepare(self, cfg: RunConfig, env: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_json(self.path / "env.json", env)

    def write_history(self, rows: list[dict]) -> None:
        with atomic_path(self.history_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    def save_state(self, state: dict) -> None:
        torch_save(state, self.state_path)

    def load_state(self, device: torch.device | str = "cpu", log: Callable[[str], None] = print) -> Optional[dict]:
        """The resume state, or None where there is none or it is refused (an old-format or
        unreadable file: one line says so and the run starts again from epoch 0). Read with
        `weights_only=True` (never unpickles code); the model's and optimizer's tensors go to
        `device`, the RNG states stay on the CPU, where `set_rng_state` needs them."""
        if not self.state_path.is_file():
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:   # noqa: BLE001 - any unreadable file is refused alike
            log(f"{self.state_path}: refused ({_first_line(e)}); starting again from epoch 0")
            return None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            log(f"{self.state_path}: refused (not a format-{STATE_FORMAT} resume state: written by an older "
                f"version); starting again from epoch 0")
            return None
        return {k: (v if k in RNG_KEYS else _to_device(v, device)) for k, v in state.items()}

    def finish(self, summary: dict, checkpoint: Optional[dict]) -> None:
        """Write the final checkpoint (`checkpoint_dict`, or None for none), then summary.json
        (the finished marker), then remove the resume state."""
        if checkpoint is not None:
            torch_save(checkpoint, self.checkpoint_path)
        write_json(self.summary_path, summary)
        if self.state_path.exists():
            self.state_path.unlink()


# Versions of state.pt and checkpoint.pt (1: the model pickled whole, no longer read).
STATE_FORMAT = 2
CHECKPOINT_FORMAT = 2
# Resume-state entries that are RNG states: CPU ByteTensors whatever the run's device.
RNG_KEYS = ("method_generator", "torch_rng", "cuda_rng")


def plain_data(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays (which `weights_only=True` refuses to load) as
    Python numbers and lists; dicts, lists, tuples and tensors kept. A metric or method state
    that happens to hold a numpy float then still resumes instead of being refused."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return type(obj)((k, plain_data(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v) for v in obj)
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _to_device(obj: Any, device: torch.device | str) -> Any:
    """`obj` with every tensor in it (dicts, lists, tuples) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def checkpoint_dict(model: torch.nn.Module, architecture: dict) -> dict:
    """What checkpoint.pt holds: the architecture record and the state dict (CPU tensors)."""
    return {"format": CHECKPOINT_FORMAT, "architecture": architecture,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A run's final model from its `checkpoint.pt`: rebuilt from the architecture record,
    its weights loaded (read with `weights_only=True`). A file of another format, or one
    that is not a checkpoint, is refused with a one-line ConfigError."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 - any unreadable file is refused alike
        raise ConfigError(f"{path}: refused, not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: refused, not a format-{CHECKPOINT_FORMAT} checkpoint (written by an older version?)")
    try:
        model = rebuild(ck["architecture"])
        model.load_state_dict(ck["model_state"])
    except (ArchitectureError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{path}: refused, the architecture and weights do not fit ({_first_line(e)})") from None
    return model.to(device)
