import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from deepscope.data import get_dataset
from deepscope.data.files import (
    DataFileError,
    load_cifar10,
    load_mnist,
    read_cifar_batch,
    read_idx,
    read_mnist_pair,
)

# ---------------------------------------------------------------------------------------------------------------
# writers in the official formats (independent of the readers)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        "train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
        "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)),
    }
    for prefix, (x, y) in data.items():
        for kind, array in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            raw = idx_bytes(array)
            path = folder / f"{prefix}-{kind}{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(raw) if gz else raw)
    return data


class Py2Pickler(pickle._Pickler):
    """Pickles byte strings the way Python 2's cPickle did (STRING opcodes), like the official CIFAR-10 files."""

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[bytes] = save_bytes


def cifar_dict(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def official_cifar_pickle(batch) -> bytes:
    """Protocol 2 from Python 2 with numpy 1.x: STRING opcodes and the numpy.core.multiarray global."""
    import io

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(batch)
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar(folder, n=12, writer=official_cifar_pickle):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = cifar_dict(n, seed)
        (folder / name).write_bytes(writer(batches[name]))
    return batches


# ---------------------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_load(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    loaded = load_mnist(tmp_path)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = loaded[split]
        assert x.dtype == np.uint8 and x.shape == data[prefix][0].shape
        assert np.array_equal(x, data[prefix][0]) and np.array_equal(y, data[prefix][1])
        assert y.dtype == np.int64


def test_kaggle_spelling_and_raw_subfolder_are_found(tmp_path):
    (tmp_path / "raw").mkdir()
    write_mnist(tmp_path / "raw", gz=False)
    (tmp_path / "raw" / "train-images-idx3-ubyte").rename(tmp_path / "raw" / "train-images.idx3-ubyte")
    assert load_mnist(tmp_path)["train"][0].shape == (60, 28, 28)


def test_read_idx_other_types(tmp_path):
    a = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(bytes([0, 0, 0x0C, 3]) + struct.pack(">3I", 2, 3, 4) + a.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a"), a)


def test_bad_magic_number_is_named(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[:4] = struct.pack(">I", 0x12345678)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.*magic number 0x12345678.*2051"):
        load_mnist(tmp_path)


def test_labels_file_in_place_of_images_is_rejected(tmp_path):
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte: magic number 2049 .* expected 3"):
        load_mnist(tmp_path)


def test_truncated_file_is_named(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    # 16 header bytes (magic + 3 sizes) + 20 * 28 * 28 pixels = 15696 bytes, 100 missing
    with pytest.raises(DataFileError, match=r"t10k-images-idx3-ubyte.gz: truncated: 15596 bytes, expected 15696"):
        load_mnist(tmp_path)


def test_corrupt_gzip_is_named(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte.gz: corrupt gzip"):
        load_mnist(tmp_path)


def test_label_range_and_counts_are_checked(tmp_path):
    x = np.zeros((3, 28, 28), np.uint8)
    (tmp_path / "i").write_bytes(idx_bytes(x))
    (tmp_path / "l").write_bytes(idx_bytes(np.array([1, 2, 10])))
    with pytest.raises(DataFileError, match=r"label 10 out of range; expected 0..9"):
        read_mnist_pair(tmp_path / "i", tmp_path / "l")
    (tmp_path / "l").write_bytes(idx_bytes(np.array([1, 2])))
    with pytest.raises(DataFileError, match="3 images but .* 2 labels"):
        read_mnist_pair(tmp_path / "i", tmp_path / "l")
    (tmp_path / "i").write_bytes(idx_bytes(np.zeros((3, 32, 32))))
    with pytest.raises(DataFileError, match="expected uint8 28x28"):
        read_mnist_pair(tmp_path / "i", tmp_path / "l")


def test_missing_file_says_what_and_where(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataFileError) as err:
        load_mnist(tmp_path, "fashion_mnist")
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte[.gz] not found" in message and str(tmp_path) in message
    assert "train-images-idx3-ubyte[.gz]" in message and "zalandoresearch" in message


def test_mnist_dataset_split_50k_10k_style(tmp_path):
    data = write_mnist(tmp_path, n_train=60, n_test=20)
    ds = get_dataset("mnist", root=tmp_path, n_valid=10, seed=3)
    (xt, yt), (xv, yv), (xs, ys) = ds.train, ds.valid, ds.test
    assert xt.shape == (50, 1, 28, 28) and xv.shape == (10, 1, 28, 28) and xs.shape == (20, 1, 28, 28)
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64 and ds.input_shape == (1, 28, 28)
    # train + valid is a permutation of the 60 official training images, scaled to [0, 1]
    both = torch.cat([xt, xv]).flatten(1) * 255
    original = torch.from_numpy(data["train"][0].reshape(60, -1)).float()
    match = (both[:, None, :] - original[None]).abs().amax(-1) < 1e-3
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()
    assert torch.equal(xs.flatten(1) * 255, torch.from_numpy(data["t10k"][0].reshape(20, -1)).float())
    assert torch.equal(ys, torch.from_numpy(data["t10k"][1]))
    source = match.float().argmax(1)  # the official index of each train + valid image
    assert torch.equal(torch.cat([yt, yv]), torch.from_numpy(data["train"][1])[source])  # labels travel along
    again = get_dataset("mnist", root=tmp_path, n_valid=10, seed=3)
    other = get_dataset("mnist", root=tmp_path, n_valid=10, seed=4)
    assert torch.equal(again.valid[0], xv) and not torch.equal(other.valid[0], xv)


def test_mnist_needs_a_root():
    with pytest.raises(ValueError, match="needs root="):
        get_dataset("mnist")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10


def check_batch(loaded, batch):
    x, y = loaded
    data = batch[b"data"]
    assert x.shape == (len(data), 3, 32, 32) and x.dtype == np.uint8
    k, c, i, j = 3, 2, 5, 7  # plane c, row i, column j of image k is data[k, c * 1024 + i * 32 + j]
    assert x[k, c, i, j] == data[k, c * 1024 + i * 32 + j]
    assert np.array_equal(x.reshape(len(data), -1), data) and y.tolist() == batch[b"labels"]


@pytest.mark.parametrize(
    "writer",
    [official_cifar_pickle, lambda b: pickle.dumps(b, protocol=2), pickle.dumps, lambda b: pickle.dumps(b, protocol=5)],
    ids=["python2-official", "protocol2", "default", "protocol5"],
)
def test_cifar_batch_loads(tmp_path, writer):
    batch = cifar_dict(10, 0)
    (tmp_path / "data_batch_1").write_bytes(writer(batch))
    check_batch(read_cifar_batch(tmp_path / "data_batch_1"), batch)


def test_cifar10_directory_and_split(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", n=12)
    loaded = load_cifar10(tmp_path)  # finds the cifar-10-batches-py folder
    assert loaded["train"][0].shape == (60, 3, 32, 32) and loaded["test"][0].shape == (12, 3, 32, 32)
    check_batch((loaded["test"][0], loaded["test"][1]), batches["test_batch"])
    ds = get_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", n_valid=20)
    assert len(ds.train[0]) == 40 and len(ds.valid[0]) == 20 and len(ds.test[0]) == 12
    assert ds.input_shape == (3, 32, 32) and ds.class_names[0] == "airplane"
    assert ds.train[0].max() <= 1 and ds.train[0].dtype == torch.float32


def test_cifar_missing_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataFileError, match=r"data_batch_4 not found in .*cifar.html"):
        load_cifar10(tmp_path)


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_that_would_run_code_is_rejected(tmp_path, protocol):
    marker = tmp_path / "pwned"
    batch = cifar_dict(4, 0)
    batch[b"filenames"] = [RunsCode(marker)]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(DataFileError, match=r"data_batch_1: .*refusing global (posix|os)\.system"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(Evals(), protocol=protocol))
    with pytest.raises(DataFileError, match=r"refusing global (builtins|__builtin__)\.eval"):
        read_cifar_batch(tmp_path / "data_batch_1")


def test_object_arrays_and_other_codecs_are_rejected(tmp_path):
    batch = cifar_dict(4, 0)
    batch[b"data"] = np.array([None, 1], dtype=object)
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DataFileError, match="Python objects"):
        read_cifar_batch(tmp_path / "b")
    evil = pickle.dumps({b"data": b"x"}, protocol=2).replace(b"latin1", b"rot_13")
    (tmp_path / "c").write_bytes(evil)
    with pytest.raises(DataFileError, match="refusing _codecs.encode"):
        read_cifar_batch(tmp_path / "c")


def test_corrupt_and_wrong_cifar_batches(tmp_path):
    raw = official_cifar_pickle(cifar_dict(4, 0))
    (tmp_path / "t").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match="t: corrupt or truncated pickle|t: not a CIFAR-10 batch"):
        read_cifar_batch(tmp_path / "t")
    bad = cifar_dict(4, 0)
    bad[b"data"] = bad[b"data"][:, :100]
    (tmp_path / "s").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataFileError, match=r"'data' is a uint8 array of shape \(4, 100\); expected .* \(N, 3072\)"):
        read_cifar_batch(tmp_path / "s")
    bad = cifar_dict(4, 0)
    bad[b"labels"] = [0, 1, 2, 11]
    (tmp_path / "l").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataFileError, match=r"labels range 0..11; expected 0..9"):
        read_cifar_batch(tmp_path / "l")
