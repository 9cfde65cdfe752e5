"""Write the test bench's input: a CSV (header ``image_path``) listing every image under a folder, recursively.

    python testing/testHelp.py ~/photos                  # -> testFile.csv, as the original did
    python testing/testHelp.py ~/photos -o bench.csv     # another file name
    python -m testing.testHelp ~/photos

Images are recognised by their extension, in any case (``.JPG`` as well as ``.jpg``): .jpg .jpeg .png .webp .avif
.tif .tiff .bmp .gif. Paths are written as given (relative stays relative), sorted, one per row.
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
HEADER = "image_path"


def find_images(folder: str | Path) -> Iterator[Path]:
    """Every file under ``folder`` (recursively, sorted) whose extension is an image's, whatever its case."""
    root = Path(folder)
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            yield root
        return
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
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
    args = parser.parse_args(argv)
    if not Path(args.folder).exists():
        print(f"error: {args.folder} does not exist", file=sys.stderr)
        return 2
    count = write_csv(list(find_images(args.folder)), args.output)
    print(f"wrote {args.output}: {count} image(s) under {args.folder}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
