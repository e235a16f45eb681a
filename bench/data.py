"""Datasets held whole on the training device, augmented there in batches.

The dataset named by `data.name` (a plugin under bench/datasets/) reads its images as
uint8 arrays; `load_data` puts the whole set on the device as one uint8 tensor, and
random crop (4-pixel zero padding) and horizontal flip run on batches with tensor
indexing, so there is no per-image Python and no worker process.

The random draws of an epoch (order, crop offsets, flips) come from one CPU generator,
so an epoch's batches are the same on every device for the same seed. They are all
drawn when the epoch starts and moved to the device in one copy: a copy per step would
make the host wait for the device at every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from bench import dist
from bench.config import ConfigError, DataConfig
from bench.datasets import dataset_for

CROP_PADDING_PX = 4  # He et al. 2016 sec. 4.2: pad 4 pixels, random 32x32 crop


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
        """One epoch of shuffled, augmented, normalised batches (last partial batch dropped).

        The generator's draws are made in this order, all before the first batch: the
        permutation, then each batch's crop offsets and flips (`crop_flip_draws`)."""
        n = len(self.train_x)
        bs = min(batch_size, n)
        steps = self.steps_per_epoch(batch_size)
        perm = torch.randperm(n, generator=generator, device="cpu")
        draws = ([crop_flip_draws(bs, generator) for _ in range(steps)] if augment else [])
        # One host-to-device copy for the epoch: the order and the crop offsets and flips of every step.
        plan = torch.cat([perm, *(torch.cat([dy, dx, flip.long()]) for dy, dx, flip in draws)])
        plan = plan.to(self.device)
        perm, offsets = plan[:n], plan[n:].view(len(draws), 3, bs) if draws else None
        for i in range(steps):
            idx = perm[i * bs:(i + 1) * bs]
            x = self.train_x[idx]
            if augment:
                x = crop_flip(x, offsets[i, 0], offsets[i, 1], offsets[i, 2].bool())
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
                            seed: int = 0, labels: bool = False) -> Iterator[Any]:
        """Unaugmented, normalised training images for activation statistics; with
        `labels`, (images, labels) pairs for gradients of the loss (Taylor scores)."""
        idx = self.calibration_indices(n_images, seed, heldout)
        for i in range(0, len(idx), batch_size):
            x = self.normalize(self.train_x[idx[i:i + batch_size]])
            yield (x, self.train_y[idx[i:i + batch_size]]) if labels else x


def crop_flip_draws(b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of one batch of `b` images from a CPU `generator`, in this order:
    row offsets, column offsets (each in 0..2*CROP_PADDING_PX) and flips (bool)."""
    p = CROP_PADDING_PX
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    return dy, dx, flip


def random_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once
    (draws from the CPU `generator`, copied to `x`'s device)."""
    dy, dx, flip = crop_flip_draws(len(x), generator)
    return crop_flip(x, dy.to(x.device), dx.to(x.device), flip.to(x.device))


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop of every image of `x` (zero-padded by CROP_PADDING_PX) at offsets `dy`, `dx`,
    then flipped horizontally where `flip`; offsets and flips on `x`'s device, so nothing
    here waits for it."""
    b, c, h, w = x.shape
    p = CROP_PADDING_PX
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]                    # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]                    # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]       # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def load_data(cfg: DataConfig, device: torch.device, num_classes: int = 0) -> DeviceData:
    """The dataset `cfg.name` on `device`. `num_classes` is model.num_classes: 0 takes the
    dataset's class count, another value must match it (ConfigError otherwise)."""
    dataset = dataset_for(cfg)
    classes = dataset.classes(num_classes)
    # Under torchrun, rank 0 fetches (if needed) while the others wait, then all read.
    if dist.is_main():
        dataset.prepare()
    dist.barrier()
    train_x, train_y, test_x, test_y = dataset.read(classes)
    if cfg.train_subset:
        if cfg.train_subset < 0:
            raise ConfigError(f"data.train_subset must be >= 0, got {cfg.train_subset}")
        train_x, train_y = train_x[:cfg.train_subset], train_y[:cfg.train_subset]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    stat = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return DeviceData(t(train_x), t(train_y), t(test_x), t(test_y), stat(dataset.mean), stat(dataset.std),
                      classes, cfg.name)
