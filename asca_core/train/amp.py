"""Mixed precision: the autocast context that ``train.amp`` (off, bf16, fp16) asks for."""

from __future__ import annotations

import torch


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Autocast on ``device``: disabled for ``amp='off'``, else bfloat16 or float16."""
    if amp == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
