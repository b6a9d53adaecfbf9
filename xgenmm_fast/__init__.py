"""xgenmm_fast: fast fine-tuning and inference for xGen-MM (BLIP-3) models.

    XGenMM.from_pretrained(dir_or_pt, config=...)     released HF checkpoints or training .pt files
    create_model_and_transforms(...)                  the original factory's signature, local paths
    process_anyres_image(image, processor, grids)     the original anyres preprocessing (Pillow)
    preprocess_images(images, ...)                    the fast C++ batch path of the same
"""
from .api import create_model_and_transforms, process_anyres_image  # noqa: F401
from .config import XGenMMConfig  # noqa: F401
from .data.pillow_ref import ImageProcessor  # noqa: F401
from .data.preprocess import preprocess_images  # noqa: F401
from .model import XGenMM, XGenMMOutput  # noqa: F401

__version__ = "0.1.0"
