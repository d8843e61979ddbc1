"""Polygon rasterizers for Shapeset, vectorized over whole batches of polygons.

Two fill rules, both taking vertices (..., V, 2) as (x, y) in pixels, where pixel (row i, column j) is the
unit square [j, j + 1) x [i, i + 1):

- :func:`scanline_masks`, the rule of the authors' generator (Glorot & Bengio 2010, repository glorotxa/Shapeset,
  ``buildfeaturespolygon.py``, ``buildimage``, which calls ``pygame.draw.polygon``): pygame 1.8's ``src/draw.c``
  truncates the vertices to integers (``TwoShortsFromObj``) and fills integer scanlines (``draw_fillpoly``), each
  span including both end pixels (``drawhorzlineclip``).
- :func:`polygon_masks` (and its row spans :func:`polygon_spans`), the exact rule: a pixel is inside when its
  centre is inside the float polygon.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["polygon_masks", "polygon_spans", "scanline_masks", "span_areas", "span_masks"]


def scanline_masks(vertices: Tensor, size: int) -> Tensor:
    """Fill polygons as pygame 1.8's ``draw_fillpoly`` does: boolean masks (..., size, size) from (..., V, 2).

    The rule, from ``src/draw.c`` of pygame (functions ``polygon``, ``draw_fillpoly``, ``drawhorzlineclip``):

    1. each vertex is truncated toward zero to integers (x, y) (Python's ``int()`` in ``TwoShortsFromObj``);
    2. for every integer row y, every non-horizontal edge with ends y1 < y2 (x1, x2 the matching x) is cut
       when y1 <= y < y2, or when y is the polygon's largest y and y1 < y <= y2 (so the last row is drawn);
       the cut is at x = x1 + (y - y1) * (x2 - x1) / (y2 - y1), the quotient truncated toward zero (C ``int``
       division);
    3. the cuts of a row are sorted and taken in pairs; each pair fills columns x_a..x_b, both ends included,
       clipped to the image.

    Repeated vertices make zero-length edges, which change nothing. Everything is computed on whole batches:
    (polygons, rows, edges) tensors, one sort along the edges, no Python loop over polygons or rows.
    """
    batch, n_vertices = vertices.shape[:-2], vertices.shape[-2]
    v = vertices.reshape(-1, 1, n_vertices, 2).trunc().float()  # (P, 1, V, 2): integers, exact in float32
    x, y = v[..., 0], v[..., 1]
    x_prev, y_prev = x.roll(1, -1), y.roll(1, -1)  # edge k joins vertex k - 1 to vertex k
    up = y_prev < y
    y1, y2 = torch.minimum(y_prev, y), torch.maximum(y_prev, y)
    x1, x2 = torch.where(up, x_prev, x), torch.where(up, x, x_prev)
    top = y.amax(-1, keepdim=True)  # the largest y ("maxy" in draw.c)
    row = torch.arange(size, dtype=v.dtype, device=v.device).view(1, size, 1)
    cut = ((row >= y1) & (row < y2)) | ((row == top) & (row > y1) & (row <= y2))  # (P, size, V); y1 == y2: never
    step = ((row - y1) * (x2 - x1) / (y2 - y1).clamp(min=1)).trunc()  # small integers: the float quotient is exact
    xs = torch.where(cut, x1 + step, math.inf).sort(-1).values
    pairs = int(cut.sum(-1).max()) // 2 if cut.numel() else 0
    column = torch.arange(size, dtype=v.dtype, device=v.device)
    mask = torch.zeros(v.shape[0], size, size, dtype=torch.bool, device=v.device)
    for k in range(pairs):  # at most V / 2 spans per row (one for a convex polygon)
        first, last = xs[..., 2 * k : 2 * k + 1], xs[..., 2 * k + 1 : 2 * k + 2]
        mask |= (column >= first) & (column <= last)  # an unused pair is (inf, inf): empty
    return mask.view(*batch, size, size)


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
    """Rasterize convex polygons exactly: boolean masks (..., size, size) from vertices (..., V, 2) given as (x, y).

    Pixel (row i, column j) is inside when its centre (j + 0.5, i + 0.5) is inside or on the polygon.
    """
    return span_masks(polygon_spans(vertices, size), size)
