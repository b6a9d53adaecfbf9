"""Image loading with errors that name the file.

``load_image(path)`` and ``decode_image_bytes(data, name)`` return a fully decoded PIL image
(``.load()`` already called, so decode errors surface here and not in a later resize) or raise
``ImageLoadError`` (a ValueError) whose message contains the path and the reason: missing file,
directory, empty file, unrecognised format, truncated or corrupt data, too large.
"""

from __future__ import annotations

import io
import os
from typing import Union

from PIL import Image, UnidentifiedImageError

PathLike = Union[str, "os.PathLike[str]"]


class ImageLoadError(ValueError):
    """An image file or buffer could not be decoded. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path!r}: {reason}")


def load_image(path: PathLike) -> Image.Image:
    """Open and fully decode an image file."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageLoadError(p, "file not found")
    if os.path.isdir(p):
        raise ImageLoadError(p, "is a directory, expected an image file")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read file ({exc.strerror or exc})") from exc
    return decode_image_bytes(data, p)


def decode_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an encoded image held in memory; ``name`` (a path or URL) is used in errors."""
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError(name, f"unsupported or unrecognised image format ({len(data)} bytes)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"image too large ({exc})") from exc
    except Exception as exc:  # Pillow plugins raise many types on malformed headers
        raise ImageLoadError(name, f"corrupt image header ({type(exc).__name__}: {exc})") from exc
    fmt = image.format or "unknown format"
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"image too large ({exc})") from exc
    except Exception as exc:  # OSError "image file is truncated", SyntaxError, struct.error, ...
        raise ImageLoadError(name, f"truncated or corrupt {fmt} data ({type(exc).__name__}: {exc})") from exc
    return image
