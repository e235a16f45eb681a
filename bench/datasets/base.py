"""The dataset interface: one class per dataset, registered under the name `data.name` takes.

A dataset is a subclass of `Dataset` in its own file under bench/datasets/,
decorated with `@register_dataset("name")`. It states what the harness needs to know
before loading anything (class count, image shape, train/test sizes, the
per-channel normalisation) and reads its images as uint8 arrays; bench/data.py turns
those into a `DeviceData` on the training device. Options of its own go in a nested
dataclass `Config` subclassing `bench.config.DataConfig`, exactly as a method's do.

    prepare()              make the files available (fetch on first use); the harness
                           calls it once, on rank 0, before any rank reads
    read(num_classes)      (train_x, train_y, test_x, test_y): uint8 [N, C, H, W], int64 [N]

`TorchvisionArchive` adds the first-use logic of datasets torchvision can fetch: with
no root given (`data.root` empty and `$BENCH_DATA_ROOT` unset) the root is `./data`,
and a missing copy is fetched there through torchvision, which checks the archive's
md5 (a short socket timeout makes a machine without network fail within seconds, with
a one-line message naming the URL, the root and both fixes). A root that is given is
read as it is (no checksum: mirrors and re-encodings such as a JPEG copy of CIFAR-10
fail torchvision's md5 check) and never downloaded into, unless `data.download=true`
asks for it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from bench.config import ConfigError, DataConfig
from bench.registry import add, lookup

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # train_x, train_y, test_x, test_y
DEFAULT_ROOT = "data"          # where a dataset is fetched when no root is given
DOWNLOAD_SOCKET_TIMEOUT_S = 10  # per connect/read: no network fails in seconds, not minutes


class Dataset:
    """Base class. The class attributes describe the dataset as published; a dataset
    whose shape or size depends on its options overrides them with properties."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""                      # how messages name it, e.g. "CIFAR-10"
    Config: ClassVar[type] = DataConfig
    num_classes: ClassVar[int] = 0
    image_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)   # C, H, W
    train_size: ClassVar[int] = 0                  # images in the full training set
    test_size: ClassVar[int] = 0
    mean: ClassVar[tuple[float, ...]] = ()         # per channel, in [0, 1] units
    std: ClassVar[tuple[float, ...]] = ()

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    def classes(self, requested: int = 0) -> int:
        """The class count the model must output: the dataset's. `requested` is
        model.num_classes; 0 means "the dataset's", another value must equal it."""
        if requested and requested != self.num_classes:
            raise ConfigError(f"model.num_classes={requested} but {self.title or self.name} has "
                              f"{self.num_classes} classes; set model.num_classes={self.num_classes} "
                              f"or leave it at 0 (the dataset's count)")
        return self.num_classes

    def prepare(self) -> None:
        """Make the files available before anything reads them (the default: nothing to do)."""

    def read(self, num_classes: int) -> Arrays:
        """The whole dataset as uint8 images and int64 labels (`num_classes` is what
        `classes()` returned)."""
        raise NotImplementedError

    def fingerprint(self, num_classes: int = 0) -> str:
        """What a run's identity holds instead of the data's path: a content hash of the
        arrays as `read()` gives them (see `array_fingerprint`). The same data at any path
        is the same run; other data (another copy, another encoding) is another run.
        Datasets read from files cache it (`TorchvisionArchive`)."""
        return array_fingerprint(self.read(self.classes(num_classes)))


REGISTRY: dict[str, type[Dataset]] = {}


def register_dataset(name: str) -> Callable[[type[Dataset]], type[Dataset]]:
    """Class decorator: `@register_dataset("cifar100")` makes it available as data.name=cifar100."""
    return lambda cls: add(REGISTRY, name, cls, DataConfig, "dataset")


def get_dataset(name: str) -> type[Dataset]:
    return lookup(REGISTRY, name, "dataset")


def dataset_for(cfg: DataConfig) -> Dataset:
    """The dataset `cfg.name` names, over `cfg` (a bare DataConfig gets the dataset's own
    options at their defaults)."""
    cls = get_dataset(cfg.name)
    if not isinstance(cfg, cls.Config):
        cfg = cls.Config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    return cls(cfg)


def array_fingerprint(arrays: Arrays) -> str:
    """sha256 over each array's dtype, shape and bytes, in order, as 16 hex digits."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def fingerprint_cache_dir() -> Path:
    """Where fingerprints of read-only data folders are cached ($XDG_CACHE_HOME or ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compress-bench"


# --------------------------------------------------------------------------- files fetched by torchvision
def given_root(cfg: DataConfig) -> str:
    """The root the user named (config, else $BENCH_DATA_ROOT); empty when none was."""
    return cfg.root or os.environ.get("BENCH_DATA_ROOT", "")


def resolve_root(cfg: DataConfig) -> Path:
    return Path(given_root(cfg) or DEFAULT_ROOT)


class TorchvisionArchive(Dataset):
    """A dataset read from the folder that torchvision's archive of it extracts to; the
    archive's URL, file name and md5 are those of torchvision's class `torchvision_class`."""

    folder: ClassVar[str] = ""             # e.g. "cifar-10-batches-py"
    torchvision_class: ClassVar[str] = ""  # e.g. "CIFAR10" (torchvision.datasets.CIFAR10)
    archive_mb: ClassVar[int] = 0          # download size, for the message

    def prepare(self) -> None:
        self.ensure_folder()

    def fingerprint(self, num_classes: int = 0) -> str:
        """The content hash of the arrays, cached under `fingerprint_cache_dir()` (keyed by
        the folder's absolute path; never written into the data folder, which may be shared
        or read-only) and trusted while every file keeps its size and modification time."""
        folder = self.ensure_folder()
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        stamp = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
        key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        place = fingerprint_cache_dir() / f"fingerprint-{self.name}-{key}.json"
        try:
            cached = json.loads(place.read_text())
            if cached.get("files") == stamp and isinstance(cached.get("fingerprint"), str):
                return cached["fingerprint"]
        except (OSError, ValueError, AttributeError):
            pass
        value = super().fingerprint(num_classes)
        tmp = place.with_name(f".{place.name}.{os.getpid()}.tmp")
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"folder": str(folder.resolve()), "files": stamp, "fingerprint": value}, indent=1))
            os.replace(tmp, place)
        except OSError:
            pass                     # no cache: computed again next time
        finally:
            tmp.unlink(missing_ok=True)
        return value

    def ensure_folder(self) -> Path:
        """The folder holding the files, downloaded first if no root was given (or
        `data.download=true`) and the folder is missing."""
        root = resolve_root(self.cfg)
        folder = root / self.folder
        if folder.is_dir():
            return folder
        if given_root(self.cfg) and not self.cfg.download:
            raise ConfigError(
                f"no {self.title} at '{folder}': set data.root=<folder holding {self.folder}/> "
                f"(or $BENCH_DATA_ROOT), or data.download=true to fetch it there")
        self.download(root)
        return folder

    def download(self, root: Path) -> None:
        """Fetch and extract the archive into `root` with torchvision, which checks its
        md5 (an archive already there with the right md5 is extracted, not fetched)."""
        import torchvision.datasets
        from torchvision.datasets import utils as tv_utils
        tv = getattr(torchvision.datasets, self.torchvision_class)
        print(f"{self.title} is not in '{root}': fetching {tv.url} ({self.archive_mb} MB, md5-checked); "
              f"to use a copy you have, set data.root or $BENCH_DATA_ROOT", file=sys.stderr, flush=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
        made = not root.exists()
        try:
            tv_utils.download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
        except (OSError, RuntimeError) as e:   # URLError and timeouts are OSErrors; a bad md5 a RuntimeError
            if made and root.is_dir() and not any(root.iterdir()):
                root.rmdir()                   # nothing fetched: leave no empty data folder behind
            reason = " ".join(str(getattr(e, "reason", None) or e).split())
            raise ConfigError(
                f"could not download {self.title} from {tv.url} into '{root}' ({type(e).__name__}: {reason}); "
                f"either set data.root=<folder holding {self.folder}/> (or $BENCH_DATA_ROOT) to a copy you have, "
                f"or put {tv.filename} or {self.folder}/ into '{root}'") from None
        finally:
            socket.setdefaulttimeout(previous)


_FINGERPRINTS: dict[str, str] = {}


def data_fingerprint(cfg: DataConfig, num_classes: int = 0) -> str:
    """The fingerprint of the data `cfg` names (memoised for this process): part of every
    run's identity in place of `data.root`."""
    key = f"{repr(cfg)}|{resolve_root(cfg).resolve()}|{num_classes}"
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = dataset_for(cfg).fingerprint(num_classes)
    return _FINGERPRINTS[key]
