"""CIFAR-100 (Krizhevsky 2009): 60,000 32x32 colour images in 100 classes, from
`<root>/cifar-100-python/` (torchvision's layout: the pickles `train` and `test`, with
`data` uint8 [N, 3072] and `fine_labels`; `meta` holds the class names and is not
read), fetched on first use when no root is given (see base.py)."""
from __future__ import annotations

from bench.datasets.base import register_dataset
from bench.datasets.cifar10 import Cifar10


@register_dataset("cifar100")
class Cifar100(Cifar10):
    """CIFAR-100: 100 fine classes, 50,000 training and 10,000 test images (Krizhevsky 2009)."""

    title = "CIFAR-100"
    num_classes = 100
    # Per-channel mean and std of the CIFAR-100 training images (the usual constants).
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    torchvision_class = "CIFAR100"
    archive_mb = 161
    train_files = ["train"]
    test_file = "test"
    label_key = "fine_labels"
