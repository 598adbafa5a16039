"""Where model weights live: device and dtype of each component."""
from __future__ import annotations

import torch

from ..errors import InputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    """torch dtype from 'float32' | 'float16' | 'bfloat16' (or a torch.dtype)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise InputError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")


def place(module, device, dtype):
    """Move a module; cast only when needed (diffusers warns on every dtype cast)."""
    module = module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module = module.to(dtype)
    return module.eval().requires_grad_(False)
