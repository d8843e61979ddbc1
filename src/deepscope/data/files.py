"""Readers for the data files users already have: MNIST / Fashion-MNIST IDX files and CIFAR-10 python batches.

Nothing is downloaded. Each reader checks the official file names, magic numbers, shapes and label ranges, and
a missing or corrupt file raises :class:`DataFileError` naming the file, what was expected and where to put it.
CIFAR-10 batches are pickles: they are read with :class:`RestrictedUnpickler`, which builds only the containers
and numpy arrays a batch holds and refuses every other global, so a hostile file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_FILES",
    "FASHION_MNIST_CLASSES",
    "MNIST_FILES",
    "DataFileError",
    "RestrictedUnpickler",
    "load_cifar10",
    "load_mnist",
    "read_cifar_batch",
    "read_idx",
    "read_mnist_pair",
]


class DataFileError(ValueError):
    """A data file is missing, unreadable or not in the expected format."""


# ----------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_SOURCES = {
    "mnist": "the MNIST page of Yann LeCun (yann.lecun.com/exdb/mnist) or a mirror",
    "fashion_mnist": "github.com/zalandoresearch/fashion-mnist (data/fashion)",
    "cifar10": "www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version, cifar-10-python.tar.gz, extracted)",
}
# IDX type byte -> numpy dtype (the data are big-endian)
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic 1f 8b (whatever its name)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataFileError(f"{path}: cannot be read ({err})") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as err:
            raise DataFileError(f"{path}: corrupt gzip file ({err}); re-download and replace it") from err
    return raw


def read_idx(path: str | Path, *, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file, gzipped or not (the MNIST format, LeCun et al. 1998).

    Layout: magic number 0x0000TTNN (TT the element type, NN the number of dimensions), NN big-endian uint32
    sizes, then the elements in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = int.from_bytes(raw[:4].ljust(4, b"\0"), "big")
        raise DataFileError(
            f"{path}: magic number 0x{magic:08x} is not an IDX header; expected 0x000008NN (unsigned bytes, NN "
            f"dimensions), e.g. 2051 = 0x00000803 for images, 2049 = 0x00000801 for labels"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        magic = int.from_bytes(raw[:4], "big")
        raise DataFileError(
            f"{path}: magic number {magic} (0x{magic:08x}) declares {ndim} dimensions; expected {expect_ndim} "
            f"(magic {0x800 + expect_ndim} = 0x{0x800 + expect_ndim:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated header: {len(raw)} bytes, expected at least {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise DataFileError(
            f"{path}: {what}: {len(raw)} bytes, expected {expected} for an array of shape {shape}; "
            "re-download and replace it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(root: Path, name: str, dataset: str) -> Path:
    """The file ``name`` (or ``name.gz``, or the common ``train-images.idx3-ubyte`` spelling) under ``root``."""
    names = [name, name + ".gz"]
    if "-idx" in name:
        dotted = name.replace("-idx", ".idx")
        names += [dotted, dotted + ".gz"]
    folders = [root, root / "raw", root / {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}.get(dataset, "") / "raw"]
    for folder in folders:
        for candidate in names:
            if (folder / candidate).is_file():
                return folder / candidate
    raise DataFileError(
        f"{dataset}: file {name}[.gz] not found in {root}; expected the official files "
        f"{', '.join(f + '[.gz]' for pair in MNIST_FILES.values() for f in pair)} in that directory. "
        f"Get them from {_SOURCES.get(dataset, 'the dataset page')} and put them in {root}"
    )


def read_mnist_pair(images: str | Path, labels: str | Path, *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from an IDX image file and its label file, checked."""
    images, labels = Path(images), Path(labels)
    x = read_idx(images, expect_ndim=3)
    y = read_idx(labels, expect_ndim=1)
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28):
        raise DataFileError(f"{images}: images of dtype {x.dtype} and shape {x.shape[1:]}; expected uint8 28x28")
    if y.dtype != np.uint8:
        raise DataFileError(f"{labels}: labels of dtype {y.dtype}; expected uint8")
    if len(x) != len(y):
        raise DataFileError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; expected the same")
    if len(y) and y.max() >= num_classes:
        raise DataFileError(f"{labels}: label {int(y.max())} out of range; expected 0..{num_classes - 1}")
    return x, y.astype(np.int64)


def load_mnist(root: str | Path, dataset: str = "mnist") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official train (60k) and test (10k) sets of MNIST or Fashion-MNIST (``dataset="fashion_mnist"``)."""
    root = Path(root)
    return {
        split: read_mnist_pair(_find(root, images, dataset), _find(root, labels, dataset))
        for split, (images, labels) in MNIST_FILES.items()
    }


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _safe_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing a numpy array of Python objects (dtype {dtype})")
    return dtype


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes; only latin-1 is allowed."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _safe_dtype, ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x name either
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct  # protocols 0-4
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array-rebuilding globals: ndarray, dtype, _reconstruct, _frombuffer.

    Dicts, lists, strings, bytes and numbers need no globals. Any other global -- ``os.system``, ``builtins.eval``,
    a class with a ``__reduce__`` -- is refused before anything is called (the pattern of the Python docs,
    "Restricting Globals"). Arrays of Python objects are refused too.
    """

    def find_class(self, module: str, name: str):
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return allowed[(module, name)]


def _unpickle(path: Path) -> object:
    raw = _read_bytes(path)
    try:
        return RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataFileError(
            f"{path}: not a CIFAR-10 batch, refused or corrupt pickle ({err}); a batch holds only a dict of "
            "numpy arrays, lists and strings"
        ) from err
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError) as err:
        raise DataFileError(f"{path}: corrupt or truncated pickle ({type(err).__name__}: {err})") from err


def read_cifar_batch(path: str | Path, *, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR-10 python batch, checked.

    A batch is a dict with ``data`` (N, 3072) uint8 -- 1024 red, 1024 green, 1024 blue values per row, each
    plane row-major -- and ``labels`` (N ints); keys are bytes in the official files.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataFileError(f"{path}: holds a {type(batch).__name__}; expected a dict with 'data' and 'labels'")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    x, labels = batch.get("data"), batch.get("labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        found = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataFileError(f"{path}: 'data' is a {found}; expected a uint8 array of shape (N, 3072)")
    if not isinstance(labels, list | np.ndarray):
        raise DataFileError(f"{path}: 'labels' is a {type(labels).__name__}; expected a list of N ints")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"{path}: 'labels' are not integers ({err})") from err
    if len(y) != len(x):
        raise DataFileError(f"{path}: {len(x)} images but {len(y)} labels; expected the same number")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataFileError(f"{path}: labels range {y.min()}..{y.max()}; expected 0..{num_classes - 1}")
    return x.reshape(-1, 3, 32, 32), y


def load_cifar10(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official train (data_batch_1..5, 50k) and test (test_batch, 10k) sets of CIFAR-10.

    ``root`` is the directory holding the batches or the one holding ``cifar-10-batches-py``.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    out = {}
    for split, names in CIFAR10_FILES.items():
        parts = []
        for name in names:
            if not (folder / name).is_file():
                raise DataFileError(
                    f"cifar10: file {name} not found in {folder}; expected the python batches "
                    f"{', '.join(CIFAR10_FILES['train'] + CIFAR10_FILES['test'])} in that directory "
                    f"(or in {folder}/cifar-10-batches-py). Get them from {_SOURCES['cifar10']} and put them there"
                )
            parts.append(read_cifar_batch(folder / name))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out
