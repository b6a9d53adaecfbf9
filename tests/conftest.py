"""Set before any test imports xgenmm_fast: without a GPU, Triton kernels run under the interpreter
(read when kernels are defined, so it must precede the first import of xgenmm_fast.ops.triton). The
Triton backends are then registered but not preferred on the CPU: every other test keeps the defaults."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
