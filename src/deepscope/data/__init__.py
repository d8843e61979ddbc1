"""Data: Shapeset-3x2 generated on the fly, the user's MNIST / Fashion-MNIST / CIFAR-10 files, optional bundled
sets, batching by index and kornia augmentation. ``get_dataset(name, **options)`` is the entry point.
"""

from deepscope.data.augment import AUGMENTATIONS, make_augment
from deepscope.data.datasets import DATASETS, Dataset, Stream, batches, examples, get_dataset, save_grid
from deepscope.data.files import DataFileError, read_cifar_batch, read_idx
from deepscope.data.generated import blobs_dataset, circles_dataset, friedman_dataset, spirals_dataset
from deepscope.data.shapeset import CLASS_NAMES as SHAPESET_CLASSES
from deepscope.data.shapeset import generate as generate_shapeset

DATASETS.update(friedman=friedman_dataset, spirals=spirals_dataset)  # generated regression and binary sets
DATASETS.update(circles=circles_dataset, blobs=blobs_dataset)  # scikit-learn's toy sets, AUTOTRAINER's defaults

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "SHAPESET_CLASSES",
    "DataFileError",
    "Dataset",
    "Stream",
    "batches",
    "examples",
    "generate_shapeset",
    "get_dataset",
    "make_augment",
    "read_cifar_batch",
    "read_idx",
    "save_grid",
]


def __getattr__(name: str):
    """Preprocessing lives in deepscope.data.preprocess; re-exported lazily (it is written separately)."""
    if name in ("METHODS", "Preprocessor"):
        from deepscope.data import preprocess

        return getattr(preprocess, name)
    raise AttributeError(f"module 'deepscope.data' has no attribute {name!r}")
