"""Image loading errors name the file and say what is wrong; valid files come back decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest

from PIL import Image

from xgenmm_fast.data.image_io import ImageLoadError, decode_image_bytes, load_image


def _encoded(fmt: str, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _check(exc_info, path, *words):
    err = exc_info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and err.path == str(path)
    for w in words:
        assert w in str(err).lower(), str(err)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_valid_images_load_decoded(tmp_path, fmt):
    path = tmp_path / f"ok.{fmt.lower()}"
    path.write_bytes(_encoded(fmt))
    im = load_image(path)
    assert im.size == (64, 48)
    assert im.im is not None  # decoded: pixel data present, file not needed any more
    assert decode_image_bytes(path.read_bytes(), "mem").size == (64, 48)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(path)
    _check(exc_info, path, "not found")


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(tmp_path)
    _check(exc_info, tmp_path, "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(str(path))
    _check(exc_info, path, "empty", "0 bytes")


@pytest.mark.parametrize(
    "fmt, keep", [("JPEG", 0.5), ("PNG", 0.5), ("PNG", 0.95), ("JPEG", 0.1), ("WEBP", 0.6), ("GIF", 0.5)]
)
def test_truncated_file(tmp_path, fmt, keep):
    data = _encoded(fmt, (256, 200))
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(path)
    _check(exc_info, path)
    assert "truncated" in str(exc_info.value) or "corrupt" in str(exc_info.value)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(path)
    _check(exc_info, path, "unrecognised")


def test_text_file_is_unsupported(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(path)
    _check(exc_info, path, "unsupported")


def test_corrupt_png_body(tmp_path):
    data = bytearray(_encoded("PNG", (128, 128)))
    data[100:140] = b"\x00" * 40  # inside the compressed image data: CRC / zlib error on load
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError) as exc_info:
        load_image(path)
    _check(exc_info, path)


def test_decode_bytes_names_the_source():
    with pytest.raises(ImageLoadError) as exc_info:
        decode_image_bytes(b"\x89PNG\r\n\x1a\n garbage", "https://example.com/a.png")
    _check(exc_info, "https://example.com/a.png")
    with pytest.raises(ImageLoadError) as exc_info:
        decode_image_bytes(b"", "shard-3/000017.jpg")
    _check(exc_info, "shard-3/000017.jpg", "empty")
