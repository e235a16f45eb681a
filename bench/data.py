"""Datasets held whole on the training device, augmented there in batches.

CIFAR-10 comes from `<root>/cifar-10-batches-py/`. With no root given (`data.root`
empty and `$BENCH_DATA_ROOT` unset) the root is `./data`, and a missing copy is
fetched there on first use through torchvision, which checks the archive's md5
(a short socket timeout makes a machine without network fail within seconds, with
a one-line message naming the URL, the root and both fixes). A root that is given
is read as it is (no checksum: mirrors and re-encodings such as
../shared/data/cifar10 fail torchvision's md5 check) and never downloaded into,
unless `data.download=true` asks for it. The whole set becomes one uint8 tensor
on the device; random crop (4-pixel zero padding) and horizontal flip run on
batches with tensor indexing, so there is no per-image Python and no worker
process. `synthetic` makes seeded, learnable images for tests.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench import dist
from bench.config import ConfigError, DataConfig

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILE = "test_batch"
# Per-channel mean and std of the CIFAR-10 training images (the usual constants).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CROP_PADDING_PX = 4  # He et al. 2016 sec. 4.2: pad 4 pixels, random 32x32 crop
DEFAULT_ROOT = "data"          # where CIFAR-10 is fetched when no root is given
DOWNLOAD_SOCKET_TIMEOUT_S = 10  # per connect/read: no network fails in seconds, not minutes


@dataclass
class DeviceData:
    """A dataset as uint8 tensors on one device, with batch-wise augmentation."""
    train_x: torch.Tensor   # [N, C, H, W] uint8
    train_y: torch.Tensor   # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor      # [1, C, 1, 1] float32, in [0, 1] units
    std: torch.Tensor
    num_classes: int
    name: str

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float() / 255.0 - self.mean) / self.std

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.train_x) // batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator, augment: bool = True
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented, normalised batches (last partial batch dropped)."""
        n = len(self.train_x)
        perm = torch.randperm(n, generator=generator, device="cpu").to(self.device)
        bs = min(batch_size, n)
        for i in range(self.steps_per_epoch(batch_size)):
            idx = perm[i * bs:(i + 1) * bs]
            x = self.train_x[idx]
            if augment:
                x = random_crop_flip(x, generator)
            yield self.normalize(x), self.train_y[idx]

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.test_x), batch_size):
            yield self.normalize(self.test_x[i:i + batch_size]), self.test_y[i:i + batch_size]

    def calibration_indices(self, n_images: int, seed: int, heldout: bool = False) -> torch.Tensor:
        """A fixed random subset of the training set; `heldout` takes it from the other end
        of the same permutation, so the two are disjoint while 2n <= N."""
        n = len(self.train_x)
        if n_images > n:
            raise ConfigError(f"asked for {n_images} calibration images but the training set has {n}; "
                              f"lower the method's calibration size or raise data.train_subset")
        g = torch.Generator().manual_seed(seed + 7919)
        perm = torch.randperm(n, generator=g)
        idx = perm[n - n_images:] if heldout else perm[:n_images]
        return idx.to(self.device)

    def calibration_batches(self, n_images: int, batch_size: int = 500, heldout: bool = False,
                            seed: int = 0) -> Iterator[torch.Tensor]:
        """Unaugmented, normalised training images for activation statistics."""
        idx = self.calibration_indices(n_images, seed, heldout)
        for i in range(0, len(idx), batch_size):
            yield self.normalize(self.train_x[idx[i:i + batch_size]])


def random_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once."""
    b, c, h, w = x.shape
    p = CROP_PADDING_PX
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]                    # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]                    # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]       # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- loaders
def given_root(cfg: DataConfig) -> str:
    """The root the user named (config, else $BENCH_DATA_ROOT); empty when none was."""
    return cfg.root or os.environ.get("BENCH_DATA_ROOT", "")


def resolve_root(cfg: DataConfig) -> Path:
    return Path(given_root(cfg) or DEFAULT_ROOT)


def ensure_cifar10(cfg: DataConfig) -> Path:
    """The folder holding the CIFAR-10 batches, downloaded first if no root was given
    (or `data.download=true`) and the folder is missing."""
    root = resolve_root(cfg)
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        return folder
    if given_root(cfg) and not cfg.download:
        raise ConfigError(
            f"no CIFAR-10 at '{folder}': set data.root=<folder holding {CIFAR10_FOLDER}/> "
            f"(or $BENCH_DATA_ROOT), or data.download=true to fetch it there")
    download_cifar10(root)
    return folder


def download_cifar10(root: Path) -> None:
    """Fetch and extract the CIFAR-10 archive into `root` with torchvision, which checks
    its md5 (an archive already there with the right md5 is extracted, not fetched)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets import utils as tv_utils
    print(f"CIFAR-10 is not in '{root}': fetching {CIFAR10.url} (163 MB, md5-checked); "
          f"to use a copy you have, set data.root or $BENCH_DATA_ROOT", file=sys.stderr, flush=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        tv_utils.download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename,
                                              md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as e:   # URLError and timeouts are OSErrors; a bad md5 a RuntimeError
        reason = " ".join(str(getattr(e, "reason", None) or e).split())
        raise ConfigError(
            f"could not download CIFAR-10 from {CIFAR10.url} into '{root}' ({type(e).__name__}: {reason}); "
            f"either set data.root=<folder holding {CIFAR10_FOLDER}/> (or $BENCH_DATA_ROOT) to a copy you have, "
            f"or put {CIFAR10.filename} or {CIFAR10_FOLDER}/ into '{root}'") from None
    finally:
        socket.setdefaulttimeout(previous)


def _read_cifar_batches(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"CIFAR-10 file '{path}' is missing; the folder must hold "
                              f"{', '.join(CIFAR10_TRAIN_FILES + [CIFAR10_TEST_FILE])}")
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar10(cfg: DataConfig) -> tuple[np.ndarray, ...]:
    # Under torchrun, rank 0 fetches (if needed) while the others wait, then all read.
    folder = ensure_cifar10(cfg) if dist.is_main() else None
    dist.barrier()
    folder = folder or ensure_cifar10(cfg)
    train_x, train_y = _read_cifar_batches(folder, CIFAR10_TRAIN_FILES)
    test_x, test_y = _read_cifar_batches(folder, [CIFAR10_TEST_FILE])
    return train_x, train_y, test_x, test_y


def make_synthetic(cfg: DataConfig, num_classes: int, seed: int = 1234) -> tuple[np.ndarray, ...]:
    """Seeded random images with learnable labels: each class has a smooth random
    template; an image is its class template plus noise, so a small CNN separates
    the classes within an epoch or two."""
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    coarse = rng.normal(0, 1, size=(num_classes, 3, 4, 4))
    templates = np.kron(coarse, np.ones((1, 1, s // 4, s // 4)))            # blocky, smooth-ish
    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n)
        x = templates[y] + rng.normal(0, 1.0, size=(n, 3, s, s))
        x = np.clip(128 + 40 * x, 0, 255).astype(np.uint8)
        return x, y.astype(np.int64)
    train_x, train_y = draw(cfg.synthetic_train_size)
    test_x, test_y = draw(cfg.synthetic_test_size)
    return train_x, train_y, test_x, test_y


def load_data(cfg: DataConfig, device: torch.device, num_classes: int = 10) -> DeviceData:
    if cfg.name == "cifar10":
        arrays = load_cifar10(cfg)
        mean, std, classes = CIFAR10_MEAN, CIFAR10_STD, 10
        if num_classes != classes:
            raise ConfigError(f"model.num_classes={num_classes} but CIFAR-10 has {classes} classes; "
                              f"set model.num_classes={classes}")
    else:
        arrays = make_synthetic(cfg, num_classes)
        mean, std, classes = (0.5, 0.5, 0.5), (0.16, 0.16, 0.16), num_classes
    train_x, train_y, test_x, test_y = arrays
    if cfg.train_subset:
        if cfg.train_subset < 0:
            raise ConfigError(f"data.train_subset must be >= 0, got {cfg.train_subset}")
        train_x, train_y = train_x[:cfg.train_subset], train_y[:cfg.train_subset]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    stat = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return DeviceData(t(train_x), t(train_y), t(test_x), t(test_y), stat(mean), stat(std), classes, cfg.name)
