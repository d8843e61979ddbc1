import pytest
import torch

from deepscope.data import AUGMENTATIONS, make_augment
from deepscope.data.shapeset import generate


def batch(n=8, size=16, channels=1, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("names", [None, [], "", " , "])
def test_nothing_asked_gives_none(names):
    assert make_augment(names) is None


def test_unknown_names_and_options_are_listed():
    with pytest.raises(ValueError, match=r"augmentation='twirl' is not known; choose one of: hflip, vflip, rotate"):
        make_augment(["hflip", "twirl"])
    with pytest.raises(ValueError, match=r"option 'degrees' is not used by hflip; choose from: p"):
        make_augment("hflip", degrees=10)


def test_flips_mirror_the_image():
    x = batch()
    assert torch.equal(make_augment("hflip", p=1.0)(x), x.flip(-1))
    assert torch.equal(make_augment(["vflip"], p=1.0)(x), x.flip(-2))
    assert torch.equal(make_augment("hflip,vflip", p=1.0)(x), x.flip(-1).flip(-2))
    assert torch.equal(make_augment("hflip", p=0.0)(x), x)


def test_rotation_by_a_quarter_turn_is_rot90():
    x = batch(size=9)
    out = make_augment("rotate", degrees=(90.0, 90.0), p=1.0)(x)
    assert torch.allclose(out, torch.rot90(x, -1, (-2, -1)), atol=1e-5)


def test_rotation_angles_stay_in_range():
    # the orientation of a rotated bar, from its second moments, is within +-15 degrees and varies
    x = torch.zeros(64, 1, 33, 33)
    x[:, :, 16, 4:29] = 1
    torch.manual_seed(0)
    out = make_augment("rotate", degrees=15.0, p=1.0)(x)[:, 0].double()
    c = torch.arange(33, dtype=torch.float64)
    mass = out.sum((-1, -2))
    my, mx = (out.sum(-1) * c).sum(-1) / mass, (out.sum(-2) * c).sum(-1) / mass
    vxx = (out.sum(-2) * c * c).sum(-1) / mass - mx**2
    vyy = (out.sum(-1) * c * c).sum(-1) / mass - my**2
    vxy = (out * c[:, None] * c[None, :]).sum((-1, -2)) / mass - mx * my
    degrees = torch.rad2deg(0.5 * torch.atan2(2 * vxy, vxx - vyy))
    assert degrees.abs().max() < 15.5 and degrees.abs().max() > 10 and (degrees > 0).any() and (degrees < 0).any()


def test_scaling_multiplies_the_area():
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1
    out = make_augment("scale", scale=(2.0, 2.0), p=1.0)(x)
    assert torch.equal((out > 0.5).sum((-1, -2)), torch.full((2, 1), 64))


def test_brightness_adds_and_contrast_multiplies_without_clipping():
    torch.manual_seed(0)
    x = batch(n=16) * 2 - 1  # values in [-1, 1]
    shift = make_augment("brightness", brightness=0.1, p=1.0)(x) - x
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.1 + 1e-6 and per_image.std() > 0
    factor = (make_augment("contrast", contrast=0.2, p=1.0)(x) / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-4)
    assert ((factor > 0.8 - 1e-5) & (factor < 1.2 + 1e-5)).all()


def test_color_on_rgb_keeps_the_shape():
    x = batch(channels=3)
    assert make_augment("color", p=1.0)(x).shape == x.shape


def test_pipeline_on_shapeset_is_reproducible_from_the_global_seed():
    x, _ = generate(16, torch.Generator().manual_seed(0))
    augment = make_augment(list(AUGMENTATIONS)[:-1])  # all grey-level transforms
    torch.manual_seed(1)
    a = augment(x)
    torch.manual_seed(1)
    b = augment(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, x)
