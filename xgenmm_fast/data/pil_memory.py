"""A PIL image's own pixel memory as a numpy array, without copying it.

``np.asarray(image)`` goes through ``Image.tobytes()``: Pillow encodes the image into chunks, joins them
and numpy wraps the result, about 2.4 ms for a 1000 x 700 RGB image on this project's CPU machines, where
a plain 2.1 MB memcpy takes 0.05 ms. For the anyres preprocessing of a batch that conversion was most of
the host time of the CUDA path (bench_preprocess, host_stage_ms). Pillow >= 11.2 exports an image's memory
through the Arrow C data interface (``Image.__arrow_c_array__``) without a copy when its rows lie in one
block (images up to Pillow's 16 MB block size); this module reads that export's two C structs with ctypes
(their layout is fixed by the Arrow C data interface spec) and wraps the pixel buffer as a read-only array
that keeps the export, and with it the image's memory, alive.

Only the layouts the C++ anyres path reads as they are: "L" as (H, W) uint8, and "RGB", "RGBA", "RGBX"
as (H, W, 4) uint8, Pillow's four bytes per pixel (for "RGB" the fourth byte is padding, which the C++
path's four-channel format drops, so results equal those from the (H, W, 3) array). Everything else, and
any export that does not look exactly as expected, gives None: the caller then copies (np.asarray).
"""
from __future__ import annotations

import ctypes

import numpy as np

_FOUR_BYTE_MODES = frozenset({"RGB", "RGBA", "RGBX"})


class _ArrowSchema(ctypes.Structure):
    pass


_ArrowSchema._fields_ = [
    ("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_char_p),
    ("flags", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("children", ctypes.POINTER(ctypes.POINTER(_ArrowSchema))), ("dictionary", ctypes.c_void_p),
    ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]


class _ArrowArray(ctypes.Structure):
    pass


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)), ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.c_void_p), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p),
]

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _PixelOwner:
    """Holds the export's capsules (their destructors release it, and Pillow then drops its reference to
    the image) for as long as a numpy array made from ``__array_interface__`` lives."""

    def __init__(self, capsules, address: int, shape: tuple[int, ...]):
        self._capsules = capsules
        self.__array_interface__ = {"version": 3, "shape": shape, "typestr": "|u1", "data": (address, True)}


def _plain_uint8(schema: _ArrowSchema, array: _ArrowArray, length: int) -> int | None:
    """The data address of an Arrow uint8 array of ``length`` values without nulls or offset, else None."""
    if schema.format != b"C" or array.length != length or array.offset != 0 or array.n_buffers != 2:
        return None
    if array.null_count != 0 and array.buffers[0]:
        return None
    return array.buffers[1] or None


def pixel_view(image) -> np.ndarray | None:
    """The image's pixels as a read-only uint8 array sharing its memory ((H, W) for "L", (H, W, 4) for
    "RGB" / "RGBA" / "RGBX"), or None where that is not possible (other modes, Pillow < 11.2, an image over
    Pillow's block size, an empty image). The image must not be modified while the array is in use."""
    mode = getattr(image, "mode", None)
    if mode != "L" and mode not in _FOUR_BYTE_MODES:
        return None
    export = getattr(image, "__arrow_c_array__", None)
    width, height = image.size
    if export is None or width <= 0 or height <= 0:
        return None
    try:
        capsules = export()
    except ValueError:  # "Image rows are not contiguous in memory": several blocks
        return None
    schema = _ArrowSchema.from_address(_capsule_pointer(capsules[0], b"arrow_schema"))
    array = _ArrowArray.from_address(_capsule_pointer(capsules[1], b"arrow_array"))
    pixels = width * height
    if mode == "L":
        address, shape = _plain_uint8(schema, array, pixels), (height, width)
    else:
        if (schema.format != b"+w:4" or schema.n_children != 1 or array.n_children != 1 or array.length != pixels
                or array.offset != 0 or (array.null_count != 0 and array.n_buffers > 0 and array.buffers[0])):
            return None
        address = _plain_uint8(schema.children[0].contents, array.children[0].contents, 4 * pixels)
        shape = (height, width, 4)
    if address is None:
        return None
    return np.asarray(_PixelOwner(capsules, address, shape))
