"""Shapeset against the authors' generator: pygame's polygon fill, the projection overlap rule, rotation steps,
the [x, y] layout and the object areas measured on the authors' images."""

import math

import pytest
import torch

from deepscope.data import get_dataset
from deepscope.data import shapeset as S


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def c_div(a: int, b: int) -> int:
    """C integer division: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def pygame_fill(points, size: int) -> torch.Tensor:
    """pygame 1.8's ``draw.polygon`` (width 0) written out literally, one polygon, plain Python loops.

    ``polygon``: int() of every coordinate; ``draw_fillpoly``: scan y from min to max, cut the edges
    (ind1 = i - 1, ind2 = i), sort, fill pairs with ``drawhorzlineclip`` (clip, both ends included).
    """
    vx = [int(float(x)) for x, _ in points]
    vy = [int(float(y)) for _, y in points]
    n = len(points)
    grid = [[False] * size for _ in range(size)]
    miny, maxy = min(vy), max(vy)
    for y in range(miny, maxy + 1):
        ints = []
        for i in range(n):
            ind1, ind2 = (n - 1, 0) if i == 0 else (i - 1, i)
            y1, y2 = vy[ind1], vy[ind2]
            if y1 < y2:
                x1, x2 = vx[ind1], vx[ind2]
            elif y1 > y2:
                y2, y1 = vy[ind1], vy[ind2]
                x2, x1 = vx[ind1], vx[ind2]
            else:
                continue
            if y1 <= y < y2:
                ints.append(c_div((y - y1) * (x2 - x1), y2 - y1) + x1)
            elif y == maxy and y1 < y <= y2:
                ints.append(c_div((y - y1) * (x2 - x1), y2 - y1) + x1)
        ints.sort()
        for i in range(0, len(ints) - 1, 2):
            x1, x2 = ints[i], ints[i + 1]
            if y < 0 or y >= size:
                continue
            if x2 < x1:
                x1, x2 = x2, x1
            x1, x2 = max(x1, 0), min(x2, size - 1)
            if x2 < 0 or x1 >= size:
                continue
            for x in range(x1, x2 + 1):
                grid[y][x] = True
    return torch.tensor(grid)


def rows(size: int, spans: dict[int, tuple[int, int]]) -> torch.Tensor:
    """A mask from {row: (first column, last column)}, both included."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    for row, (first, last) in spans.items():
        mask[row, first : last + 1] = True
    return mask


# triangle (1, 1), (6, 1), (1, 4): left edge x = 1; right edge x = 6 + trunc((y - 1) * -5 / 3):
# y=1: 6, y=2: 6 + trunc(-5/3) = 5, y=3: 6 + trunc(-10/3) = 3, y=4 (last row, only the ends meeting there): 1
TRIANGLE = rows(8, {1: (1, 6), 2: (1, 5), 3: (1, 3), 4: (1, 1)})
# parallelogram (2, 1), (7, 1), (5, 5), (0, 5): both slanted edges move by trunc((y - 1) * -2 / 4):
# y=1: 0, y=2: trunc(-0.5) = 0, y=3: -1, y=4: trunc(-1.5) = -1, y=5: -2
PARALLELOGRAM = rows(8, {1: (2, 7), 2: (2, 7), 3: (1, 6), 4: (1, 6), 5: (0, 5)})


@pytest.mark.parametrize(
    ("vertices", "expected"),
    [
        ([[1, 1], [6, 1], [1, 4]], TRIANGLE),
        ([[1.7, 1.2], [6.9, 1.99], [1.3, 4.8]], TRIANGLE),  # the same after truncation
        ([[1.0, 4.0], [6.0, 1.0], [1.0, 1.0]], TRIANGLE),  # the other orientation
        ([[2, 1], [7, 1], [5, 5], [0, 5]], PARALLELOGRAM),
        ([[2.9, 1.5], [7.2, 1.01], [5.99, 5.3], [0.4, 5.7]], PARALLELOGRAM),
        ([[2.5, 1.5], [7.5, 1.5], [5.5, 5.5], [-0.7, 5.5]], PARALLELOGRAM),  # int(-0.7) = 0, not -1
    ],
)
def test_scanline_fill_matches_hand_computed_rasters(vertices, expected):
    v = torch.tensor(vertices, dtype=torch.float64)
    assert torch.equal(S.scanline_masks(v, 8), expected)
    assert torch.equal(pygame_fill(vertices, 8), expected)  # the literal reference agrees with the hand count
    padded = torch.cat([v, v[-1:].expand(3, 2)])  # repeated vertices: zero-length edges change nothing
    assert torch.equal(S.scanline_masks(padded, 8), expected)


def test_scanline_fill_is_not_the_exact_fill():
    # the exact rule takes pixel centres: for the same integer triangle it leaves the right and bottom edges out
    v = torch.tensor([[1.0, 1.0], [6.0, 1.0], [1.0, 4.0]])
    exact = S.polygon_masks(v, 8)
    assert exact.sum() < TRIANGLE.sum() and not (exact & ~TRIANGLE).any()


def test_scanline_fill_matches_the_literal_algorithm_on_generated_and_clipped_polygons():
    scene = S.sample_scenes(150, gen(1))
    present = scene.shapes >= 0
    polygons = [scene.vertices[i, k, : S.N_VERTICES[scene.shapes[i, k]]] for i, k in present.nonzero().tolist()]
    # rotated fractional parallelogram, and polygons reaching past the border (clipped on every side)
    polygons.append(torch.tensor([[1.5, 2.7], [5.2, 0.3], [9.8, 4.1], [6.1, 6.5]], dtype=torch.float64))
    polygons.append(torch.tensor([[-3.2, 4.0], [12.0, -2.5], [20.9, 33.7], [3.0, 40.0]], dtype=torch.float64))
    polygons.append(torch.tensor([[25.0, 20.0], [40.0, 26.0], [30.0, 36.0]], dtype=torch.float64))
    for v in polygons:
        assert torch.equal(S.scanline_masks(v, 32), pygame_fill(v.tolist(), 32)), v
    # the batch call gives the same masks as one polygon at a time (generator masks, padded vertices)
    assert torch.equal(scene.masks[present], torch.stack([pygame_fill(v.tolist(), 32) for v in polygons[:-3]]))


def test_non_convex_rows_get_several_spans():
    # a dent: row 2 is cut at x = 0, 3 + trunc(-1/3) = 3, 6 + trunc(1/3) = 6 and 9 -> spans 0..3 and 6..9
    v = [[0, 0], [9, 0], [9, 4], [7, 4], [6, 1], [3, 1], [2, 4], [0, 4]]
    mask = S.scanline_masks(torch.tensor(v, dtype=torch.float64), 10)
    assert torch.equal(mask, pygame_fill(v, 10))
    assert mask[2].tolist() == [True] * 4 + [False] * 2 + [True] * 4


def area_ratio(n: int) -> float:
    return n * math.sin(2 * math.pi / n) / (2 * math.pi)


def test_projection_overlap_of_two_hand_placed_shapes():
    # first: square 6..14 x 6..14, stretch (8, 8), centre (10.7, 10.2) -> stored as (10, 10) by the authors
    square = torch.tensor([[6.0, 6.0], [14.0, 6.0], [14.0, 14.0], [6.0, 14.0]], dtype=torch.float64)
    first = (square, torch.tensor([10.7, 10.2], dtype=torch.float64), torch.tensor([8.0, 8.0]).double(), 1)

    def estimate(centre_x: float) -> float:
        triangle = torch.tensor([[-3.0, -3.0], [3.0, 0.0], [-3.0, 3.0]], dtype=torch.float64)
        centre = torch.tensor([centre_x, 10.0], dtype=torch.float64)
        second = (triangle + centre, centre, torch.tensor([6.0, 6.0]).double(), 0)
        args = [torch.as_tensor(a) for a in (*first, *second)]
        return float(S.projection_overlap(*args))

    # centres 10 apart on the x axis: the square reaches 14 - 10 = 4 toward it, the triangle 3 back: 7 < 10
    assert estimate(20.0) == 0.0
    # 5 apart: reach 4 + 3 = 7 >= 5 -> factor 1 - 2^(-(7 - 5) / 5); areas 6*6*ratio(3) / (8*8*ratio(4))
    expected = 36 * area_ratio(3) / (64 * area_ratio(4)) * (1 - 2 ** (-2 / 5))
    assert estimate(15.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0885, abs=1e-4)
    # 2 apart: reach 7 >= 2 -> 1 - 2^(-5 / 2) of the area ratio; still accepted (0.30 < 0.5)
    assert estimate(12.0) == pytest.approx(36 * area_ratio(3) / (64 * area_ratio(4)) * (1 - 2 ** (-5 / 2)))


def test_generated_second_objects_pass_the_projection_rule():
    scene = S.sample_scenes(3000, gen(2))
    two = scene.count == 2
    v, c, s, k = scene.vertices[two], scene.centres[two], scene.scales[two], scene.shapes[two]
    estimate = S.projection_overlap(v[:, 0], c[:, 0], s[:, 0], k[:, 0], v[:, 1], c[:, 1], s[:, 1], k[:, 1])
    assert (estimate <= S.MAX_OVERLAP).all() and estimate.max() > 0.4  # the bound is active
    assert (scene.draws[two] > 1).float().mean() > 0.1  # rejections happen
    assert (scene.draws[~two] == 0).all()


def test_second_object_is_dropped_after_the_last_rejected_draw(monkeypatch):
    monkeypatch.setattr(S, "MAX_DRAWS", 2)  # the authors give up after 50; 2 makes it frequent enough to see
    scene = S.sample_scenes(3000, gen(3))
    dropped = (scene.count == 1) & (scene.draws == 2)
    assert dropped.sum() > 20
    assert torch.equal(scene.labels[dropped], scene.shapes[dropped, 0])  # the image is a single-object image
    assert (scene.shapes[dropped, 1] == -1).all() and not scene.masks[dropped, 1].any()
    assert (scene.draws <= 2).all()
    balanced = S.sample_scenes(3000, gen(3), balanced=True)  # balanced classes: never dropped
    expected = torch.tensor([1, 1, 1, 2, 2, 2, 2, 2, 2])[balanced.labels]
    assert torch.equal(balanced.count, expected) and balanced.draws.max() > 2


def test_turn_steps_follow_the_authors_formula():
    # randint(0, 255 // n), steps above 254 // (2n) moved to min(255 - 254 // n + k, 254)
    assert S.turn_steps(3).tolist() == list(range(43)) + list(range(214, 254)) + [254, 254]
    assert S.turn_steps(4).tolist() == list(range(32)) + list(range(224, 255))
    assert S.turn_steps(20).tolist() == list(range(7)) + list(range(250, 255))


def test_final_rotation_is_one_of_254_steps():
    # the edge from the last vertex to the first is the base: horizontal again after the turn, the stretch and
    # the turn back, so its direction minus pi is the final rotation, a multiple of 2 pi / 255 in 0..253
    scene = S.sample_scenes(3000, gen(4))
    directions = []
    for shape, n in enumerate(S.N_VERTICES):
        v = scene.vertices[scene.shapes == shape]
        edge = v[:, 0] - v[:, n - 1]
        directions.append(torch.atan2(edge[:, 1], edge[:, 0]))
    steps = ((torch.cat(directions) - math.pi) % (2 * math.pi)) * 255 / (2 * math.pi)
    assert (steps - steps.round()).abs().max() < 1e-6
    used = steps.round().long().remainder(255)
    assert used.max() <= 253 and len(used.unique()) > 240


def test_xy_layout_is_the_transpose():
    x_yx, y_yx = S.generate(50, gen(5))
    x_xy, y_xy = S.generate(50, gen(5), layout="xy")
    assert torch.equal(x_xy, x_yx.transpose(-1, -2)) and torch.equal(y_xy, y_yx)
    assert not torch.equal(x_xy, x_yx)


AUTHORS_AREAS = (98.9, 143.8, 215.2)  # mean pixels of a single triangle, parallelogram, ellipse in their images


def single_object_areas(raster: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean area of single-object images per class and its standard error, from the images alone
    (foreground = pixels that differ from the background level)."""
    x, y = S.generate(n, gen(6), raster=raster)
    x = x[:, 0]
    border = torch.cat([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], dim=1)
    background = border.median(1).values  # objects keep a pixel away from the border (nearly all of them)
    area = (x != background.view(-1, 1, 1)).sum((-1, -2)).double()
    per_class = [area[y == c] for c in range(3)]
    return torch.stack([a.mean() for a in per_class]), torch.stack([a.std() / len(a) ** 0.5 for a in per_class])


def test_single_object_areas_match_the_authors_images():
    # within 3 % of the authors' means, up to 3 standard errors of this small sample (2,000 objects per class);
    # benchmarks/shapeset.py measures 200,000 images: 97.8, 144.2 and 218.5 px, all within 2 %
    authors = torch.tensor(AUTHORS_AREAS, dtype=torch.float64)
    ours, error = single_object_areas("pygame", 12_000)
    assert ((ours - authors).abs() < 0.03 * authors + 3 * error).all(), (ours, error)
    # the exact fill draws objects 9-15 % smaller: the measurement tells the two fills apart
    exact, error = single_object_areas("exact", 6_000)
    assert (exact + 3 * error < 0.97 * authors)[:2].all() and exact.sum() < 0.93 * authors.sum(), (exact, error)


def test_options_reach_the_dataset_registry():
    ds = get_dataset("shapeset", n_valid=20, n_test=0, raster="exact", overlap="exact", layout="xy", seed=3)
    x, y = S.generate(20, ds.stream.generator(0), raster="exact", overlap="exact", layout="xy")
    assert torch.equal(ds.stream.batch(0, 20)[0], x)
    for key, value, allowed in (("raster", "aa", "pygame, exact"), ("overlap", 0.5, "projection, exact"),
                                ("layout", "yxz", "yx, xy")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{key}={value!r} is not known; choose one of: {allowed}"):
            get_dataset("shapeset", n_valid=0, n_test=0, **{key: value})


def test_cli_names_a_bad_option_and_accepts_a_good_one(tmp_path):
    from typer.testing import CliRunner

    from deepscope.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "show", "shapeset", "-n", "4", "--option", "raster=bogus"])
    assert result.exit_code == 2 and "raster='bogus' is not known; choose one of: pygame, exact" in result.output
    out = tmp_path / "xy.png"
    result = runner.invoke(app, ["data", "show", "shapeset", "-n", "4", "-o", str(out), "--option", "layout=xy"])
    assert result.exit_code == 0 and out.exists(), result.output
