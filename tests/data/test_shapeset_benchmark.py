"""benchmarks/shapeset.py's piece counter against a plain breadth-first flood fill written here."""

from __future__ import annotations

import importlib.util
from collections import deque
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "shapeset.py"
_SPEC = importlib.util.spec_from_file_location("shapeset_benchmark", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def flood_fill_pieces(mask: torch.Tensor) -> list[int]:
    """4-connected pieces of each (h, w) mask, one breadth-first search per unvisited foreground pixel."""
    counts = []
    for image in mask.tolist():
        h, w = len(image), len(image[0]) if image else 0
        seen = [[False] * w for _ in range(h)]
        count = 0
        for y in range(h):
            for x in range(w):
                if not image[y][x] or seen[y][x]:
                    continue
                count += 1
                seen[y][x] = True
                queue = deque([(y, x)])
                while queue:
                    cy, cx = queue.popleft()
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < h and 0 <= nx < w and image[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            queue.append((ny, nx))
        counts.append(count)
    return counts


def spiral(size: int) -> torch.Tensor:
    """One square spiral path walled by a one-pixel gap: a single piece whose path is about size**2 / 2 pixels long."""
    m = torch.zeros(size, size, dtype=torch.bool)
    y, x, dy, dx = 0, 0, 0, 1
    m[0, 0] = True
    while True:
        moved = False
        for _ in range(2):  # turn right at most once per step
            ny, nx = y + dy, x + dx
            ay, ax = ny + dy, nx + dx  # the pixel after next must be free to keep a gap to the older turns
            inside = 0 <= ny < size and 0 <= nx < size
            if inside and not m[ny, nx] and not (0 <= ay < size and 0 <= ax < size and m[ay, ax]):
                m[ny, nx] = True
                y, x, moved = ny, nx, True
                break
            dy, dx = dx, -dy
        if not moved:
            return m


def snake(h: int, w: int) -> torch.Tensor:
    """A boustrophedon path: full rows joined alternately at the right and left ends."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[::2] = True
    for row in range(1, h, 2):
        m[row, w - 1 if row % 4 == 1 else 0] = True
    return m


def test_spiral_and_snake_are_single_long_pieces_and_cuts_split_them():
    shapes = [spiral(32), snake(32, 32), spiral(17), snake(31, 5)]
    assert flood_fill_pieces(torch.stack(shapes[:2])) == [1, 1]
    assert spiral(32).sum() > 450  # the path the old one-step-per-round propagation needed hundreds of rounds for
    cut = []
    for m in shapes:  # cut each path at a few of its pixels: it falls into several pieces
        m = m.clone()
        on = m.flatten().nonzero()[:, 0]
        m.view(-1)[on[torch.tensor([len(on) // 5, len(on) // 2, 4 * len(on) // 5])]] = False
        cut.append(m)
    for group in (shapes[:2], shapes[2:3], shapes[3:], cut[:2], cut[2:3], cut[3:]):
        batch = torch.stack(group)
        assert bench.pieces(batch).tolist() == flood_fill_pieces(batch)
    assert all(c > 1 for c in flood_fill_pieces(torch.stack(cut[:2])))


@pytest.mark.parametrize("shape", [(64, 32, 32), (40, 7, 13), (30, 1, 9), (30, 9, 1)])
def test_random_masks_match_flood_fill(shape):
    g = torch.Generator().manual_seed(sum(shape))
    density = torch.rand(shape[0], 1, 1, generator=g)  # from nearly empty to nearly full, through percolation
    mask = torch.rand(shape, generator=g) < density
    counts = flood_fill_pieces(mask)
    assert bench.pieces(mask).tolist() == counts
    assert max(counts) > 1


def test_diagonal_neighbours_are_separate_and_edge_cases():
    checker = (torch.arange(6).view(-1, 1) + torch.arange(6)) % 2 == 0
    masks = torch.stack([checker, ~checker, torch.zeros(6, 6, dtype=torch.bool), torch.ones(6, 6, dtype=torch.bool)])
    assert bench.pieces(masks).tolist() == flood_fill_pieces(masks) == [18, 18, 0, 1]
    assert bench.pieces(torch.zeros(0, 4, 4, dtype=torch.bool)).tolist() == []


def test_shapeset_foregrounds_match_flood_fill():
    from deepscope.data import shapeset as S

    scene = S.sample_scenes(60, torch.Generator().manual_seed(5), raster="pygame")
    x = S.render(scene)[:, 0]
    foreground = x != x[:, 0, 0].view(-1, 1, 1)
    foreground = foreground[foreground.sum((-1, -2)) < 32 * 32 // 2]  # images whose corner pixel is background
    assert bench.pieces(foreground).tolist() == flood_fill_pieces(foreground)
