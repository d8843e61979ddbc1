import math

import pytest
import torch

from deepscope.data import shapeset as S


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force_masks(vertices: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross products in float64: inside iff the centre is on the inner side of every edge.

    Also returns each pixel's distance (in pixels) to the nearest edge line, to tell genuine ties.
    """
    v = vertices.double()
    e = v.roll(-1, -2) - v
    sign = (v[..., 0] * v.roll(-1, -2)[..., 1] - v.roll(-1, -2)[..., 0] * v[..., 1]).sum(-1).sign()
    c = torch.arange(size, dtype=torch.float64) + 0.5
    py, px = torch.meshgrid(c, c, indexing="ij")
    cross = e[..., 0, None, None] * (py - v[..., 1, None, None]) - e[..., 1, None, None] * (px - v[..., 0, None, None])
    cross = cross * sign[..., None, None, None]
    length = e.norm(dim=-1).clamp(min=1e-12)[..., None, None]
    distance = torch.where(length > 1e-9, cross.abs() / length, math.inf).amin(-3)
    return (cross >= 0).all(-3), distance


def test_rectangle_and_triangle_rasters_match_hand_computed():
    # rectangle x in [1, 5], y in [1, 3]: centres j + 0.5 in [1, 5] -> j = 1..4; i + 0.5 in [1, 3] -> i = 1, 2
    rect = torch.tensor([[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]])
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:3, 1:5] = True
    assert torch.equal(S.polygon_masks(rect, 8), expected)
    assert torch.equal(S.polygon_masks(rect.flip(0), 8), expected)  # clockwise too
    # right triangle x + y <= 8: (j + 0.5) + (i + 0.5) <= 8  <=>  i + j <= 7 (the diagonal is on the edge: inside)
    tri = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(S.polygon_masks(tri, 8), i + j <= 7)
    # the same triangle in a 6x6 image is clipped at the border; padded (repeated) vertices change nothing
    padded = torch.cat([tri, tri[-1:].expand(5, 2)])
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(S.polygon_masks(padded, 6), i + j <= 7)
    # a polygon entirely outside the image covers nothing
    assert not S.polygon_masks(rect + 20, 8).any()


def test_rasterizer_matches_brute_force_on_generated_polygons():
    scene = S.sample_scenes(300, gen(1))
    ours = S.polygon_masks(scene.vertices, 32)
    ref, distance = brute_force_masks(scene.vertices, 32)
    differ = ours != ref
    assert (differ & (distance > 1e-3)).sum() == 0  # only float ties within 1/1000 pixel of an edge may differ
    assert differ.float().mean() < 1e-4
    assert S.span_areas(S.polygon_spans(scene.vertices, 32)).equal(ours.sum((-1, -2)).double())


def affine_invariant(mask: torch.Tensor) -> torch.Tensor:
    """Area / sqrt(det covariance) of each mask: 6*sqrt(3) for any triangle, 12 for any parallelogram, 4*pi for
    any ellipse (an affine map scales both by |det|)."""
    m = mask.double()
    c = torch.arange(m.shape[-1], dtype=torch.float64)
    area = m.sum((-1, -2))
    my, mx = (m.sum(-1) * c).sum(-1) / area, (m.sum(-2) * c).sum(-1) / area
    vyy = (m.sum(-1) * c * c).sum(-1) / area - my**2
    vxx = (m.sum(-2) * c * c).sum(-1) / area - mx**2
    vxy = (m * c[:, None] * c[None, :]).sum((-1, -2)) / area - mx * my
    return area / (vxx * vyy - vxy**2).sqrt()


def test_single_shapes_get_the_label_of_their_shape():
    size = 96  # large objects: the raster moments are close to the continuous ones
    scene = S.sample_scenes(1200, gen(2), size=size)
    x = S.render(scene)[:, 0]
    # the object's pixels, read from the image itself: those that differ from the background level
    foreground = (x - scene.bg.view(-1, 1, 1) / 255).abs() > 1e-6
    border = foreground[:, 0].any(-1) | foreground[:, -1].any(-1) | foreground[:, :, 0].any(-1)
    border |= foreground[:, :, -1].any(-1)
    keep = (scene.count == 1) & ~border
    ratio = affine_invariant(foreground[keep])
    predicted = torch.bucketize(ratio, torch.tensor([11.2, 12.3], dtype=torch.float64))
    labels = scene.labels[keep]
    assert labels.bincount(minlength=3).min() >= 100
    assert torch.equal(predicted, labels)
    assert labels.max() <= 2


def test_class_table_matches_the_reference():
    # reference: 0 triangle, 1 parallelogram, 2 ellipse, 3 tri+par, 4 par+ell, 5 tri+ell, 6 2 tri, 7 2 par, 8 2 ell
    pairs = {(0, 1): 3, (1, 2): 4, (0, 2): 5, (0, 0): 6, (1, 1): 7, (2, 2): 8}
    for (a, b), label in pairs.items():
        for first, second in ((a, b), (b, a)):  # whichever is in front
            got = S.label_of(torch.tensor([2]), torch.tensor([[first, second]]))
            assert got.item() == label, (first, second)
            assert S.CLASS_NAMES[label].count("+") == (a != b)
    for shape in range(3):
        assert S.label_of(torch.tensor([1]), torch.tensor([[shape, -1]])).item() == shape
        assert S.CLASS_NAMES[shape] == S.SHAPE_NAMES[shape]


@pytest.mark.parametrize("raster", ["pygame", "exact"])
def test_exact_overlap_rule_keeps_half_of_the_first_object(raster):
    scene = S.sample_scenes(3000, gen(3), raster=raster, overlap="exact")
    fill = S.scanline_masks if raster == "pygame" else S.polygon_masks
    first = fill(scene.vertices[:, 0], 32)  # rendered again from the vertices, not from the generator's masks
    second = fill(scene.vertices[:, 1], 32)
    two = scene.count == 2
    covered = (first & second).sum((-1, -2))[two].double()
    area = first.sum((-1, -2))[two].double()
    assert (covered <= 0.5 * area).all()
    ratio = covered / area
    assert ratio.max() > 0.4 and (ratio > 0).float().mean() > 0.1  # overlaps happen and the bound is active
    # the image is the background, then object 0, then object 1 painted over it
    expected = torch.where(second & two.view(-1, 1, 1), scene.fg[:, 1].view(-1, 1, 1), scene.bg.view(-1, 1, 1))
    expected = torch.where(first & ~(second & two.view(-1, 1, 1)), scene.fg[:, 0].view(-1, 1, 1), expected)
    assert torch.equal(S.render(scene)[:, 0], expected.float() / 255)
    assert not scene.masks[~two, 1].any() and (scene.shapes[~two, 1] == -1).all()


def test_objects_stay_inside_the_image():
    scene = S.sample_scenes(2000, gen(4))
    v = scene.vertices
    extent = v.amax(-2) - v.amin(-2)
    fits = (extent <= 32 - 2 * S.MARGIN).all(-1)
    inside = (v.amin(-2) >= S.MARGIN - 1e-4).all(-1) & (v.amax(-2) <= 32 - S.MARGIN + 1e-4).all(-1)
    assert fits.float().mean() > 0.9
    assert inside[fits].all()
    # an object too large to fit reaches past both margins, as in the authors' generator
    big = ~fits
    if big.any():
        low, high = v.amin(-2)[big], 32 - v.amax(-2)[big]
        assert ((low < S.MARGIN) == (high < S.MARGIN)).all()


def test_same_seed_same_images_different_seed_different_images():
    x1, y1 = S.generate(64, gen(5))
    x2, y2 = S.generate(64, gen(5))
    x3, y3 = S.generate(64, gen(6))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert (x1 != x3).flatten(1).any(1).all()  # every image differs


def chi_square(labels: torch.Tensor, p: torch.Tensor) -> float:
    observed = labels.bincount(minlength=9).double()
    expected = p * len(labels)
    return float(((observed - expected) ** 2 / expected).sum())


CHI2_8DOF_999 = 26.12  # 99.9th percentile of the chi-square distribution with 8 degrees of freedom


@pytest.mark.parametrize("balanced", [False, True])
def test_class_frequencies_match_the_mode(balanced):
    labels = S.sample_scenes(20_000, gen(7), balanced=balanced).labels
    assert chi_square(labels, S.class_frequencies(balanced)) < CHI2_8DOF_999
    assert chi_square(labels, S.class_frequencies(not balanced)) > 10 * CHI2_8DOF_999  # the test can tell modes
    authors = torch.tensor([1 / 6, 1 / 9, 1 / 18], dtype=torch.float64)  # single, mixed pair, same-shape pair
    assert torch.allclose(S.class_frequencies(False)[[0, 3, 6]], authors)


def test_value_ranges_and_grey_levels():
    x01, _ = S.generate(500, gen(8))
    x11, _ = S.generate(500, gen(8), value_range=(-1, 1))
    assert x01.dtype == torch.float32 and x01.shape == (500, 1, 32, 32)
    assert x01.min() >= 0 and x01.max() <= 1 and x11.min() >= -1 and x11.max() <= 1
    assert torch.allclose(x11, x01 * 2 - 1, atol=1e-6)
    levels = x01 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8-bit grey levels, as in the authors' generator
    scene = S.sample_scenes(2000, gen(9))
    dark_bg = scene.bg <= 114
    assert ((scene.bg <= 114) | (scene.bg >= 140)).all()
    present = scene.shapes >= 0
    fg_bright = scene.fg >= 140
    assert (fg_bright[present] == dark_bg.unsqueeze(1).expand_as(present)[present]).all()  # opposite ranges
    assert ((scene.fg <= 114) | fg_bright).all()
    assert abs(dark_bg.float().mean().item() - 0.5) < 0.05  # swapped with probability 1/2


def test_size_is_configurable():
    x, y = S.generate(10, gen(10), size=48)
    assert x.shape == (10, 1, 48, 48) and y.shape == (10,)


BAD_OPTIONS = [{"size": 4}, {"value_range": (0, 2)}, {"value_range": "wide"}, {"raster": "bresenham"},
               {"overlap": "none"}, {"layout": "zyx"}, {"raster": 1}]  # fmt: skip


@pytest.mark.parametrize("kw", BAD_OPTIONS)
def test_bad_options_are_named(kw):
    ((key, value),) = kw.items()
    with pytest.raises(ValueError, match=f"^{key}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        S.generate(4, gen(0), **kw)


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_batches(n):
    x, y = S.generate(n, gen(11))
    assert x.shape == (n, 1, 32, 32) and y.shape == (n,)
