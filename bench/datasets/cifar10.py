"""CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images in 10 classes, from
`<root>/cifar-10-batches-py/` (torchvision's layout, the Python pickles of the
original archive), fetched on first use when no root is given (see base.py)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from bench.config import ConfigError
from bench.datasets.base import Arrays, TorchvisionArchive, register_dataset


# What a CIFAR batch pickle may name: numpy's array reconstruction (`_reconstruct` up to
# protocol 4, `_frombuffer` at protocol 5; numpy 1 and 2 spell the module differently),
# numpy scalars, and the bytes helper of protocol-2 pickles written by Python 3. Lists,
# dicts, strings, bytes and numbers need no name at all.
ALLOWED_GLOBALS = frozenset({
    *((f"numpy.{core}.multiarray", fn) for core in ("core", "_core") for fn in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data only: any other class or function a file names
    (a planted `__reduce__` would name `os.system` or `open`) stops the load before it runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")


def load_batch(f: IO[bytes], path: Path | str) -> Any:
    """One CIFAR batch pickle through `BatchUnpickler`; a refused or broken file is a one-line
    ConfigError (nothing it names has run)."""
    try:
        return BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError(f"refusing '{path}': {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                          f"a CIFAR batch holds numpy arrays, lists, dicts, strings and numbers only; a damaged copy "
                          f"is fetched again by removing its folder (or use another data.root)") from None


@register_dataset("cifar10")
class Cifar10(TorchvisionArchive):
    """CIFAR-10: 10 classes, 50,000 training and 10,000 test images (Krizhevsky 2009)."""

    title = "CIFAR-10"
    num_classes = 10
    image_shape = (3, 32, 32)
    train_size, test_size = 50_000, 10_000
    # Per-channel mean and std of the CIFAR-10 training images (the usual constants).
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    torchvision_class = "CIFAR10"
    archive_mb = 163
    train_files: ClassVar[list[str]] = [f"data_batch_{i}" for i in range(1, 6)]
    test_file: ClassVar[str] = "test_batch"
    label_key: ClassVar[str] = "labels"    # the pickles' key of the class labels

    def read(self, num_classes: int) -> Arrays:
        folder = self.ensure_folder()
        train_x, train_y = self.read_pickles(folder, self.train_files)
        test_x, test_y = self.read_pickles(folder, [self.test_file])
        return train_x, train_y, test_x, test_y

    def read_pickles(self, folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of the pickled batches `files`: `data` is uint8 [N, 3072],
        the R, G and B planes of 1024 pixels each, row-major."""
        xs, ys = [], []
        for name in files:
            path = folder / name
            if not path.is_file():
                raise ConfigError(f"{self.title} file '{path}' is missing; the folder must hold "
                                  f"{', '.join(self.train_files + [self.test_file])}")
            with open(path, "rb") as f:
                x, y = self.batch_arrays(load_batch(f, path), path)
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    def batch_arrays(self, d: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """A loaded batch's images [N, C, H, W] and labels [N], after checking what a damaged
        or crafted file could get wrong: the keys, the image size, pixel values in 0..255 (a
        cast to uint8 would wrap others silently), one label per image, labels in
        0..num_classes-1 (a label past the last class would only fail mid-training, or count
        as a wrong answer at test time). Any problem is a one-line ConfigError naming the file."""
        def bad(problem: str) -> ConfigError:
            return ConfigError(f"{self.title} file '{path}' {problem}; fetch the data again (remove the folder) "
                               f"or use another data.root")
        if not isinstance(d, dict) or "data" not in d or self.label_key not in d:
            raise bad(f"is not a batch: it needs the keys 'data' and '{self.label_key}'")
        x, y = np.asarray(d["data"]), np.asarray(d[self.label_key])
        pixels = int(np.prod(self.image_shape))
        if x.ndim != 2 or x.shape[1] != pixels or x.dtype.kind not in "iu":
            raise bad(f"holds images of shape {x.shape} ({x.dtype}), not integers of shape [N, {pixels}]")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise bad(f"holds pixel values {x.min()}..{x.max()}, outside 0..255")
        if y.shape != (len(x),) or (y.size and y.dtype.kind not in "iu"):
            raise bad(f"holds {y.size} labels of type {y.dtype} for {len(x)} images, not one integer label per image")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise bad(f"holds labels {y.min()}..{y.max()}, outside 0..{self.num_classes - 1}")
        return x.astype(np.uint8).reshape(-1, *self.image_shape), y.astype(np.int64)
