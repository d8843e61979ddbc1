"""Shapeset-3x2: grey images of one or two triangles, parallelograms and ellipses, generated on the fly.

A batched re-implementation of the authors' generator (Glorot & Bengio 2010, repository glorotxa/Shapeset):
``polygongen.py`` (class ``Polygongen``, methods ``_corners`` and ``iterator``) with the settings "Shapeset-3*2" of
``simpleexemple.py`` (32x32 images, 1-2 objects, 3/4/20 vertices, scale 0.2-0.8, 255 rotation steps, overlap at
most 0.5 with 50 rejections), drawn as ``buildfeaturespolygon.py`` (``buildimage``) draws them, with
``pygame.draw.polygon`` (see :func:`deepscope.data.raster.scanline_masks`).

Every object starts as a regular polygon of radius 0.5 (3, 4 or 20 vertices; the ellipse is a 20-gon), is turned
by a step within its symmetry sector, stretched by an anisotropic scale of 0.2 to 0.8 of the image on each axis
(larger first), turned back so that its base is horizontal again, rotated by one of 254 steps of 2 pi / 255 and
placed at a uniform position that keeps its bounding box one pixel inside the image. Grey levels are integers
0..255 divided by 255: foreground 140..255, background 0..114 (0.55-1.0 and 0-0.45), the two ranges swapped for
half of the images; each object has its own level and the second object is painted over the first.

The second object is redrawn (new scale and position) while its overlap with the first is too large. The
authors' rule (``overlap="projection"``, the default) estimates the overlap from projections on the line between
the two centres and gives up after 50 draws, leaving the image with one object; ``overlap="exact"`` counts the
covered pixels of the first object and never gives up. Rasters: ``raster="pygame"`` (default, the authors' fill)
or ``raster="exact"`` (pixel centres inside the float polygon). Layout: ``layout="yx"`` (default, rows are y, as
everywhere in deepscope) or ``layout="xy"`` (the authors' ``pygame.surfarray`` arrays, indexed [x, y]).

Everything is vectorized over the batch with torch; nothing loops over images. The random stream is torch's,
not numpy's, so the images are the authors' in distribution, not one for one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deepscope.data.raster import polygon_masks, polygon_spans, scanline_masks, span_areas, span_masks
from deepscope.registry import unknown

__all__ = [
    "CLASS_NAMES",
    "LAYOUTS",
    "MAX_OVERLAP",
    "OVERLAPS",
    "RASTERS",
    "SHAPE_NAMES",
    "Scene",
    "class_frequencies",
    "generate",
    "label_of",
    "polygon_masks",
    "polygon_spans",
    "projection_overlap",
    "regular_polygon",
    "render",
    "sample_scenes",
    "scanline_masks",
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
MAX_OVERLAP = 0.5  # the second object may cover at most this fraction of the first one
MARGIN = 1.0  # pixels kept free between an object's bounding box and the image border
ROTATION_STEPS = 255  # the authors' rotation_resolution: angles t * 2 pi / 255
MAX_DRAWS = 50  # the authors' rejectionmax: the second object is dropped when 50 draws are all rejected
MAX_REJECTION_ROUNDS = 1000  # safety net of the modes that never give up
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
RASTERS = ("pygame", "exact")
OVERLAPS = ("projection", "exact")
LAYOUTS = ("yx", "xy")


def class_frequencies(balanced: bool = False) -> Tensor:
    """Probability of each of the 9 classes: uniform if ``balanced``, else the authors' generator.

    The authors draw the number of objects uniformly from {1, 2} and each shape uniformly from the 3 types:
    a single shape has probability 1/2 * 1/3 = 1/6, a mixed pair 1/2 * 2/9 = 1/9, a same-shape pair 1/18.
    (With ``overlap="projection"`` a second object rejected 50 times is dropped, which moves a little of the
    pairs' mass to the singles; the other modes give these frequencies exactly.)
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

    ``n_sided`` in ``Polygongen.__init__`` (glorotxa/Shapeset, ``polygongen.py``). Padded to ``pad_to`` rows by
    repeating the last vertex (a zero-length edge leaves the polygon unchanged). float64, as numpy's.
    """
    t = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * (t / n + 1 / (2 * n) + 1 / 4)
    points = 0.5 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return torch.cat([points, points[-1:].expand(pad_to - n, 2)])


def turn_steps(n: int) -> Tensor:
    """The rotation steps the authors use to turn an n-gon before stretching it (``rot_idx1`` in ``_corners``).

    ``randint(0, 255 // n)`` (Python 2 integer division), and steps above ``254 // (2 n)`` moved to the negative
    side: ``min(255 - 254 // n + k, 254)``. Each entry of the result is equally likely.
    """
    k = torch.arange(ROTATION_STEPS // n)
    wrapped = (ROTATION_STEPS - (ROTATION_STEPS - 1) // n + k).clamp(max=ROTATION_STEPS - 1)
    return torch.where(k > (ROTATION_STEPS - 1) // (2 * n), wrapped, k)


def _area_ratio(n: int) -> float:
    """Area of the regular n-gon over that of its circumscribed circle (``arearatio`` in ``polygongen.py``)."""
    return n * math.sin(2 * math.pi / n) / (2 * math.pi)


@dataclass
class Scene:
    """What was drawn in a batch of Shapeset images (object slot 1 is painted over slot 0)."""

    count: Tensor  # (n,) number of objects, 1 or 2
    shapes: Tensor  # (n, 2) shape ids 0 triangle, 1 parallelogram, 2 ellipse; -1 for an absent second object
    vertices: Tensor  # (n, 2, 20, 2) float64 polygon vertices (x, y) in pixels
    centres: Tensor  # (n, 2, 2) float64 translation of each object (the authors' ``t``)
    scales: Tensor  # (n, 2, 2) float64 stretch of each object in pixels (the authors' ``s``), larger first
    masks: Tensor  # (n, 2, size, size) bool, the pixels of each object before painting (all False when absent)
    fg: Tensor  # (n, 2) grey level 0..255 of each object
    bg: Tensor  # (n,) grey level 0..255 of the background
    labels: Tensor  # (n,) class 0..8
    draws: Tensor  # (n,) draws of the second object (0 when only one object was drawn)

    @property
    def size(self) -> int:
        return self.masks.shape[-1]


_BASE_POLYGONS = torch.stack([regular_polygon(n) for n in N_VERTICES])
_TURN_STEPS = torch.stack(
    [torch.cat([s, s[-1:].expand(ROTATION_STEPS // 3 - len(s))]) for s in map(turn_steps, N_VERTICES)]
)
_TURN_CHOICES = torch.tensor([ROTATION_STEPS // n for n in N_VERTICES])
_AREA_RATIOS = torch.tensor([_area_ratio(n) for n in N_VERTICES], dtype=torch.float64)


def _rotate(points: Tensor, angle: Tensor) -> Tensor:
    """Rotate points (..., V, 2) by ``angle`` (...,): a product with exp(i angle) in the complex plane.

    The authors' ``numpy.dot(points, gen_rot(angle))`` with ``gen_rot = [[c, s], [-s, c]]`` is the same map.
    """
    turn = torch.polar(torch.ones_like(angle), angle).unsqueeze(-1)
    return torch.view_as_real(torch.view_as_complex(points.contiguous()) * turn)


def _place(shapes: Tensor, turn: Tensor, scale: Tensor, angle: Tensor, where: Tensor, size: int):
    """Vertices and centres of objects, as ``Polygongen._corners`` builds them.

    Regular polygon, turned by ``turn``, stretched by ``scale`` (pixels, larger first), turned back by
    -atan(s1 / s0 * tan(turn)) (the exact angle that makes the base horizontal again), rotated by ``angle``, then
    translated: ``where`` in [0, 1)^2 picks the centre uniformly among those that keep the bounding box ``MARGIN``
    pixels inside the image. An object too large for that on an axis gets a centre uniform between the two
    reversed limits (numpy's ``uniform(low, high)`` with low > high, as in the authors' code).
    """
    base = _BASE_POLYGONS.to(shapes.device)[shapes]
    back = -torch.atan(scale[..., 1] / scale[..., 0] * torch.tan(turn))
    points = _rotate(_rotate(_rotate(base, turn) * scale.unsqueeze(-2), back), angle)
    lo = MARGIN - points.amin(-2)
    hi = size - MARGIN - points.amax(-2)
    centre = lo + (hi - lo) * where
    return points + centre.unsqueeze(-2), centre


def _sample_size(m: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per-axis extents in pixels, larger first (the authors keep the stretched base horizontal), and positions."""
    g, dev = generator, generator.device
    u = torch.rand((m, 2), generator=g, device=dev, dtype=torch.float64)
    scale = (SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u) * size
    scale = scale.sort(dim=-1, descending=True).values
    return scale, torch.rand((m, 2), generator=g, device=dev, dtype=torch.float64)


def projection_overlap(
    first: Tensor, first_centre: Tensor, first_scale: Tensor, first_shape: Tensor,
    second: Tensor, centre: Tensor, scale: Tensor, shape: Tensor,
) -> Tensor:  # fmt: skip
    """The authors' estimate of how much a new object covers an earlier one (``Polygongen._corners``).

    The earlier object's centre is first truncated to integers (the authors store it in an int32 array). Both
    objects' vertices are projected on the line joining the centres: ``reach`` = the earlier object's farthest
    projection toward the new one plus the new one's farthest projection toward the earlier one. When ``reach``
    is at least the distance d between the centres, the estimate is
    area(new) / area(earlier) * (1 - 2 ** (-(reach - d) / d)), the areas being s0 * s1 * arearatio(n);
    otherwise it is 0. The authors reject the new object when the estimate exceeds ``MAX_OVERLAP``.
    Vertices (..., V, 2), centres and scales (..., 2), shapes (...,); returns the estimate (...,).
    """
    c0 = first_centre.trunc()
    toward = centre - c0
    d = toward.norm(dim=-1)
    reach = ((first - c0.unsqueeze(-2)) * toward.unsqueeze(-2)).sum(-1).amax(-1) / d
    reach = reach + ((second - centre.unsqueeze(-2)) * -toward.unsqueeze(-2)).sum(-1).amax(-1) / d
    factor = 1 - torch.exp(-(reach - d) / (d / math.log(2)))
    ratios = _AREA_RATIOS.to(shape.device)
    areas = scale.prod(-1) * ratios[shape] / (first_scale.prod(-1) * ratios[first_shape])
    return torch.where(reach >= d, areas * factor, 0.0)  # d == 0 gives NaN, never rejected (as in numpy)


def _rasterize(vertices: Tensor, shapes: Tensor, size: int, raster: str) -> Tensor:
    """Masks (..., size, size) of objects (..., 20, 2), each filled with only its shape's vertices (faster)."""
    fill = scanline_masks if raster == "pygame" else polygon_masks
    masks = torch.zeros(*shapes.shape, size, size, dtype=torch.bool, device=vertices.device)
    for shape, n in enumerate(N_VERTICES):
        where = (shapes == shape).nonzero(as_tuple=True)
        masks[where] = fill(vertices[where][..., :n, :], size)
    return masks


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise unknown(name, value, allowed)
    return value


def _check(size: int, value_range, raster="pygame", overlap="projection", layout="yx") -> tuple[float, float]:
    """Validate the options; returns the value range as two floats. Errors name the key, value and choices."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size={size!r} is not allowed; choose an integer >= 8 (the paper uses 32)")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if (lo, hi) not in VALUE_RANGES:
        raise unknown("value_range", value_range, ["(0, 1)", "(-1, 1)"])
    _choice("raster", raster, RASTERS)
    _choice("overlap", overlap, OVERLAPS)
    _choice("layout", layout, LAYOUTS)
    return lo, hi


def _objects(n: int, balanced: bool, g: torch.Generator) -> tuple[Tensor, Tensor]:
    dev = g.device
    if balanced:
        objects = torch.tensor(_CLASS_OBJECTS, device=dev)[torch.randint(0, 9, (n,), generator=g, device=dev)]
        count, shapes = objects[:, 0], objects[:, 1:]
        swap = (torch.rand(n, generator=g, device=dev) < 0.5) & (count == 2)
        return count, torch.where(swap.unsqueeze(-1), shapes.flip(-1), shapes)
    return torch.randint(1, 3, (n,), generator=g, device=dev), torch.randint(0, 3, (n, 2), generator=g, device=dev)


def sample_scenes(
    n: int,
    generator: torch.Generator,
    *,
    size: int = 32,
    balanced: bool = False,
    raster: str = "pygame",
    overlap: str = "projection",
) -> Scene:
    """Draw ``n`` Shapeset scenes with ``generator`` (its device is where everything is computed).

    ``balanced=False`` gives the authors' class frequencies (see :func:`class_frequencies`); ``balanced=True``
    draws the class uniformly, then its objects in a random order, and never drops the second object (it is
    redrawn until accepted, whatever the overlap rule), so the classes stay uniform. ``raster`` and ``overlap``:
    see the module's docstring.
    """
    _check(size, (0, 1), raster, overlap)
    g, dev = generator, generator.device
    count, shapes = _objects(n, balanced, g)
    two = count == 2

    # rotations in the authors' steps of 2 pi / 255: a turn within the symmetry sector, then 0..253 steps
    choice = (torch.rand((n, 2), generator=g, device=dev) * _TURN_CHOICES.to(dev)[shapes]).long()
    step = 2 * math.pi / ROTATION_STEPS
    turn = _TURN_STEPS.to(dev)[shapes, choice].double() * step
    angle = torch.randint(0, ROTATION_STEPS - 1, (n, 2), generator=g, device=dev).double() * step
    scales, where = _sample_size(2 * n, size, g)
    scales = scales.view(n, 2, 2)
    vertices, centres = _place(shapes, turn, scales, angle, where.view(n, 2, 2), size)
    masks = _rasterize(vertices, shapes, size, raster) if overlap == "exact" else None

    def rejected(rows: Tensor) -> Tensor:
        if overlap == "exact":
            first, second = masks[rows, 0], masks[rows, 1]
            return (first & second).sum((-1, -2)) > MAX_OVERLAP * first.sum((-1, -2))
        v, c, s, k = vertices[rows], centres[rows], scales[rows], shapes[rows]
        return projection_overlap(v[:, 0], c[:, 0], s[:, 0], k[:, 0], v[:, 1], c[:, 1], s[:, 1], k[:, 1]) > MAX_OVERLAP

    # rejection sampling: redraw the second object's scale and position (its shape and rotations stay)
    draws = two.long()
    todo = two.nonzero().squeeze(1)
    todo = todo[rejected(todo)]
    give_up = overlap == "projection" and not balanced
    rounds = 0
    while todo.numel() > 0:
        if give_up:  # the authors keep an image with fewer objects after MAX_DRAWS rejected draws
            dropped = todo[draws[todo] >= MAX_DRAWS]
            count[dropped] = 1
            todo = todo[draws[todo] < MAX_DRAWS]
        rounds += 1
        if rounds > MAX_REJECTION_ROUNDS:
            raise RuntimeError(f"Shapeset overlap rejection did not converge in {MAX_REJECTION_ROUNDS} rounds")
        scale, place = _sample_size(todo.numel(), size, g)
        k = shapes[todo, 1]
        vertices[todo, 1], centres[todo, 1] = _place(k, turn[todo, 1], scale, angle[todo, 1], place, size)
        scales[todo, 1] = scale
        draws[todo] += 1
        if masks is not None:
            masks[todo, 1] = _rasterize(vertices[todo, 1], k, size, raster)
        todo = todo[rejected(todo)]

    two = count == 2
    shapes = torch.where(two.unsqueeze(-1) | (torch.arange(2, device=dev) == 0), shapes, -1)
    if masks is None:
        masks = _rasterize(vertices, shapes, size, raster)  # an absent object (shape -1) has an empty mask
    else:
        masks[:, 1] &= two.view(n, 1, 1)

    # grey levels: bright objects on a dark background, swapped for half of the images
    swap = torch.rand(n, generator=g, device=dev) < 0.5
    dark = torch.randint(DARK_LEVELS[0], DARK_LEVELS[1] + 1, (n, 3), generator=g, device=dev)
    bright = torch.randint(BRIGHT_LEVELS[0], BRIGHT_LEVELS[1] + 1, (n, 3), generator=g, device=dev)
    bg = torch.where(swap, bright[:, 0], dark[:, 0])
    fg = torch.where(swap.unsqueeze(-1), dark[:, 1:], bright[:, 1:])
    return Scene(count, shapes, vertices, centres, scales, masks, fg, bg, label_of(count, shapes), draws)


def render(scene: Scene, value_range=(0, 1), layout: str = "yx") -> Tensor:
    """Paint a scene: (n, 1, size, size) float32, background first, then object 0, then object 1.

    ``layout="xy"`` transposes each image to the authors' [x, y] indexing (``pygame.surfarray.pixels2d``).
    """
    lo, hi = _check(scene.size, value_range, layout=layout)
    levels = torch.cat([scene.bg.unsqueeze(1), scene.fg], dim=1).float()
    values = (levels / 255 * (hi - lo) + lo).view(-1, 3, 1, 1)  # the authors' x / 255, or (x / 255) * 2 - 1
    masks = scene.masks
    image = torch.where(masks[:, 0], values[:, 1], values[:, 0])
    image = torch.where(masks[:, 1], values[:, 2], image).unsqueeze(1)
    return image.transpose(-1, -2).contiguous() if layout == "xy" else image


def generate(
    n: int,
    generator: torch.Generator,
    *,
    size: int = 32,
    balanced: bool = False,
    value_range=(0, 1),
    raster: str = "pygame",
    overlap: str = "projection",
    layout: str = "yx",
) -> tuple[Tensor, Tensor]:
    """``n`` Shapeset-3x2 images (n, 1, size, size) float32 and their classes (n,) int64, on the generator's device.

    Deterministic given the generator's state (Glorot & Bengio 2010; the authors' generator glorotxa/Shapeset,
    ``polygongen.py`` and ``buildfeaturespolygon.py``). The authors' ``simpleexemple.py`` uses
    ``value_range=(-1, 1)`` and ``layout="xy"``; deepscope's defaults are (0, 1) and "yx".
    """
    _check(size, value_range, raster, overlap, layout)
    scene = sample_scenes(n, generator, size=size, balanced=balanced, raster=raster, overlap=overlap)
    return render(scene, value_range, layout), scene.labels
