"""Tiled application of an upscaling function, with overlap and seamless blending.

Used by the engine (ncnn on the CPU/GPU) and by the SageMaker provider (tiles sent as separate requests), so there
is one tiler. Along each axis the image is cut into the fewest tiles of at most ``tile`` pixels that overlap by at
least ``overlap`` (n = ceil((side - overlap) / (tile - overlap))), all of one size (ceil((side + (n - 1) * overlap)
/ n)) and spread evenly, so the only pixels a network computes twice are the overlaps (:func:`cover`).

In each overlap the two neighbours' weights ramp linearly in opposite directions over the same pixels, starting
``overlap // 4`` pixels in from each tile's edge, so the few pixels next to a tile edge (where a network sees zero
padding instead of the real neighbours) never reach the output, and the weights add up to exactly one: tiles are
added into the output once, with no weight plane and no division. Image borders are not tile edges and keep full
weight.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from upscaler.errors import Cancelled

TileFn = Callable[[np.ndarray], np.ndarray]
BatchFn = Callable[[list[np.ndarray]], list[np.ndarray]]

log = logging.getLogger(__name__)

#: Says whether the work in progress is no longer wanted (its client went away, its job was cancelled); asked
#: before every tile (or batch) starts. Set with :func:`cancel_when`; None: nothing cancels.
_CANCEL: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("upscaler_cancel", default=None)


@contextlib.contextmanager
def cancel_when(check: Callable[[], bool]) -> Iterator[None]:
    """Within the block, :func:`apply` on this thread (and the tiles it hands to its pool) stops at the next tile
    boundary once ``check()`` is true, raising :class:`Cancelled`: a tile already running finishes, no other
    starts."""
    token = _CANCEL.set(check)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def _cancellable(fn: TileFn, batch_fn: BatchFn | None) -> tuple[TileFn, BatchFn | None]:
    """``fn`` and ``batch_fn`` asking the caller's cancel check (read here, on the caller's thread) first."""
    check = _CANCEL.get()
    if check is None:
        return fn, batch_fn
    started = [0]

    def stop_if_cancelled() -> None:
        if check():
            log.info("upscale cancelled at a tile boundary", extra={"tiles_started": started[0]})
            raise Cancelled(f"cancelled after {started[0]} tiles: the work is no longer wanted")
        started[0] += 1

    def one(tile: np.ndarray) -> np.ndarray:
        stop_if_cancelled()
        return fn(tile)

    def many(tiles: list[np.ndarray]) -> list[np.ndarray]:
        stop_if_cancelled()
        assert batch_fn is not None
        return batch_fn(tiles)

    return one, (many if batch_fn is not None else None)


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def split(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and the common side of the fewest tiles of at most ``tile`` pixels that cover ``length``,
    neighbours overlapping by at least ``overlap``."""
    if length <= tile:
        return [0], length
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    n = -(-(length - overlap) // step)
    side = -(-(length + (n - 1) * overlap) // n)
    return [i * (length - side) // (n - 1) for i in range(n)], side


def _overlap(tile: int, overlap: int) -> int:
    # At most a third of the tile, so no pixel lies in three tiles along one axis (each tile's two overlaps are
    # disjoint and the weights still add up to one).
    return max(0, min(overlap, tile // 3))


def grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    overlap = _overlap(tile, overlap)
    (ys, h), (xs, w) = split(height, tile, overlap), split(width, tile, overlap)
    return [Tile(y, y + h, x, x + w) for y in ys for x in xs]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    return len(grid(height, width, tile, overlap))


def cover(height: int, width: int, tile: int, overlap: int) -> float:
    """Pixels the tiles hold over the image's pixels: 1.0 untiled; what tiling makes a network compute."""
    tiles = grid(height, width, tile, overlap)
    return sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles) / (height * width)


def _segments(
    start: int, end: int, before: int, after: int, scale: int, margin: int
) -> list[tuple[slice, np.ndarray | None]]:
    """Output rows (or columns) of a tile spanning input [start, end) as (slice, weights) pieces: a ramp over the
    ``before`` pixels it shares with the previous tile, full weight (None), a ramp over the ``after`` pixels it
    shares with the next one. The ramp is 0 for ``margin`` pixels from the tile's edge, then rises linearly to 1
    ``margin`` pixels from the neighbour's edge; the neighbour's ramp is its mirror over the same pixels."""
    n_out = (end - start) * scale
    head, tail = before * scale, after * scale
    pieces: list[tuple[slice, np.ndarray | None]] = []

    def ramp(n: int, shared: int) -> np.ndarray:
        d = np.arange(n, dtype=np.float32) + 0.5  # pixel centres from the tile's edge
        width = max((shared - 2 * margin) * scale, 1)
        return np.clip((d - margin * scale) / width, 0.0, 1.0)

    if head:
        pieces.append((slice(0, head), ramp(head, before)))
    pieces.append((slice(head, n_out - tail), None))
    if tail:
        pieces.append((slice(n_out - tail, n_out), ramp(tail, after)[::-1].copy()))
    return pieces


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
    """Run ``fn`` over ``image`` (HxWxC) in tiles and blend the results into an (H*s)x(W*s)xC float32 array.

    ``fn`` receives an hxwxC tile (a view of ``image``) and must return an (h*s)x(w*s)xC array, which is only
    read. An image that fits one tile is passed whole and ``fn``'s result returned as is. With ``max_workers`` > 1
    tiles run concurrently (at most ``2 * max_workers`` in flight); blending happens on the calling thread. With
    ``batch_fn`` and ``batch`` > 1, tiles go to ``batch_fn`` ``batch`` at a time (a GPU runs them as one batch;
    all tiles have one size) and ``fn`` is not used.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"tiling needs an integer scale, got {scale}")
    fn, batch_fn = _cancellable(fn, batch_fn)
    height, width, channels = image.shape
    if height <= tile and width <= tile:
        return _checked(fn(image), image.shape, scale)
    overlap = _overlap(tile, overlap)
    margin = overlap // 4
    (ys, th), (xs, tw) = split(height, tile, overlap), split(width, tile, overlap)
    tiles = [Tile(y, y + th, x, x + tw) for y in ys for x in xs]

    def shared(starts: list[int], side: int, i: int) -> tuple[int, int]:
        before = starts[i - 1] + side - starts[i] if i > 0 else 0
        after = starts[i] + side - starts[i + 1] if i + 1 < len(starts) else 0
        return before, after

    rows = {y: _segments(y, y + th, *shared(ys, th, i), scale, margin) for i, y in enumerate(ys)}
    cols = {x: _segments(x, x + tw, *shared(xs, tw, i), scale, margin) for i, x in enumerate(xs)}
    out = np.zeros((height * scale, width * scale, channels), dtype=np.float32)

    def blend(t: Tile, result: np.ndarray) -> None:
        result = _checked(result, (th, tw, channels), scale)
        region = out[t.y0 * scale : t.y1 * scale, t.x0 * scale : t.x1 * scale]
        for ry, wy in rows[t.y0]:
            for rx, wx in cols[t.x0]:
                part = result[ry, rx]
                if wy is None and wx is None:
                    region[ry, rx] += part
                elif wx is None:
                    region[ry, rx] += part * wy[:, None, None]
                elif wy is None:
                    region[ry, rx] += part * wx[None, :, None]
                else:
                    region[ry, rx] += part * (wy[:, None] * wx[None, :])[..., None]

    def crop(t: Tile) -> np.ndarray:
        return image[t.y0 : t.y1, t.x0 : t.x1]

    if batch_fn is not None and batch > 1:
        for i in range(0, len(tiles), batch):
            chunk = tiles[i : i + batch]
            for t, result in zip(chunk, batch_fn([crop(t) for t in chunk]), strict=True):
                blend(t, result)
    elif max_workers <= 1:
        for t in tiles:
            blend(t, fn(crop(t)))
    else:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tile") as pool:
            for t, result in _bounded_map(pool, tiles, lambda t: fn(crop(t)), 2 * max_workers):
                blend(t, result)
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
