"""Write the test bench's input: a CSV (header ``image_path``) listing every image and video under a folder,
recursively.

    python testing/testHelp.py ~/photos                  # -> testFile.csv, as the original did
    python testing/testHelp.py ~/photos -o bench.csv     # another file name
    python -m testing.testHelp ~/photos

Files are recognised by their extension, in any case (``.JPG`` as well as ``.jpg``): images .jpg .jpeg .png .webp
.avif .jxl .tif .tiff .bmp .gif; videos .mp4 .mov .m4v .mkv .webm .avi (``--no-videos`` leaves them out; the bench
runs a video as a downscale job, then an upscale job). Paths are written as given (relative stays relative),
sorted, one per row, under the original's header ``image_path`` whatever they are.
Then run ``python testing/testBenchClient.py testFile.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

#: Extensions the bench reads (compared in lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".avif", ".jxl", ".tif", ".tiff", ".bmp", ".gif")
#: Extensions the bench reads as videos (compared in lower case).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
HEADER = "image_path"


def is_video(path: str | Path) -> bool:
    """Whether the bench runs ``path`` as a video (by its extension, whatever its case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_images(folder: str | Path, videos: bool = True) -> Iterator[Path]:
    """Every file under ``folder`` (recursively, sorted) whose extension is an image's, or a video's with
    ``videos``, whatever its case."""
    root = Path(folder)
    wanted = IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ())
    if root.is_file():
        if root.suffix.lower() in wanted:
            yield root
        return
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in wanted and path.is_file():
            yield path


def write_csv(paths: list[Path], out: str | Path) -> int:
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([HEADER])
        writer.writerows([str(p)] for p in paths)
    return len(paths)


def read_csv(path: str | Path) -> list[str]:
    """The image paths of a bench CSV (the ``image_path`` column; a file without that header is read as one path
    per row)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0]]
    if HEADER in header:
        column = header.index(HEADER)
        return [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]
    return [row[0].strip() for row in rows if row[0].strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="testHelp.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="folder to walk (recursively), or a single image")
    parser.add_argument("-o", "--output", default="testFile.csv", help="CSV to write (default testFile.csv)")
    parser.add_argument("--no-videos", action="store_true", help="list images only")
    args = parser.parse_args(argv)
    if not Path(args.folder).exists():
        print(f"error: {args.folder} does not exist", file=sys.stderr)
        return 2
    paths = list(find_images(args.folder, videos=not args.no_videos))
    count, videos = write_csv(paths, args.output), sum(map(is_video, paths))
    print(f"wrote {args.output}: {count - videos} image(s), {videos} video(s) under {args.folder}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
