"""Tiled application of an upscaling function, with overlap and seamless blending.

Used by the engine (ncnn on the CPU/GPU) and by the SageMaker provider (tiles sent as separate requests), so there
is one tiler. Neighbouring tiles overlap by ``overlap`` input pixels. In the overlap each tile's weight ramps
linearly from 0 to 1, starting ``margin`` pixels in from its edge, so the few pixels next to a tile edge (where a
network sees zero padding instead of the real neighbours) never reach the output, and the weights of two
neighbours add up to one. Image borders are not tile edges and keep full weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

TileFn = Callable[[np.ndarray], np.ndarray]
BatchFn = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` with at least ``overlap`` overlap."""
    if length <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    out = list(range(0, length - tile, step))
    out.append(length - tile)
    return out


def grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    ys, xs = starts(height, tile, overlap), starts(width, tile, overlap)
    return [Tile(y, min(y + tile, height), x, min(x + tile, width)) for y in ys for x in xs]


def _ramp(n_out: int, scale: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D weights over ``n_out`` output pixels; ``at_start``/``at_end`` say the side is an image border."""
    w = np.ones(n_out, dtype=np.float32)
    margin = overlap // 4
    width = max((overlap - 2 * margin) * scale, 1)
    d = np.arange(n_out, dtype=np.float32) + 0.5  # distance of each pixel centre from the start edge
    if not at_start:
        w = np.minimum(w, np.clip((d - margin * scale) / width, 0.0, 1.0))
    if not at_end:
        w = np.minimum(w, np.clip((d[::-1] - margin * scale) / width, 0.0, 1.0))
    return w


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(grid(height, width, tile, overlap))


def apply(
    image: np.ndarray,
    scale: int,
    fn: TileFn,
    *,
    tile: int,
    overlap: int = 16,
    max_workers: int = 1,
    batch_fn: BatchFn | None = None,
    batch: int = 1,
) -> np.ndarray:
    """Run ``fn`` over ``image`` (HxWxC float32) in tiles and blend the results into an (H*s)x(W*s)xC array.

    ``fn`` receives an hxwxC tile and must return an (h*s)x(w*s)xC array. With ``max_workers`` > 1 tiles run
    concurrently (at most ``2 * max_workers`` in flight); blending happens on the calling thread. With
    ``batch_fn`` and ``batch`` > 1, tiles of equal size go to ``batch_fn`` ``batch`` at a time (a GPU runs them
    as one batch) and ``fn`` is not used.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"tiling needs an integer scale, got {scale}")
    height, width, channels = image.shape
    if height <= tile and width <= tile:
        return _checked(fn(image), image.shape, scale)
    overlap = max(0, min(overlap, tile // 2))
    tiles = grid(height, width, tile, overlap)
    out = np.zeros((height * scale, width * scale, channels), dtype=np.float32)
    weight = np.zeros((height * scale, width * scale, 1), dtype=np.float32)

    def blend(t: Tile, result: np.ndarray) -> None:
        result = _checked(result, (t.y1 - t.y0, t.x1 - t.x0, channels), scale)
        wy = _ramp(result.shape[0], scale, overlap, t.y0 == 0, t.y1 == height)
        wx = _ramp(result.shape[1], scale, overlap, t.x0 == 0, t.x1 == width)
        w2 = (wy[:, None] * wx[None, :])[..., None]
        region = (slice(t.y0 * scale, t.y1 * scale), slice(t.x0 * scale, t.x1 * scale))
        out[region] += result * w2
        weight[region] += w2

    def crop(t: Tile) -> np.ndarray:
        return image[t.y0 : t.y1, t.x0 : t.x1]

    if batch_fn is not None and batch > 1:
        by_shape: dict[tuple[int, int], list[Tile]] = {}
        for t in tiles:
            by_shape.setdefault((t.y1 - t.y0, t.x1 - t.x0), []).append(t)
        for group in by_shape.values():
            for i in range(0, len(group), batch):
                chunk = group[i : i + batch]
                for t, result in zip(chunk, batch_fn([crop(t) for t in chunk]), strict=True):
                    blend(t, result)
    elif max_workers <= 1:
        for t in tiles:
            blend(t, fn(crop(t)))
    else:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tile") as pool:
            for t, result in _bounded_map(pool, tiles, lambda t: fn(crop(t)), 2 * max_workers):
                blend(t, result)
    np.maximum(weight, 1e-8, out=weight)
    out /= weight
    return out


def _bounded_map(
    pool: ThreadPoolExecutor, tiles: list[Tile], call: Callable[[Tile], np.ndarray], limit: int
) -> Iterator[tuple[Tile, np.ndarray]]:
    pending: dict[Future[np.ndarray], Tile] = {}
    queue = iter(tiles)
    try:
        for t in queue:
            pending[pool.submit(call, t)] = t
            if len(pending) >= limit:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield pending.pop(f), f.result()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield pending.pop(f), f.result()
    finally:
        for f in pending:
            f.cancel()


def _checked(result: np.ndarray, in_shape: tuple[int, ...], scale: int) -> np.ndarray:
    expected = (in_shape[0] * scale, in_shape[1] * scale, in_shape[2])
    if tuple(result.shape) != expected:
        raise ValueError(f"tile function returned shape {tuple(result.shape)}, expected {expected}")
    return result
