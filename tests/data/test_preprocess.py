"""Preprocessing (Varma & Das, ch. 7, section 7.6): statistics fitted on train only, checked against numpy."""

import numpy as np
import pytest
import torch

from deepscope.data.preprocess import METHODS, Preprocessor


@pytest.fixture
def splits():
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0.0, 2.0, -1.0]).view(1, 3, 1, 1)
    train = torch.rand(20, 3, 4, 4, generator=g) * 3 + offsets
    train[:, 0, 0, 0] = 0.7  # a feature that is constant on the training set
    valid = torch.rand(10, 3, 4, 4, generator=g) * 5 - 2  # another distribution
    return train, valid


def test_center_and_mean_image_subtract_the_train_mean_image(splits):
    train, valid = splits
    mean = train.numpy().mean(axis=0)  # the mean image, 3 x 4 x 4
    assert not np.allclose(mean, valid.numpy().mean(axis=0), atol=0.1)
    for method in ("center", "mean_image"):
        pre = Preprocessor(method).fit(train)
        np.testing.assert_allclose(pre(valid).numpy(), valid.numpy() - mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pre(train).numpy().mean(axis=0), 0.0, atol=1e-5)


def test_channel_mean_subtracts_one_train_mean_per_channel(splits):
    train, valid = splits
    means = train.numpy().mean(axis=(0, 2, 3))
    assert means[1] - means[0] > 1.0  # the channels really differ
    pre = Preprocessor("channel_mean").fit(train)
    np.testing.assert_allclose(pre(valid).numpy(), valid.numpy() - means.reshape(1, 3, 1, 1), rtol=1e-5, atol=1e-6)
    assert pre.state_dict()["0.channel_mean.shift"].shape == (3, 1, 1)


def test_standardize_uses_train_statistics(splits):
    train, valid = splits
    x = train.numpy()
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(np.ptp(x, axis=0) > 0, std, 1.0)  # the constant feature is only centred
    pre = Preprocessor("standardize").fit(train)
    np.testing.assert_allclose(pre(valid).numpy(), (valid.numpy() - mean) / std, rtol=1e-4, atol=1e-5)
    out = pre(train)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(3, 4, 4), atol=1e-5, rtol=0)
    want_std = torch.ones(3, 4, 4)
    want_std[0, 0, 0] = 0.0
    torch.testing.assert_close(out.std(dim=0, correction=0), want_std, atol=1e-5, rtol=0)
    assert (out[:, 0, 0, 0] == 0).all()


def test_minmax_maps_train_to_minus_one_one(splits):
    train, valid = splits
    pre = Preprocessor("minmax").fit(train)
    out = pre(train)
    lo, hi = out.amin(dim=0), out.amax(dim=0)
    keep = torch.ones(3, 4, 4, dtype=torch.bool)
    keep[0, 0, 0] = False  # constant on train: mapped to 0
    torch.testing.assert_close(lo[keep], -torch.ones(keep.sum()), atol=1e-6, rtol=0)
    torch.testing.assert_close(hi[keep], torch.ones(keep.sum()), atol=1e-6, rtol=0)
    assert (out[:, 0, 0, 0] == 0).all()
    x_lo, x_hi = train.numpy().min(axis=0), train.numpy().max(axis=0)
    want = 2 * (valid.numpy() - x_lo) / np.where(x_hi > x_lo, x_hi - x_lo, 2.0) - 1
    want[:, 0, 0, 0] = valid.numpy()[:, 0, 0, 0] - 0.7
    np.testing.assert_allclose(pre(valid).numpy(), want, rtol=1e-5, atol=1e-5)
    assert pre(valid).abs().max() > 1  # valid is not clipped to the train range


def test_methods_compose_in_order(splits):
    train, valid = splits
    pre = Preprocessor(["channel_mean", "standardize"]).fit(train)
    c = train.numpy().mean(axis=(0, 2, 3), keepdims=True)
    centred = train.numpy() - c
    mean, std = centred.mean(axis=0), centred.std(axis=0)
    std = np.where(np.ptp(centred, axis=0) > 0, std, 1.0)
    np.testing.assert_allclose(pre(valid).numpy(), (valid.numpy() - c - mean) / std, rtol=1e-4, atol=1e-4)


def test_none_is_identity_and_integer_inputs_become_float():
    x = torch.randint(0, 255, (4, 1, 2, 2), dtype=torch.uint8)
    out = Preprocessor("none").fit(x)(x)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


def test_state_dict_round_trip_through_weights_only_load(splits, tmp_path):
    train, valid = splits
    methods = ["mean_image", "channel_mean", "standardize", "minmax"]
    pre = Preprocessor(methods).fit(train)
    state = pre.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    torch.save({"preprocess": state}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["preprocess"]
    other = Preprocessor(methods).load_state_dict(loaded)
    assert torch.equal(other(valid), pre(valid))
    assert other.input_shape == (3, 4, 4)


def test_load_state_dict_of_other_methods_is_refused(splits):
    train, _ = splits
    state = Preprocessor("center").fit(train).state_dict()
    with pytest.raises(ValueError, match="0.standardize.scale"):
        Preprocessor("standardize").load_state_dict(state)


def test_call_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        Preprocessor("center")(torch.zeros(2, 3))


def test_shape_mismatch_names_expected_and_got(splits):
    train, _ = splits
    pre = Preprocessor("center").fit(train)
    with pytest.raises(ValueError) as err:
        pre(torch.zeros(2, 1, 4, 4))
    assert "(B, 3, 4, 4)" in str(err.value) and "(2, 1, 4, 4)" in str(err.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as err:
        Preprocessor(["center", "whiten"])
    msg = str(err.value)
    assert "'whiten'" in msg and all(name in msg for name in METHODS)
