"""Shapeset-3x2: grey images of one or two triangles, parallelograms and ellipses, generated on the fly.

A batched re-implementation of the authors' generator (Glorot & Bengio 2010, repository glorotxa/Shapeset,
``polygongen.py`` with the scale, grey-level and overlap parameters of ``examplecurripolygen.py``). Every object
starts as a regular polygon of radius 0.5 (3, 4 or 20 vertices; the ellipse is a 20-gon), is turned by up to half
its symmetry angle, stretched by an anisotropic scale of 0.2 to 0.8 of the image on each axis (triangle -> any
triangle, square -> parallelogram, 20-gon -> ellipse), rotated by a uniform angle and placed at a uniform position
that keeps it one pixel inside the image. Grey levels are integers 0..255 divided by 255: foreground 140..255,
background 0..114 (0.55-1.0 and 0-0.45), the two ranges swapped for half of the images; each object has its own
level and the second object is painted over the first. The second object covers at most half of the first object's
pixels, measured exactly on the raster (rejection sampling of its scale and position, as in the authors' code).

Everything is vectorized over the batch with torch; nothing loops over images. Differences from the authors'
code: rotations are continuous instead of 256 steps; the "back-rotation" after stretching is dropped (a uniform
rotation follows it, so the distribution is the same); the overlap is measured exactly on the raster instead of
estimated from projections; an image is never left with fewer objects than drawn (the authors give up after
50 rejections), so the class frequencies are exactly those of :func:`class_frequencies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CLASS_NAMES",
    "MAX_OVERLAP",
    "SHAPE_NAMES",
    "Scene",
    "class_frequencies",
    "generate",
    "label_of",
    "polygon_masks",
    "polygon_spans",
    "regular_polygon",
    "render",
    "sample_scenes",
    "span_areas",
    "span_masks",
]

SHAPE_NAMES = ["triangle", "parallelogram", "ellipse"]
N_VERTICES = (3, 4, 20)  # the authors' ellipse is a 20-sided polygon
MAX_VERTICES = max(N_VERTICES)
CLASS_NAMES = [
    "triangle",
    "parallelogram",
    "ellipse",
    "triangle+parallelogram",
    "parallelogram+ellipse",
    "triangle+ellipse",
    "two triangles",
    "two parallelograms",
    "two ellipses",
]
# class of an image with two objects, indexed by their shapes (order does not matter)
_PAIR_CLASS = ((6, 3, 5), (3, 7, 4), (5, 4, 8))
# (number of objects, first shape, second shape) of each class, for the balanced mode
_CLASS_OBJECTS = ((1, 0, 0), (1, 1, 0), (1, 2, 0), (2, 0, 1), (2, 1, 2), (2, 0, 2), (2, 0, 0), (2, 1, 1), (2, 2, 2))

SCALE_RANGE = (0.2, 0.8)  # object extent per axis, as a fraction of the image side
DARK_LEVELS = (0, 114)  # int(0.00 * 255) .. int(0.45 * 255), inclusive
BRIGHT_LEVELS = (140, 255)  # int(0.55 * 255) .. int(1.00 * 255), inclusive
MAX_OVERLAP = 0.5  # the second object may cover at most this fraction of the first one's pixels
MARGIN = 1.0  # pixels kept free between an object's bounding box and the image border
MAX_REJECTION_ROUNDS = 1000
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))


def class_frequencies(balanced: bool = False) -> Tensor:
    """Probability of each of the 9 classes: uniform if ``balanced``, else the authors' generator.

    The authors draw the number of objects uniformly from {1, 2} and each shape uniformly from the 3 types:
    a single shape has probability 1/2 * 1/3 = 1/6, a mixed pair 1/2 * 2/9 = 1/9, a same-shape pair 1/18.
    """
    if balanced:
        return torch.full((9,), 1 / 9, dtype=torch.float64)
    return torch.tensor([1 / 6] * 3 + [1 / 9] * 3 + [1 / 18] * 3, dtype=torch.float64)


def label_of(count: Tensor, shapes: Tensor) -> Tensor:
    """Class of each image from its number of objects (n,) and their shapes (n, 2): the set of shapes present."""
    pair = torch.tensor(_PAIR_CLASS, device=shapes.device)
    first, second = shapes[:, 0].clamp(min=0), shapes[:, 1].clamp(min=0)
    return torch.where(count == 1, first, pair[first, second])


def regular_polygon(n: int, pad_to: int = MAX_VERTICES) -> Tensor:
    """The ``n`` vertices (x, y) of the authors' regular polygon of radius 0.5 with a horizontal bottom edge.

    Padded to ``pad_to`` rows by repeating the last vertex (a zero-length edge leaves the polygon unchanged).
    """
    t = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * (t / n + 1 / (2 * n) + 1 / 4)
    points = 0.5 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return torch.cat([points, points[-1:].expand(pad_to - n, 2)]).float()


def polygon_spans(vertices: Tensor, size: int) -> Tensor:
    """Rasterize convex polygons as row spans: (..., size, 2) float, the first and last column inside each row.

    Vertices (..., V, 2) are given as (x, y) in pixels, clockwise or counter-clockwise, repeats allowed.
    Pixel (row i, column j) is inside when its centre (j + 0.5, i + 0.5) lies in the closed half-plane of
    every edge (a point is inside a convex polygon iff it is on the inner side of all its edges). On a row
    each edge bounds x from one side, so a row's inside is one interval: O(V * size) per polygon. An empty
    row has first > last.
    """
    batch, n_vertices = vertices.shape[:-2], vertices.shape[-2]
    v = vertices.reshape(-1, n_vertices, 2)
    w = v.roll(-1, dims=-2)
    e = w - v  # edge vectors
    twice_area = (v[..., 0] * w[..., 1] - w[..., 0] * v[..., 1]).sum(-1, keepdim=True)
    sign = torch.where(twice_area < 0, -1.0, 1.0).to(v.dtype)
    # inside edge k  <=>  cross(e_k, p - v_k) * sign >= 0  <=>  b_k * x + a_k * y + c_k >= 0
    b = -e[..., 1] * sign
    a = e[..., 0] * sign
    c = (e[..., 1] * v[..., 0] - e[..., 0] * v[..., 1]) * sign
    # b > 0: x >= slope * y + offset;  b < 0: x <= slope * y + offset;  b == 0: a row condition a * y + c >= 0.
    # An edge that does not bound a side gets slope 0 and an offset outside the image, which the clamp removes.
    safe_b = torch.where(b == 0, 1.0, b)
    slope, offset = -a / safe_b, -c / safe_b
    y = torch.arange(size, dtype=v.dtype, device=v.device) + 0.5
    rows = torch.stack([y, torch.ones_like(y)])  # (2, size): one matrix product evaluates every edge on every row
    bounds = []
    for side, outside in ((b > 0, -1.0), (b < 0, size + 1.0)):
        line = torch.stack([torch.where(side, slope, 0.0), torch.where(side, offset, outside)], dim=-1)
        bounds.append((line.view(-1, 2) @ rows).view(-1, n_vertices, size))
    lo, hi = bounds[0].amax(-2), bounds[1].amin(-2)
    flat = b == 0
    safe_a = torch.where(a == 0, 1.0, a)
    y_min = torch.where(flat & (a > 0), -c / safe_a, -math.inf).amax(-1, keepdim=True)
    y_max = torch.where(flat & (a < 0), -c / safe_a, math.inf).amin(-1, keepdim=True)
    first = (lo - 0.5).ceil().clamp(0, size)
    last = torch.where((y >= y_min) & (y <= y_max), (hi - 0.5).floor().clamp(-1, size - 1), -1.0)
    return torch.stack([first, last], dim=-1).view(*batch, size, 2)


def span_masks(spans: Tensor, size: int) -> Tensor:
    """Boolean masks (..., size, size) from row spans (..., size, 2).

    Column j is inside [first, last] iff (j - first) * (j - last) <= 0: one matrix product for all rows.
    """
    first, last = spans[..., 0], spans[..., 1]
    empty = first > last
    first, last = torch.where(empty, -1.0, first), torch.where(empty, -1.0, last)
    quadratic = torch.stack([torch.ones_like(first), -(first + last), first * last], dim=-1)
    j = torch.arange(size, dtype=spans.dtype, device=spans.device)
    columns = torch.stack([j * j, j, torch.ones_like(j)])
    return (quadratic.view(-1, 3) @ columns).view(*spans.shape[:-1], size) <= 0


def span_areas(spans: Tensor) -> Tensor:
    """Number of pixels covered by row spans (..., size, 2)."""
    return (spans[..., 1] - spans[..., 0] + 1).clamp(min=0).sum(-1)


def polygon_masks(vertices: Tensor, size: int) -> Tensor:
    """Rasterize convex polygons: boolean masks (..., size, size) from vertices (..., V, 2) given as (x, y).

    Pixel (row i, column j) is inside when its centre (j + 0.5, i + 0.5) is inside or on the polygon.
    """
    return span_masks(polygon_spans(vertices, size), size)


@dataclass
class Scene:
    """What was drawn in a batch of Shapeset images (object slot 1 is painted over slot 0)."""

    count: Tensor  # (n,) number of objects, 1 or 2
    shapes: Tensor  # (n, 2) shape ids 0 triangle, 1 parallelogram, 2 ellipse; -1 for an absent second object
    vertices: Tensor  # (n, 2, 20, 2) polygon vertices (x, y) in pixels
    spans: Tensor  # (n, 2, size, 2) first and last column of each object on each row; empty when absent
    fg: Tensor  # (n, 2) grey level 0..255 of each object
    bg: Tensor  # (n,) grey level 0..255 of the background
    labels: Tensor  # (n,) class 0..8

    @property
    def size(self) -> int:
        return self.spans.shape[-2]

    def masks(self) -> Tensor:
        """(n, 2, size, size) bool: the pixels of each object before painting (all False when absent)."""
        return span_masks(self.spans, self.size)


_BASE_POLYGONS = torch.stack([regular_polygon(n) for n in N_VERTICES])


def _rotate(points: Tensor, angle: Tensor) -> Tensor:
    """Rotate points (..., V, 2) by ``angle`` (...,): a product with exp(i angle) in the complex plane."""
    turn = torch.polar(torch.ones_like(angle), angle).unsqueeze(-1)
    return torch.view_as_real(torch.view_as_complex(points.contiguous()) * turn)


def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator) -> Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device)
    return lo + (hi - lo) * u


def _place(shapes: Tensor, turn: Tensor, scale: Tensor, angle: Tensor, where: Tensor, size: int) -> Tensor:
    """Vertices of objects: regular polygon, turned, stretched by ``scale`` (pixels), rotated, then placed.

    ``where`` in [0, 1)^2 picks the position uniformly among those that keep the bounding box ``MARGIN`` pixels
    inside the image. An object too large for that on an axis gets a position uniform between the two reversed
    limits, so it reaches past both margins (numpy's ``uniform(low, high)`` with low > high, as in the authors'
    code); only a few objects stretched near 0.8 and turned near 45 degrees are that large.
    """
    base = _BASE_POLYGONS.to(shapes.device)[shapes]
    points = _rotate(_rotate(base, turn) * scale.unsqueeze(-2), angle)
    lo = MARGIN - points.amin(-2)
    hi = size - MARGIN - points.amax(-2)
    return points + (lo + (hi - lo) * where).unsqueeze(-2)


def _sample_size(m: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-axis extents in pixels, larger first (the authors keep the stretched base horizontal), and positions."""
    scale = _uniform((m, 2), *SCALE_RANGE, generator) * size
    scale = scale.sort(dim=-1, descending=True).values
    return scale, torch.rand((m, 2), generator=generator, device=generator.device)


def _object_spans(vertices: Tensor, shapes: Tensor, size: int) -> Tensor:
    """:func:`polygon_spans` of objects (..., 20, 2), each with only its shape's vertices (2x faster than padded)."""
    spans = vertices.new_empty(*shapes.shape, size, 2)
    for shape, n in enumerate(N_VERTICES):
        where = (shapes == shape).nonzero(as_tuple=True)
        spans[where] = polygon_spans(vertices[where][..., :n, :], size)
    return spans


def _too_much_overlap(spans: Tensor) -> Tensor:
    """True where object 1 covers more than ``MAX_OVERLAP`` of object 0's pixels (exact, from row spans)."""
    first = torch.maximum(spans[:, 0, :, 0], spans[:, 1, :, 0])
    last = torch.minimum(spans[:, 0, :, 1], spans[:, 1, :, 1])
    covered = (last - first + 1).clamp(min=0).sum(-1)
    return covered > MAX_OVERLAP * span_areas(spans[:, 0])


def _check(size: int, value_range) -> tuple[float, float]:
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size={size!r} is not allowed; choose an integer >= 8 (the paper uses 32)")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if (lo, hi) not in VALUE_RANGES:
        raise ValueError(f"value_range={value_range!r} is not known; choose one of: (0, 1), (-1, 1)")
    return lo, hi


def sample_scenes(n: int, generator: torch.Generator, *, size: int = 32, balanced: bool = False) -> Scene:
    """Draw ``n`` Shapeset scenes with ``generator`` (its device is where everything is computed).

    ``balanced=False`` gives the authors' class frequencies (see :func:`class_frequencies`); ``balanced=True``
    draws the class uniformly, then its objects in a random order.
    """
    _check(size, (0, 1))
    g, dev = generator, generator.device
    if balanced:
        objects = torch.tensor(_CLASS_OBJECTS, device=dev)[torch.randint(0, 9, (n,), generator=g, device=dev)]
        count, shapes = objects[:, 0], objects[:, 1:]
        swap = (torch.rand(n, generator=g, device=dev) < 0.5) & (count == 2)
        shapes = torch.where(swap.unsqueeze(-1), shapes.flip(-1), shapes)
    else:
        count = torch.randint(1, 3, (n,), generator=g, device=dev)
        shapes = torch.randint(0, 3, (n, 2), generator=g, device=dev)
    two = count == 2

    # one pre-stretch turn per object within the polygon's symmetry, a uniform final rotation
    half_sector = math.pi / torch.tensor(N_VERTICES, dtype=torch.float32, device=dev)[shapes]
    turn = _uniform((n, 2), -1.0, 1.0, g) * half_sector
    angle = _uniform((n, 2), 0.0, 2 * math.pi, g)
    scale, where = _sample_size(2 * n, size, g)
    vertices = _place(shapes, turn, scale.view(n, 2, 2), angle, where.view(n, 2, 2), size)
    spans = _object_spans(vertices, shapes, size)
    spans[:, 1, :, 1] = torch.where(two.unsqueeze(-1), spans[:, 1, :, 1], -1.0)  # no second object: empty rows

    # rejection sampling: redraw the second object's scale and position where it hides too much of the first
    todo = (two & _too_much_overlap(spans)).nonzero().squeeze(1)
    rounds = 0
    while todo.numel() > 0:
        rounds += 1
        if rounds > MAX_REJECTION_ROUNDS:
            raise RuntimeError(f"Shapeset overlap rejection did not converge in {MAX_REJECTION_ROUNDS} rounds")
        scale, where = _sample_size(todo.numel(), size, g)
        new = _place(shapes[todo, 1], turn[todo, 1], scale, angle[todo, 1], where, size)
        vertices[todo, 1] = new
        spans[todo, 1] = polygon_spans(new, size)  # few rows: one padded call beats three small ones
        todo = todo[_too_much_overlap(spans[todo])]

    # grey levels: bright objects on a dark background, swapped for half of the images
    swap = torch.rand(n, generator=g, device=dev) < 0.5
    dark = torch.randint(DARK_LEVELS[0], DARK_LEVELS[1] + 1, (n, 3), generator=g, device=dev)
    bright = torch.randint(BRIGHT_LEVELS[0], BRIGHT_LEVELS[1] + 1, (n, 3), generator=g, device=dev)
    bg = torch.where(swap, bright[:, 0], dark[:, 0])
    fg = torch.where(swap.unsqueeze(-1), dark[:, 1:], bright[:, 1:])

    shapes = torch.where(two.unsqueeze(-1) | (torch.arange(2, device=dev) == 0), shapes, -1)
    return Scene(count, shapes, vertices, spans, fg, bg, label_of(count, shapes))


def render(scene: Scene, value_range=(0, 1)) -> Tensor:
    """Paint a scene: (n, 1, size, size) float32, background first, then object 0, then object 1."""
    lo, hi = _check(scene.size, value_range)
    levels = torch.cat([scene.bg.unsqueeze(1), scene.fg], dim=1).float()
    values = (levels / 255 * (hi - lo) + lo).view(-1, 3, 1, 1)  # the authors' x / 255, or (x / 255) * 2 - 1
    masks = scene.masks()
    image = torch.where(masks[:, 0], values[:, 1], values[:, 0])
    return torch.where(masks[:, 1], values[:, 2], image).unsqueeze(1)


def generate(
    n: int, generator: torch.Generator, *, size: int = 32, balanced: bool = False, value_range=(0, 1)
) -> tuple[Tensor, Tensor]:
    """``n`` Shapeset-3x2 images (n, 1, size, size) float32 and their classes (n,) int64, on the generator's device.

    Deterministic given the generator's state (Glorot & Bengio 2010; the authors' generator glorotxa/Shapeset).
    """
    _check(size, value_range)
    scene = sample_scenes(n, generator, size=size, balanced=balanced)
    return render(scene, value_range), scene.labels
