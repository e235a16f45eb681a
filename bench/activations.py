"""Streaming activation statistics, shared by every method that calibrates.

Channel means and covariances are accumulated batch by batch in float64 (sums
of x and of x x^T), never by holding all activations: a VGG-16 over 5,000 CIFAR
images would need tens of GB. For conv activations `[N, C, H, W]` every spatial
position of every image is one sample, so the statistics are over channels
(docs/protocol.md): `X` is `C x (N*H*W)`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn


def as_samples(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N*H*W, C]; [N, C] stays. Samples in rows, channels in columns."""
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if x.dim() == 2:
        return x
    raise ValueError(f"expected a [N, C] or [N, C, H, W] activation, got shape {tuple(x.shape)}")


class CovarianceAccumulator:
    """Running sum, sum of outer products and count, in float64.

    `mean` and `cov` (unbiased, `Xc Xc^T / (s - 1)` as in docs/methods/pcn.md) equal the
    statistics of all samples at once. The sums can be all-reduced across processes
    before reading them (they are plain sums)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        s = as_samples(x.detach()).to(torch.float64)
        if s.shape[1] != self.dim:
            raise ValueError(f"accumulator has {self.dim} channels, activation has {s.shape[1]}")
        self.sum += s.sum(0)
        self.outer += s.T @ s
        self.count += s.shape[0]

    def all_reduce_(self) -> "CovarianceAccumulator":
        """Sum the statistics over ranks (no-op in one process)."""
        from bench import dist
        if dist.is_distributed():
            dist.all_reduce_sum_(self.sum)
            dist.all_reduce_sum_(self.outer)
            self.count = int(dist.all_reduce_sum_(torch.tensor(float(self.count), dtype=torch.float64,
                                                               device=self.sum.device)).item())
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance (divides by count - 1)."""
        n = self.count
        if n < 2:
            raise ValueError("need at least two samples for a covariance")
        mu = self.mean
        c = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return 0.5 * (c + c.T)

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentered), dividing by count."""
        return self.outer / max(self.count, 1)


class SumAccumulator:
    """Named float64 running sums and a sample count, all-reduced together across ranks.

    The sums live on `device`, the device of the data fed to them, so the all-reduce runs
    there (NCCL rejects CPU tensors), the count included. Shapes are fixed up front: every
    rank reduces the same tensors in the same order, even one whose shard was empty.
    (The generic form of `CovarianceAccumulator`'s sums, for statistics other than x x^T:
    Gram matrices, normal equations.)"""

    def __init__(self, shapes: dict[str, tuple[int, ...]], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.sums = {k: torch.zeros(s, dtype=torch.float64, device=self.device) for k, s in shapes.items()}
        self.count = 0

    def add(self, key: str, t: torch.Tensor) -> None:
        self.sums[key] += t.to(torch.float64)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.sums[key]

    def all_reduce_(self) -> "SumAccumulator":
        """Sum every tensor and the count over ranks, on `device` (no-op in one process)."""
        from bench import dist
        if dist.is_distributed():
            for t in self.sums.values():
                dist.all_reduce_sum_(t)
            count = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
            self.count = int(dist.all_reduce_sum_(count).item())
        return self


@dataclass
class PCA:
    """Eigendecomposition of a covariance, eigenvalues in descending order."""
    mean: torch.Tensor          # [d] float64
    eigenvalues: torch.Tensor   # [d] descending, clamped at 0
    eigenvectors: torch.Tensor  # [d, d], column j pairs with eigenvalues[j]

    @classmethod
    def from_accumulator(cls, acc: CovarianceAccumulator) -> "PCA":
        vals, vecs = torch.linalg.eigh(acc.cov)
        order = torch.argsort(vals, descending=True)
        return cls(acc.mean, vals[order].clamp_min(0), vecs[:, order])

    def explained(self) -> torch.Tensor:
        """Cumulative explained-variance fraction after 1, 2, ..., d components."""
        total = self.eigenvalues.sum().clamp_min(1e-300)
        return torch.cumsum(self.eigenvalues, 0) / total

    def components_for(self, energy: float) -> int:
        """Smallest k whose components explain at least `energy` of the variance."""
        if energy >= 1.0:
            return len(self.eigenvalues)
        explained = self.explained()
        k = int(torch.searchsorted(explained, explained.new_tensor(energy)).item()) + 1
        return min(max(k, 1), len(self.eigenvalues))


@contextmanager
def capture(modules: dict[str, nn.Module], fn: Callable[[str, torch.Tensor], None],
            inputs: bool = False) -> Iterator[None]:
    """Forward hooks calling `fn(name, tensor)` with each module's output (or first
    input if `inputs`), removed on exit even after an error."""
    handles = []
    for name, m in modules.items():
        if inputs:
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: fn(n, args[0])))
        else:
            handles.append(m.register_forward_hook(lambda mod, args, out, n=name: fn(n, out)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_covariances(model: nn.Module, modules: dict[str, nn.Module], batches: Iterable[torch.Tensor],
                        inputs: bool = False, transform: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None
                        ) -> dict[str, CovarianceAccumulator]:
    """One eval-mode pass over `batches`, accumulating channel statistics of each
    module's output (or input) in float64. `transform(name, t)` can reshape what is
    accumulated (e.g. im2col patches)."""
    accs: dict[str, CovarianceAccumulator] = {}

    def hook(name: str, t: torch.Tensor) -> None:
        if transform is not None:
            t = transform(name, t)
        if name not in accs:
            accs[name] = CovarianceAccumulator(t.shape[1], device=t.device)
        accs[name].update(t)

    was_training = model.training
    model.eval()
    try:
        with capture(modules, hook, inputs=inputs):
            for x in batches:
                model(x)
    finally:
        model.train(was_training)
    for acc in accs.values():       # under torchrun: every rank ends with the full-set sums
        acc.all_reduce_()
    return accs
