"""Image files in and out: decoding with limits, the record that makes exact restoration possible, the codec the
small image is stored with, and re-encoding the upscaled image as the original file was.

    decoded = decode(data, DecodeLimits(max_bytes=..., max_megapixels=...))   # Decoded(pixels, record)
    blob = encode_stored(engine.downscale(decoded.pixels, 4), "avif", 80)     # bytes, with .codec
    metadata = decoded.record.to_metadata()                                   # str -> str, kept with the blob
    ...
    record = ImageRecord.from_metadata(metadata)
    big = engine.upscale(decode_stored(blob), size=(record.width, record.height))
    data, content_type = encode_restored(big, record)                         # the original's format and mode

Decisions, so that nothing surprising happens silently:

* Formats read: JPEG, PNG, WebP, AVIF, JPEG XL, GIF, BMP, TIFF, recognised from their magic bytes (never from a
  name or a MIME type). Anything else is 415; SVG, PDF, HEIC and the like are named in the message.
* Limits come first: bytes before anything, then the header's width x height before any pixel is decoded.
  Pillow's own decompression-bomb guard is left as configured, and also answers 413.
* Animated GIF/WebP/PNG/AVIF are refused (415): one frame of an animation is not the original; store it as video.
  Files with several *still* images keep the first and say so in ``record.note`` / ``record.frames``: a JPEG with
  MPF extras (phones' depth or gain maps), a multi-page TIFF.
* Pixels are kept as stored. EXIF orientation is *not* applied: the EXIF block travels unchanged (orientation is
  copied to ``record.orientation`` for information), so the restored file displays as the original did.
* 16-bit depth is kept end to end: 16-bit grey as Pillow's ``I;16``; 16-bit colour PNG (and TIFF), which Pillow
  would cut to 8 bits, as uint16 RGB(A) arrays through OpenCV (record mode ``RGB;16`` / ``RGBA;16`` / ``LA;16``).
  The stored copy is then a 16-bit PNG whatever the codec asked (Pillow writes AVIF at 8 bits only).
* Alpha survives every stored codec; JPEG has none, so an image with alpha asked for as JPEG is stored as WebP at
  the same quality and the record says ``webp``.
* Palette images are processed in RGB(A) and quantised back to their original palette; CMYK is processed in RGB
  and converted back by grey-component replacement (close, not the original separation; ``record.note`` says so).

See :mod:`.reading`, :mod:`.stored` and :mod:`.restoring` for the details.
"""

from upscaler.media.formats import FORMATS, FormatInfo, content_type_for, extension_for, normalize_format, sniff
from upscaler.media.reading import SUPPORTED_MODES, Decoded, DecodeLimits, decode, estimate_jpeg_quality
from upscaler.media.record import RECORD_MARKER, RECORD_VERSION, ImageRecord, InvalidRecord
from upscaler.media.restoring import encode_restored, target_mode
from upscaler.media.stored import (
    LOSSLESS_CODECS,
    STORED_CODECS,
    StoredBlob,
    decode_stored,
    encode_stored,
    recompress_jpeg,
    reconstruct_jpeg,
)

__all__ = [
    "FORMATS",
    "LOSSLESS_CODECS",
    "RECORD_MARKER",
    "RECORD_VERSION",
    "STORED_CODECS",
    "SUPPORTED_MODES",
    "DecodeLimits",
    "Decoded",
    "FormatInfo",
    "ImageRecord",
    "InvalidRecord",
    "StoredBlob",
    "content_type_for",
    "decode",
    "decode_stored",
    "encode_restored",
    "encode_stored",
    "estimate_jpeg_quality",
    "extension_for",
    "normalize_format",
    "recompress_jpeg",
    "reconstruct_jpeg",
    "sniff",
    "target_mode",
]
