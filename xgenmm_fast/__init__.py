"""xgenmm_fast: fast fine-tuning and inference for xGen-MM (BLIP-3) models."""
from .config import XGenMMConfig  # noqa: F401
from .model import XGenMM, XGenMMOutput  # noqa: F401

__version__ = "0.1.0"
