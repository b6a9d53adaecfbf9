"""xgenmm_fast: fast fine-tuning and inference for xGen-MM (BLIP-3) models.

    XGenMM.from_pretrained(dir_or_pt, config=...)     released HF checkpoints or training .pt files
    create_model_and_transforms(...)                  the original factory's signature, local paths
    process_anyres_image(image, processor, grids)     the original anyres preprocessing (Pillow)
    preprocess_images(images, ...)                    the fast C++ batch path of the same

Names other than the model and its config are imported on first use, so `import xgenmm_fast` stays
light and works where Pillow or transformers are not installed (e.g. a bare GPU box running kernels).
"""
from importlib import import_module

from .config import XGenMMConfig  # noqa: F401
from .model import XGenMM, XGenMMOutput  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "create_model_and_transforms": ".api",
    "process_anyres_image": ".api",
    "ImageProcessor": ".data.pillow_ref",
    "preprocess_images": ".data.preprocess",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'xgenmm_fast' has no attribute {name!r}")


__all__ = ["XGenMM", "XGenMMConfig", "XGenMMOutput", *_LAZY]
