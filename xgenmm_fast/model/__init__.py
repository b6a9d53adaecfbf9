"""Model parts in execution order: SigLIP encoder, perceiver resampler, Phi-3 decoder, XGenMM."""
from .perceiver import PerceiverResampler  # noqa: F401
from .phi3 import Phi3ForCausalLM  # noqa: F401
from .siglip import SiglipVisionEncoder  # noqa: F401
from .xgenmm import XGenMM, XGenMMOutput, group_anyres_features  # noqa: F401
