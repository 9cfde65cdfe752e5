"""Tiled application of an upscaling function, with overlap and seamless blending.

Used by the engine (ncnn on the CPU/GPU) and by the SageMaker provider (tiles sent as separate requests), so there
is one tiler. Along each axis the image is cut into the fewest tiles of at most ``tile`` pixels that overlap by at
least ``overlap`` (n = ceil((side - overlap) / (tile - overlap))), all of one size (ceil((side + (n - 1) * overlap)
/ n)) and spread evenly, so the only pixels a network computes twice are the overlaps (:func:`cover`). With an
area budget (``max_pixels``, the engine's on the CPU) the rows and columns are chosen together (:func:`plan`).

In each overlap the two neighbours' weights ramp linearly in opposite directions over the same pixels, starting
``overlap // 4`` pixels in from each tile's edge, so the few pixels next to a tile edge (where a network sees zero
padding instead of the real neighbours) never reach the output, and the weights add up to exactly one: each tile
is written into the output once (overlaps added to what the previous tiles wrote), with no weight plane and no
division. Image borders are not tile edges and keep full weight.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def _sides(length: int, n: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and the common side of ``n`` tiles spread evenly over ``length``, overlapping by at least
    ``overlap``."""
    if n <= 1:
        return [0], length
    side = -(-(length + (n - 1) * overlap) // n)
    return [i * (length - side) // (n - 1) for i in range(n)], side


def _count(length: int, tile: int, overlap: int) -> int:
    """The fewest tiles of at most ``tile`` pixels that cover ``length`` with ``overlap``."""
    if length <= tile:
        return 1
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    return -(-(length - overlap) // step)


def split(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and the common side of the fewest tiles of at most ``tile`` pixels that cover ``length``,
    neighbours overlapping by at least ``overlap``."""
    return _sides(length, _count(length, tile, overlap), overlap)


def _overlap(tile: int, overlap: int) -> int:
    # At most a third of the tile, so no pixel lies in three tiles along one axis (each tile's two overlaps are
    # disjoint and the weights still add up to one).
    return max(0, min(overlap, tile // 3))


Plan = tuple[list[int], int, list[int], int, int]


def plan(height: int, width: int, tile: int, overlap: int, max_pixels: int | None = None) -> Plan:
    """(row starts, tile height, column starts, tile width, overlap) of the grid.

    Without ``max_pixels``: square limits, the fewest tiles of at most ``tile`` pixels a side per axis. With it:
    rectangular tiles of at most ``max_pixels`` pixels (and ``tile`` a side), the grid whose tiles hold the fewest
    pixels in all (what the network computes), then the fewest tiles. A memory budget is an area: 1224x1224 at
    178,956 px a tile is 9 tiles of 419x419 (1.05x its pixels), where tiles of the square's side (416) need 16
    (1.08x)."""
    overlap = _overlap(tile, overlap)
    if max_pixels is None or max_pixels >= tile * tile:
        return (*split(height, tile, overlap), *split(width, tile, overlap), overlap)
    smallest = max(32, 3 * overlap)  # a tile between two others stays larger than its two overlaps
    best: tuple[tuple[int, int], Plan] | None = None
    ny = _count(height, tile, overlap) - 1  # rows of at most ``tile`` pixels
    while True:
        ny += 1
        ys, th = _sides(height, ny, overlap)
        if ny > 1 and th < smallest:
            break
        widest = min(tile, max_pixels // th)
        if widest < width and widest < smallest:
            continue
        xs, tw = split(width, widest, overlap)
        key = (ny * th * len(xs) * tw, ny * len(xs))
        if best is None or key < best[0]:
            best = key, (ys, th, xs, tw, overlap)
    if best is None:  # a budget below the smallest tile: square tiles of its side
        side = max(smallest, min(tile, int(max_pixels**0.5)))
        return (*split(height, side, overlap), *split(width, side, overlap), overlap)
    return best[1]


def grid(height: int, width: int, tile: int, overlap: int, max_pixels: int | None = None) -> list[Tile]:
    ys, h, xs, w, _ = plan(height, width, tile, overlap, max_pixels)
    return [Tile(y, y + h, x, x + w) for y in ys for x in xs]


def tile_count(height: int, width: int, tile: int, overlap: int, max_pixels: int | None = None) -> int:
    return len(grid(height, width, tile, overlap, max_pixels))


def cover(height: int, width: int, tile: int, overlap: int, max_pixels: int | None = None) -> float:
    """Pixels the tiles hold over the image's pixels: 1.0 untiled; what tiling makes a network compute."""
    tiles = grid(height, width, tile, overlap, max_pixels)
    return sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles) / (height * width)


def _segments(
    start: int, end: int, before: int, after: int, scale: int, margin: int
) -> list[tuple[slice, np.ndarray | None, bool]]:
    """Output rows (or columns) of a tile spanning input [start, end) as (slice, weights, shared with the previous
    tile) pieces: a ramp over the ``before`` pixels it shares with the previous tile, full weight (None), a ramp
    over the ``after`` pixels it shares with the next one. The ramp is 0 for ``margin`` pixels from the tile's
    edge, then rises linearly to 1 ``margin`` pixels from the neighbour's edge; the neighbour's ramp is its mirror
    over the same pixels."""
    n_out = (end - start) * scale
    head, tail = before * scale, after * scale
    pieces: list[tuple[slice, np.ndarray | None, bool]] = []

    def ramp(n: int, shared: int) -> np.ndarray:
        d = np.arange(n, dtype=np.float32) + 0.5  # pixel centres from the tile's edge
        width = max((shared - 2 * margin) * scale, 1)
        return np.clip((d - margin * scale) / width, 0.0, 1.0)

    if head:
        pieces.append((slice(0, head), ramp(head, before), True))
    pieces.append((slice(head, n_out - tail), None, False))
    if tail:
        pieces.append((slice(n_out - tail, n_out), ramp(tail, after)[::-1].copy(), False))
    return pieces


def apply(
    image: np.ndarray,
    scale: int,
    fn: TileFn,
    *,
    tile: int,
    overlap: int = 16,
    max_pixels: int | None = None,
    max_workers: int = 1,
    batch_fn: BatchFn | None = None,
    batch: int = 1,
) -> np.ndarray:
    """Run ``fn`` over ``image`` (HxWxC) in tiles and blend the results into an (H*s)x(W*s)xC float32 array.

    Tiles are at most ``tile`` pixels a side and, with ``max_pixels``, at most that many pixels (:func:`plan`).
    ``fn`` receives an hxwxC tile (a view of ``image``) and must return an (h*s)x(w*s)xC array, which is only
    read. An image that fits one tile is passed whole and ``fn``'s result returned as is. With ``max_workers`` > 1
    tiles run concurrently (at most ``2 * max_workers`` in flight); blending happens on the calling thread, in
    grid order. With ``batch_fn`` and ``batch`` > 1, tiles go to ``batch_fn`` ``batch`` at a time (a GPU runs
    them as one batch; all tiles have one size) and ``fn`` is not used.

    The output has the memory layout of the first tile's result: planar (channel by channel) when that is a
    transposed view of planar data, as ncnn's is, so each tile is copied a contiguous row at a time; the returned
    array is then an HxWxC view of planar memory.
    """
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"tiling needs an integer scale, got {scale}")
    fn, batch_fn = _cancellable(fn, batch_fn)
    height, width, channels = image.shape
    ys, th, xs, tw, overlap = plan(height, width, tile, overlap, max_pixels)
    if len(ys) == 1 and len(xs) == 1:
        return _checked(fn(image), image.shape, scale)
    margin = overlap // 4
    tiles = [Tile(y, y + th, x, x + tw) for y in ys for x in xs]

    def shared(starts: list[int], side: int, i: int) -> tuple[int, int]:
        before = starts[i - 1] + side - starts[i] if i > 0 else 0
        after = starts[i] + side - starts[i + 1] if i + 1 < len(starts) else 0
        return before, after

    rows = {y: _segments(y, y + th, *shared(ys, th, i), scale, margin) for i, y in enumerate(ys)}
    cols = {x: _segments(x, x + tw, *shared(xs, tw, i), scale, margin) for i, x in enumerate(xs)}
    outs: list[np.ndarray] = []

    def blend(t: Tile, result: np.ndarray) -> None:
        # Tiles arrive in grid order, so a tile's first pieces (the overlap with the tile above or to its left)
        # are the only ones an earlier tile wrote: those are added, every other piece is written (the output
        # starts uninitialised).
        result = _checked(result, (th, tw, channels), scale)
        if not outs:
            shape = (height * scale, width * scale, channels)
            planar = result.transpose(2, 0, 1).flags.c_contiguous and not result.flags.c_contiguous
            outs.append(
                np.empty(shape[2:] + shape[:2], np.float32).transpose(1, 2, 0)
                if planar
                else np.empty(shape, np.float32)
            )
        region = outs[0][t.y0 * scale : t.y1 * scale, t.x0 * scale : t.x1 * scale]
        for ry, wy, above in rows[t.y0]:
            for rx, wx, left in cols[t.x0]:
                part, dst = result[ry, rx], region[ry, rx]
                if wy is not None and wx is not None:
                    part = part * (wy[:, None] * wx[None, :])[..., None]
                elif wy is not None:
                    part = part * wy[:, None, None]
                elif wx is not None:
                    part = part * wx[None, :, None]
                if not (above or left):
                    dst[...] = part
                else:
                    dst += part

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
            for t, result in _ordered_map(pool, tiles, lambda t: fn(crop(t)), 2 * max_workers):
                blend(t, result)
    return outs[0]


def _ordered_map(
    pool: ThreadPoolExecutor, tiles: list[Tile], call: Callable[[Tile], np.ndarray], limit: int
) -> Iterator[tuple[Tile, np.ndarray]]:
    """``call`` over ``tiles`` on ``pool``, at most ``limit`` in flight, results in the order of ``tiles``."""
    pending: deque[tuple[Tile, Future[np.ndarray]]] = deque()
    try:
        for t in tiles:
            pending.append((t, pool.submit(call, t)))
            if len(pending) >= limit:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _checked(result: np.ndarray, in_shape: tuple[int, ...], scale: int) -> np.ndarray:
    expected = (in_shape[0] * scale, in_shape[1] * scale, in_shape[2])
    if tuple(result.shape) != expected:
        raise ValueError(f"tile function returned shape {tuple(result.shape)}, expected {expected}")
    return result
