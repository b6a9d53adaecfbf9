"""Batch anyres preprocessing (SPEC §3): images -> encoder tiles, grid shapes and perceiver masks.

``preprocess_images`` is what the rest of the library calls. Three backends, same outputs:

- "cpp": csrc/anyres through ``xgenmm_fast._C``: one call for the whole batch, parallel over images
  with the GIL released, written straight into one (total_tiles, 3, s, s) tensor. Bit-exact with
  the Pillow path: it reproduces Pillow's bicubic fixed-point resampler and ToTensor + Normalize's
  float32 arithmetic.
- "cuda": csrc/anyres/anyres_cuda.cu: the images are uploaded once, as one flat uint8 buffer, and
  one kernel writes every tile on the GPU (bfloat16 by default). Its per-pixel code is the C++
  path's arithmetic (bit-exact with it); ``_C.anyres_pack_emulated`` runs that code on the CPU
  for the tests. Needs the extension built against a CUDA torch (setup.py's CUDA hook).
- "pillow": the original's per-image Pillow code (``xgenmm_fast.data.pillow_ref``).

"auto" is "cpp" when the extension is built, else "pillow" (never "cuda": pick it explicitly).

PIL images in modes L, LA, RGB, RGBA, RGBX and I;16 go to C++ as arrays as they are (the C++ side
converts them exactly as ``convert("RGB")`` would); P and PA through their palette here; any other
mode (1, CMYK, YCbCr, I, F, ...) through Pillow's ``convert("RGB")`` first. L, RGB, RGBA and RGBX images
(and converted ones) are handed over as views of their own memory where Pillow allows (``source_array``,
``pil_memory``): np.asarray's copy of each image was most of the CUDA path's host time. Pillow itself is only
needed for PIL inputs and the "pillow" backend: numpy arrays through "cpp" work without it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from xgenmm_fast import _ext
from xgenmm_fast.data.anyres import DEFAULT_GRIDS, TILE, get_anyres_grid_shape
from xgenmm_fast.data.pil_memory import pixel_view

try:
    from PIL import Image
except ImportError:  # only PIL inputs and the "pillow" backend need it
    Image = None

PATCH = 14  # SigLIP so400m/14 patch size: a tile gives a (TILE // PATCH)^2 = 27 x 27 feature map
DEFAULT_MEAN = (0.5, 0.5, 0.5)  # SigLIP's normalisation
DEFAULT_STD = (0.5, 0.5, 0.5)
BACKENDS = ("auto", "cpp", "cuda", "pillow")

ImageInput = Union["Image.Image", np.ndarray]

_CPP_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "I;16"})  # handed to C++ unconverted
_PALETTE_MODES = frozenset({"P", "PA"})


@dataclass
class AnyresBatch:
    """Encoder input for a batch of images; image i owns tiles_per_image[i] consecutive tiles."""

    pixel_values: torch.Tensor  # (total_tiles, 3, tile, tile); per image [base, tile_0, ..., tile_{n-1}]
    tiles_per_image: list[int]  # 1 + n per image
    grid_shapes: list[tuple[int, int]]  # (tiles across, tiles down) per image
    image_sizes: list[tuple[int, int]]  # (W, H) per image
    feature_masks: list[torch.Tensor]  # per image (1 + n, g * g) float32, g = tile // patch

    def split(self) -> list[torch.Tensor]:
        """pixel_values cut per image: [(1 + n_i, 3, tile, tile), ...] (views)."""
        return list(torch.split(self.pixel_values, self.tiles_per_image, dim=0))


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def _is_pil(obj) -> bool:
    return Image is not None and isinstance(obj, Image.Image)


def _require_pillow(what: str):
    if Image is None:
        raise ImportError(f"{what} needs Pillow (pip install pillow)")


def _palette_to_rgb(image: Image.Image) -> np.ndarray:
    """P / PA -> (H, W, 3) uint8 by palette lookup, as Pillow's convert("RGB") (alpha dropped)."""
    index = np.asarray(image)
    if index.ndim == 3:  # PA: (index, alpha)
        index = index[..., 0]
    palette = image.getpalette("RGB")
    if palette:
        lut = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if index.size == 0 or int(index.max()) < len(lut):
            return lut[index]
    # no palette, or indices past its end: let Pillow decide what those map to
    return np.asarray(image.convert("RGB"))


def _check_array(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        ok = arr.ndim == 2 or (arr.ndim == 3 and 1 <= arr.shape[2] <= 4)
    elif arr.dtype == np.uint16:
        ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1)
    else:
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: array of dtype {arr.dtype} and shape {arr.shape}; expected uint8 (H, W) or (H, W, C) "
            "with C in 1..4 (L, LA, RGB, RGBA), or uint16 (H, W) (I;16)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    return arr


def image_to_array(image: ImageInput, where: str = "image") -> np.ndarray:
    """The array the C++ path takes: uint8 (H, W) / (H, W, C) or uint16 (H, W), unconverted when
    C++ converts that mode itself, else converted to RGB here exactly as Pillow would."""
    if isinstance(image, np.ndarray):
        arr = image
    elif _is_pil(image):
        if image.mode in _CPP_MODES:
            arr = np.asarray(image)
        elif image.mode in _PALETTE_MODES:
            arr = _palette_to_rgb(image)
        else:
            arr = np.asarray(image.convert("RGB"))
    else:
        raise TypeError(f"{where}: expected a PIL image or a numpy array, got {type(image).__name__}")
    if not arr.dtype.isnative:  # e.g. big-endian uint16
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(_check_array(arr, where))


def source_array(image: ImageInput, where: str = "image") -> np.ndarray:
    """What the C++ and CUDA paths are handed: ``image_to_array``'s array, except that a PIL image in mode
    L, RGB, RGBA or RGBX (or converted to RGB here) comes as a read-only view of its own memory where Pillow
    allows (``pil_memory.pixel_view``: no copy; RGB as four bytes per pixel, the fourth dropped by C++)."""
    if _is_pil(image):
        if image.mode not in _CPP_MODES and image.mode not in _PALETTE_MODES:
            image = image.convert("RGB")  # as image_to_array would; the view keeps the converted image alive
        view = pixel_view(image)
        if view is not None:
            return view
    return image_to_array(image, where)


def array_to_image(arr: np.ndarray, where: str = "image") -> Image.Image:
    """Inverse of ``image_to_array`` for arrays: L, LA, RGB, RGBA or I;16 PIL image."""
    _require_pillow("array_to_image")
    arr = _check_array(arr, where)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(np.ascontiguousarray(arr))


def _image_size(image: ImageInput) -> tuple[int, int]:
    if _is_pil(image):
        return int(image.size[0]), int(image.size[1])
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[1]), int(image.shape[0])
    raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # np.asarray(PIL image) is read-only; C++ only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


# ---------------------------------------------------------------------------------------------
# Pass order of the installed Pillow
# ---------------------------------------------------------------------------------------------

# A resize for which the two pass orders give different bytes (checked by the tests): the height
# shrinks by more than twice the width change, where Pillow 13 runs the vertical pass first.
_PROBE_IN_HW = (12, 8)
_PROBE_OUT_WH = (9, 5)


@functools.cache
def pillow_pass_order() -> str:
    """ "pillow" (Pillow 13's order rule) or "horizontal_first" (older Pillow), whichever the installed
    Pillow uses, found by resizing one small image both ways. The C++ resampler then matches it.
    Without Pillow: "pillow" (Pillow 13's rule)."""
    if Image is None:
        return "pillow"
    probe = np.random.default_rng(0).integers(0, 256, (*_PROBE_IN_HW, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(probe).resize(_PROBE_OUT_WH, Image.BICUBIC))
    resize = _ext.cpp_function("resize_bicubic")
    for order in ("pillow", "horizontal_first"):
        if np.array_equal(resize(torch.from_numpy(probe), _PROBE_OUT_WH, order).numpy(), expected):
            return order
    warnings.warn(
        f"Pillow {Image.__version__} resizes in neither known pass order; the C++ anyres path will differ "
        "from it by a level here and there",
        RuntimeWarning,
        stacklevel=2,
    )
    return "pillow"


# ---------------------------------------------------------------------------------------------
# Packed path (CUDA kernel, and its CPU emulation for the tests)
# ---------------------------------------------------------------------------------------------

_PACK_ALIGN = 16  # byte alignment of each image in the flat buffer


def pack_source_buffer(arrays: Sequence[np.ndarray], pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The images back to back in one flat buffer, as the packed kernels take them.

    arrays: C-contiguous uint8 (H, W) / (H, W, C) or native-endian uint16 (H, W) (``image_to_array``).
    Returns (data, descs): data a 1-D uint8 CPU tensor (pinned when ``pin_memory``), each image at a
    16-byte aligned offset; descs a CPU int64 (n_images, 5) tensor of rows [byte_offset, height,
    width, channels, bytes_per_channel].
    """
    arrays = [a.astype("<u2", copy=False) if a.dtype == np.uint16 else a for a in arrays]  # kernels read LE
    descs = np.zeros((len(arrays), 5), dtype=np.int64)
    total = 0
    for i, a in enumerate(arrays):
        if not a.flags.c_contiguous:
            raise ValueError(f"image {i}: array must be C-contiguous (use image_to_array)")
        descs[i] = (total, a.shape[0], a.shape[1], a.shape[2] if a.ndim == 3 else 1, a.itemsize)
        total += -(-a.nbytes // _PACK_ALIGN) * _PACK_ALIGN
    data = torch.empty(total, dtype=torch.uint8, pin_memory=pin_memory)
    for a, off in zip(arrays, descs[:, 0].tolist()):  # torch's copy_ uses several threads on big images
        data[off : off + a.nbytes].copy_(_as_tensor(a.reshape(-1).view(np.uint8)))
    descs = torch.from_numpy(descs)
    return data, descs


def _cuda_device(out: torch.Tensor | None, device) -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError(
            f'preprocess_images(backend="cuda"): no CUDA device is available (torch {torch.__version__}, '
            f"CUDA {torch.version.cuda}); use backend=\"cpp\""
        )
    if device is None:
        on_gpu = out is not None and out.device.type == "cuda"
        dev = out.device if on_gpu else torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda":
        raise ValueError(f'preprocess_images(backend="cuda"): device must be a CUDA device, got {dev}')
    if out is not None and out.device != dev:
        raise ValueError(f"out is on {out.device}; expected a tensor on {dev}")
    return dev


def _run_packed(arrays, grids, tile, mean, std, out, order, *, emulate: bool, device=None):
    """(pixel_values, tiles_per_image, grid_shapes) from the packed path: the CUDA kernel (output on
    the GPU, bfloat16 unless ``out`` says otherwise), or with ``emulate`` its per-pixel code on the
    CPU (float32 unless ``out`` says otherwise)."""
    if emulate:
        data, descs = pack_source_buffer(arrays)
        return _ext.cpp_function("anyres_pack_emulated")(data, descs, grids, tile, mean, std, out, None, order)
    ext = _ext.cpp_ext()
    run = getattr(ext, "anyres_preprocess_cuda", None)
    if run is None:
        raise _ext.ExtensionNotBuiltError(
            'preprocess_images(backend="cuda"): xgenmm_fast._C was built without CUDA (it needs a CUDA build of '
            f"torch, here {torch.__version__}, and nvcc at build time; XGENMM_NO_CUDA=1 also turns it off); "
            f'rebuild with `{_ext.BUILD_COMMAND}` on a CUDA machine, or use backend="cpp"'
        )
    dev = _cuda_device(out, device)
    if out is not None:  # checked here too, so that a wrong `out` is a Python error before any GPU work
        tiles = sum(1 + w * h for w, h in (get_anyres_grid_shape((a.shape[1], a.shape[0]), grids, tile)
                                         for a in arrays))
        if tuple(out.shape) != (tiles, 3, tile, tile) or not out.is_contiguous():
            raise ValueError(f"out has shape {tuple(out.shape)}{'' if out.is_contiguous() else ' (not contiguous)'}; "
                             f"expected ({tiles}, 3, {tile}, {tile}), contiguous")
        if out.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"out dtype {out.dtype} not supported; expected float32, bfloat16 or float16")
    data, descs = pack_source_buffer(arrays, pin_memory=True)
    dtype = None if out is not None else "bfloat16"
    with torch.cuda.device(dev):
        data = data.to(dev, non_blocking=True)  # one upload, on the stream the kernel then runs on
        return run(data, descs, grids, tile, mean, std, out, dtype, order)


# ---------------------------------------------------------------------------------------------
# Batch API
# ---------------------------------------------------------------------------------------------


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpp" if _ext.HAS_CPP_EXT else "pillow"
    return backend


def preprocess_images(
    images: Sequence[ImageInput],
    grids: Sequence[Sequence[int]] = DEFAULT_GRIDS,
    tile: int = TILE,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    num_threads: int = 0,
    backend: str = "auto",
    patch: int = PATCH,
    out: torch.Tensor | None = None,
    resize_order: str = "installed",
    device: torch.device | str | None = None,
) -> AnyresBatch:
    """Anyres tiles, grid shapes and perceiver masks for a batch of images.

    images: PIL images (any mode) or numpy arrays, uint8 (H, W) / (H, W, C in 1..4) or uint16 (H, W).
    grids: [(width, height)] in pixels, multiples of ``tile``. mean / std: per RGB channel.
    num_threads: C++ worker threads, 0 = all cores. patch: encoder patch size, g = tile // patch.
    backend: "auto" (= "cpp" when the extension is built, else "pillow"), "cpp", "cuda" or "pillow".
    out: optional contiguous (total_tiles, 3, tile, tile) float32 / bfloat16 / float16 tensor to
    write into (bfloat16 / float16 values are the float32 results rounded once); on the GPU for "cuda".
    resize_order (C++ and CUDA paths): "installed" matches the installed Pillow's bicubic resize;
    "pillow13" is Pillow 13's pass order (vertical first when the height shrinks much more than the
    width); "horizontal_first" is older Pillow's, which the released models were most likely trained with.
    device ("cuda" only): the GPU to work on; default ``out``'s device, else the current CUDA device.

    backend="cuda": pixel_values is a (total_tiles, 3, tile, tile) tensor on the GPU, bfloat16 unless
    ``out`` gives another dtype, written by one kernel on the current CUDA stream (asynchronous, like
    any CUDA op); the values equal the "cpp" backend's (float32, or rounded once to 16 bits).
    feature_masks stay on the CPU. ExtensionNotBuiltError when the extension was built without CUDA,
    RuntimeError when there is no CUDA device.
    """
    orders = {"installed": None, "pillow13": "pillow", "horizontal_first": "horizontal_first"}
    if resize_order not in orders:
        raise ValueError(f"resize_order must be one of {sorted(orders)}, got {resize_order!r}")
    backend = _resolve_backend(backend)
    if device is not None and backend != "cuda":
        raise ValueError(f'device applies to backend="cuda"; got device={device!r} with backend={backend!r}')
    grid_list = [(int(g[0]), int(g[1])) for g in grids]
    if not grid_list:
        raise ValueError("grids is empty; expected [(width, height), ...]")
    g = tile // patch
    if g <= 0:
        raise ValueError(f"tile {tile} is smaller than the patch size {patch}")
    mean3 = [float(m) for m in mean]
    std3 = [float(s) for s in std]
    sizes = [_image_size(im) for im in images]

    if backend in ("cuda", "cpp"):  # the C++ CPU path or the CUDA kernel; the same geometry and masks
        order = orders[resize_order] or pillow_pass_order()
        arrays = [source_array(im, f"image {i}") for i, im in enumerate(images)]
        if backend == "cuda":
            pixel_values, tiles, shapes = _run_packed(
                arrays, grid_list, tile, mean3, std3, out, order, emulate=False, device=device
            )
        else:
            run = _ext.cpp_function("anyres_preprocess")
            tensors = [_as_tensor(a) for a in arrays]
            pixel_values, tiles, shapes = run(tensors, grid_list, tile, mean3, std3, num_threads, out, order)
        masks = _ext.cpp_function("anyres_feature_masks")(sizes, grid_list, tile, g) if sizes else []
        return AnyresBatch(
            pixel_values=pixel_values,
            tiles_per_image=[int(t) for t in tiles],
            grid_shapes=[(int(a), int(b)) for a, b in shapes],
            image_sizes=sizes,
            feature_masks=list(masks),
        )

    if resize_order != "installed":
        raise ValueError('resize_order applies to the C++ path; the pillow backend is the installed Pillow')
    _require_pillow('preprocess_images(backend="pillow")')
    from xgenmm_fast.data import pillow_ref

    processor = pillow_ref.ImageProcessor(tile, mean3, std3)
    per_image = []
    for i, im in enumerate(images):
        pil = im if _is_pil(im) else array_to_image(im, f"image {i}")
        if pil.size[0] <= 0 or pil.size[1] <= 0:
            raise ValueError(f"image {i}: empty image of size {pil.size}")
        per_image.append(pillow_ref.process_anyres_image(pil, processor, grid_list))
    if per_image:
        pixel_values = torch.cat(per_image, dim=0)
    else:
        pixel_values = torch.empty(0, 3, tile, tile)
    if out is not None:
        if tuple(out.shape) != tuple(pixel_values.shape):
            raise ValueError(f"out has shape {tuple(out.shape)}; expected {tuple(pixel_values.shape)}")
        out.copy_(pixel_values)
        pixel_values = out
    return AnyresBatch(
        pixel_values=pixel_values,
        tiles_per_image=[int(t.shape[0]) for t in per_image],
        grid_shapes=[get_anyres_grid_shape(s, grid_list, tile) for s in sizes],
        image_sizes=sizes,
        feature_masks=[pillow_ref.anyres_feature_masks(s, grid_list, tile, g) for s in sizes],
    )
