"""Seeded synthetic images with learnable labels, for tests and smoke runs."""
from __future__ import annotations

import numpy as np

from bench.config import ConfigError
from bench.datasets.base import Arrays, Dataset, register_dataset


@register_dataset("synthetic")
class Synthetic(Dataset):
    """Seeded random images with learnable labels, for tests and smoke runs.

    Each class has a smooth random template; an image is its class template plus
    noise, so a small CNN separates the classes within an epoch or two."""

    title = "synthetic"
    num_classes = 10               # when model.num_classes is 0; any other count is drawn as asked
    mean = (0.5, 0.5, 0.5)
    std = (0.16, 0.16, 0.16)
    seed = 1234

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.cfg.image_size, self.cfg.image_size

    @property
    def train_size(self) -> int:
        return self.cfg.synthetic_train_size

    @property
    def test_size(self) -> int:
        return self.cfg.synthetic_test_size

    def classes(self, requested: int = 0) -> int:
        """As many classes as model.num_classes asks for (0: 10)."""
        if requested < 0:
            raise ConfigError(f"model.num_classes must be >= 0 (0: the dataset's count), got {requested}")
        return requested or self.num_classes

    def read(self, num_classes: int) -> Arrays:
        rng = np.random.default_rng(self.seed)
        s = self.cfg.image_size
        coarse = rng.normal(0, 1, size=(num_classes, 3, 4, 4))
        templates = np.kron(coarse, np.ones((1, 1, s // 4, s // 4)))            # blocky, smooth-ish

        def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
            y = rng.integers(0, num_classes, size=n)
            x = templates[y] + rng.normal(0, 1.0, size=(n, 3, s, s))
            x = np.clip(128 + 40 * x, 0, 255).astype(np.uint8)
            return x, y.astype(np.int64)
        train_x, train_y = draw(self.train_size)
        test_x, test_y = draw(self.test_size)
        return train_x, train_y, test_x, test_y
